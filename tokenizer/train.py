"""Train a sentencepiece BPE or Unigram model and export it as a Hugging Face tokenizer.

The sentencepiece model is trained with identity normalisation and no whitespace
folding, so text round-trips exactly. The Hugging Face tokenizer rebuilds the same
model in `tokenizers` (Unigram from the pieces and scores; BPE with the merges that
transformers' converter derives) with sentencepiece's dummy-prefix rule as a
normaliser, so it gives sentencepiece's ids on plain text (the stage measures it).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from tokenizer.config import TokenizerConfig

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
# <s> then <|role|>content<|end|> per message; assistant content is marked for
# return_assistant_tokens_mask; a generation prompt opens the assistant's turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|end|>' }}{% endgeneration %}"
    "{% else %}{{ m['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def train_sentencepiece(cfg: TokenizerConfig, texts: Iterable[str], prefix: Path) -> Path:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(prefix),
        model_type=cfg.type,
        vocab_size=cfg.vocab_size,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=cfg.split_digits,
        byte_fallback=cfg.byte_fallback,
        character_coverage=cfg.character_coverage,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece=UNK, bos_piece=BOS, eos_piece=EOS, pad_piece=PAD,
        user_defined_symbols=CHAT_TOKENS,
        max_sentence_length=1 << 16,
        num_threads=2,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def _backend(model_file: Path, kind: str):
    """A `tokenizers.Tokenizer` equal to the sentencepiece model on plain text."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import LlamaTokenizer

    if kind == "unigram":
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
        vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
        backend = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(model_file, Path(tmp) / "tokenizer.model")
            backend = LlamaTokenizer.from_pretrained(tmp).backend_tokenizer
    # sentencepiece prefixes "▁" to every input and maps each space to "▁", leading spaces included.
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return backend


def export_hf(model_file: Path, kind: str, out_dir: Path):
    """Save a tokenizer that AutoTokenizer loads, with the chat special tokens and template."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_backend(model_file, kind),
        bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        additional_special_tokens=CHAT_TOKENS,
        add_bos_token=False, add_eos_token=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok
