"""Tokenizer stage: real sentencepiece, exported so transformers loads it, shards that decode back."""
import gzip
import json
import string

import numpy as np
import pytest
import sentencepiece as spm

from components.context import StageContext
from tokenizer.config import TokenizerConfig
from tokenizer.encode import encode_documents
from tokenizer.run import run

# Documents that caught real differences between sentencepiece and transformers.
EDGE_DOCS = [
    "  Leading spaces,\ttabs,\nnew lines and digits 12345 + 678 = 13023.\n\n  ",
    "Literal specials stay text: <s> </s> <pad> <unk> <|user|>x <|end|> <0x41> done",
    "Rare characters: Ünïcödé — “quotes” 日本語 🙂 ~ ^ | \\ {}",
    "A ruler\n========================================\n    =======================\nend",
]


def _docs() -> list[str]:
    import pydoc_data.topics

    paragraphs = [p for text in pydoc_data.topics.topics.values() for p in text.split("\n\n") if len(p) > 80]
    return paragraphs[:300]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    docs = _docs()
    splits = {"train": docs[40:] + EDGE_DOCS, "validation": docs[:40] + EDGE_DOCS}
    for split, part in splits.items():
        (root / split).mkdir()
        for shard in range(2):  # two files: the stage must read them in sorted order
            half = part[shard * len(part) // 2 : (shard + 1) * len(part) // 2]
            with gzip.open(root / split / f"0000{shard}.jsonl.gz", "wt") as f:
                for text in half:
                    f.write(json.dumps({"text": text, "id": str(hash(text)), "metadata": {}}) + "\n")
    return root


def _texts(data_dir, split):
    return [json.loads(line)["text"] for p in sorted((data_dir / split).glob("*.jsonl.gz"))
            for line in gzip.open(p, "rt")]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def artifact(request, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    metrics = run(TokenizerConfig(type=request.param, vocab_size=800, num_workers=2), {"data": data_dir}, StageContext.local(out))
    return out, metrics


def _hf(out):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(out / "hf")


def test_hf_tokenizer_matches_sentencepiece_exactly(artifact, data_dir):
    out, metrics = artifact
    tok, sp = _hf(out), spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    assert (out / "spm.vocab").exists()
    assert len(tok) == sp.get_piece_size() == metrics["vocab_size"] == 800
    assert metrics["hf_spm_mismatch_rate"] == 0.0
    for split in ("train", "validation"):
        texts = _texts(data_dir, split)
        lines = [line for text in texts for line in text.split("\n")]
        for batch in (texts, lines):
            hf_ids = encode_documents(tok, batch)
            assert [i for i, (a, b) in enumerate(zip(sp.encode(batch), hf_ids)) if a != b] == []
            for text, ids in zip(batch, hf_ids):  # exact round trip: spaces, tabs, newlines, digits, bytes
                assert tok.decode(ids) == text
                assert min(ids, default=8) >= 8  # literal "<s>" in text never becomes a control id


def test_digits_and_ascii_are_single_pieces(artifact):
    out, _ = artifact
    tok = _hf(out)
    assert tok.tokenize("12345", split_special_tokens=True)[-5:] == list("12345")
    for char in string.digits + string.ascii_letters + string.punctuation:
        assert not tok.tokenize(char, split_special_tokens=True)[-1].startswith("<0x"), char


def test_chat_template_ids_and_assistant_mask(artifact):
    out, _ = artifact
    tok = _hf(out)
    ids_of = tok.convert_tokens_to_ids
    bos, user, assistant, end = tok.bos_token_id, ids_of("<|user|>"), ids_of("<|assistant|>"), ids_of("<|end|>")
    assert [bos, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id] == [1, 2, 3, 0]
    assert [ids_of(t) for t in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")] == [4, 5, 6, 7]
    msgs = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<s><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|>"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>What is 2 + 3?<|end|><|assistant|>"

    content = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    enc = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    prefix = [bos, user, *content("What is 2 + 3?"), end, assistant]
    answer = [*content("5"), end]
    assert enc["input_ids"] == prefix + answer  # one BOS, not two
    assert enc["assistant_masks"] == [0] * len(prefix) + [1] * len(answer)
    gen = tok.apply_chat_template(msgs[:1], tokenize=True, return_dict=True, add_generation_prompt=True)
    assert gen["input_ids"] == prefix

    multi = [{"role": "system", "content": "Be brief."}, *msgs,
             {"role": "user", "content": "And 4 + 4?"}, {"role": "assistant", "content": "8"}]
    enc = tok.apply_chat_template(multi, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(enc["input_ids"], enc["assistant_masks"]) if m]
    assert marked == [*content("5"), end, *content("8"), end]
    assert enc["input_ids"].count(bos) == 1


def test_shards_decode_back_to_documents(artifact, data_dir):
    out, metrics = artifact
    tok = _hf(out)
    for split in ("train", "validation"):
        ids = np.memmap(out / "shards" / f"{split}.bin", dtype=np.uint16, mode="r")
        starts = np.load(out / "shards" / f"{split}.idx.npy")
        assert starts.dtype == np.int64 and len(ids) == metrics[f"{split}_tokens"]
        texts = _texts(data_dir, split)
        assert len(starts) == len(texts)
        ends = [*starts[1:], len(ids)]
        for text, s, e in zip(texts, starts, ends):
            assert ids[s] == tok.bos_token_id and ids[e - 1] == tok.eos_token_id
            assert tok.decode(ids[s + 1 : e - 1].tolist()) == text
    assert metrics["train_docs"] == len(_texts(data_dir, "train"))
    val_bytes = sum(len(t.encode()) for t in _texts(data_dir, "validation"))
    content_tokens = metrics["validation_tokens"] - 2 * len(_texts(data_dir, "validation"))
    assert metrics["bytes_per_token"] == pytest.approx(val_bytes / content_tokens, rel=1e-3)
    assert 1.5 < metrics["bytes_per_token"] < 8


def test_stage_is_deterministic_whatever_the_workers(data_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    run(TokenizerConfig(vocab_size=600, num_workers=1), {"data": data_dir}, StageContext.local(a))
    run(TokenizerConfig(vocab_size=600, num_workers=2), {"data": data_dir}, StageContext.local(b))
    for name in ("spm.model", "hf/tokenizer.json", "shards/train.bin", "shards/train.idx.npy", "shards/validation.bin"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"tokenizer\.type='wordpiece'"):
        TokenizerConfig(type="wordpiece")
    with pytest.raises(ValueError, match=r"tokenizer\.vocab_size=300"):
        TokenizerConfig(vocab_size=300)
    TokenizerConfig(vocab_size=300, byte_fallback=False, cover_ascii=False)  # small is fine without byte tokens
