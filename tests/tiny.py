"""Hermetic tiny artifacts for stage tests: a chat tokenizer and token shards, built in seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def corpus() -> list[str]:
    import pydoc_data.topics

    from components.tasks import sft_examples

    docs = list(pydoc_data.topics.topics.values())[:60]
    docs += [" ".join(m["content"] for m in ex["messages"]) for ex in sft_examples("train", 400)]
    return docs


def make_tokenizer_artifact(root: Path, vocab_size: int = 400) -> Path:
    """A tokenizer artifact (hf/ + shards/) shaped like the tokenizer stage's output."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Metaspace()]
    )
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    docs = corpus()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=SPECIALS[4:],
    )
    hf.chat_template = CHAT_TEMPLATE
    hf.save_pretrained(root / "hf")
    (root / "shards").mkdir(parents=True, exist_ok=True)
    for split, part in (("validation", docs[:10]), ("train", docs[10:])):
        ids: list[int] = []
        starts = []
        for doc in part:
            starts.append(len(ids))
            ids += [hf.bos_token_id, *hf(doc, add_special_tokens=False)["input_ids"], hf.eos_token_id]
        np.array(ids, dtype=np.uint16).tofile(root / "shards" / f"{split}.bin")
        np.save(root / "shards" / f"{split}.idx.npy", np.array(starts, dtype=np.int64))
    return root


def tiny_tokenizer(root: Path):
    """The chat tokenizer of make_tokenizer_artifact, loaded as a stage loads one."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer_artifact(root) / "hf")


def save_tiny_model(root: Path, tokenizer, config, seed: int) -> Path:
    """A freshly initialised model and its tokenizer in root/model, shaped like a training stage's artifact."""
    from components.model.build import build_model

    build_model(config, tokenizer, seed=seed).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root
