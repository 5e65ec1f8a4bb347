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


def encode_split(texts: list[str], tokenizer_dir: Path, out_prefix: Path, workers: int, bos: int, eos: int) -> int:
    """Write <prefix>.bin and <prefix>.idx.npy (document start offsets); return the token count."""
    chunks = [texts[i : i + 256] for i in range(0, len(texts), 256)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers, initializer=_init, initargs=(str(tokenizer_dir),)) as pool:
            encoded = [ids for chunk in pool.map(_encode, chunks) for ids in chunk]  # map keeps order
    else:
        _init(str(tokenizer_dir))
        encoded = [ids for chunk in chunks for ids in _encode(chunk)]
    lengths = np.array([len(ids) + 2 for ids in encoded], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.empty(int(lengths.sum()), dtype=np.uint16)
    for start, ids in zip(starts, encoded):
        flat[start] = bos
        flat[start + 1 : start + 1 + len(ids)] = ids
        flat[start + 1 + len(ids)] = eos
    flat.tofile(f"{out_prefix}.bin")
    np.save(f"{out_prefix}.idx.npy", starts)
    return int(flat.size)
