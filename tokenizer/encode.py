"""Encode documents into token shards: np.uint16 ids, each document as <s> ids </s>."""
from __future__ import annotations

import gzip
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

_TOKENIZER = None


def read_texts(split_dir: Path) -> Iterator[str]:
    for path in sorted(Path(split_dir).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)["text"]


def _init(tokenizer_dir: str) -> None:
    global _TOKENIZER
    from transformers import AutoTokenizer

    _TOKENIZER = AutoTokenizer.from_pretrained(tokenizer_dir)


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Document text is text: a literal "<s>" or "</s>" in it never becomes a control id."""
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def _encode(texts: list[str]) -> list[list[int]]:
    return encode_documents(_TOKENIZER, texts)


def shard_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits (our own vocabularies); uint32 for imported large ones (Llama 3: 128k)."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def encode_split(texts: list[str], tokenizer_dir: Path, out_prefix: Path, workers: int, bos: int | None, eos: int,
                 dtype: np.dtype = np.dtype(np.uint16)) -> int:
    """Write <prefix>.bin and <prefix>.idx.npy (document start offsets); return the token count.
    Each document is `bos ids eos` (no bos when the tokenizer has none, as Qwen's)."""
    chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers, initializer=_init, initargs=(str(tokenizer_dir),)) as pool:
            encoded = [ids for chunk in pool.map(_encode, chunks) for ids in chunk]  # map keeps order
    else:
        _init(str(tokenizer_dir))
        encoded = [ids for chunk in chunks for ids in _encode(chunk)]
    head = [] if bos is None else [bos]
    lengths = np.array([len(head) + len(ids) + 1 for ids in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.empty(int(lengths.sum()), dtype=dtype)
    for start, ids in zip(starts, encoded):
        flat[start : start + len(head) + len(ids) + 1] = [*head, *ids, eos]
    flat.tofile(f"{out_prefix}.bin")
    np.save(f"{out_prefix}.idx.npy", starts)
    return int(flat.size)
