"""Token windows from the tokenizer's shards (np.uint16 memmaps; uint32 for large imported vocabularies)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def load_shard(tokenizer_dir: Path, split: str) -> np.ndarray:
    shards = Path(tokenizer_dir) / "shards"
    meta = shards / "meta.json"  # written by the tokenizer stage: uint32 for imported vocabularies > 65536
    dtype = json.loads(meta.read_text())["dtype"] if meta.is_file() else "uint16"
    return np.memmap(shards / f"{split}.bin", dtype=np.dtype(dtype), mode="r")


def random_windows(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, step: int, micro: int) -> dict:
    """A batch of random windows: a pure function of (seed, step, micro)."""
    if len(tokens) <= seq_len + 1:
        raise ValueError(f"shard has {len(tokens)} tokens, fewer than one window of {seq_len + 1}")
    rng = np.random.default_rng([seed, step, micro])
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    ids = torch.from_numpy(np.stack([tokens[s : s + seq_len].astype(np.int64) for s in starts]))
    return {"input_ids": ids, "n_targets": batch_size * (seq_len - 1), "n_tokens": batch_size * seq_len}


def fixed_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Non-overlapping windows from the start of the shard, at most max_tokens in all."""
    n = min(len(tokens), max_tokens) // seq_len
    if n == 0:
        raise ValueError(f"validation shard has {len(tokens)} tokens, fewer than one window of {seq_len}")
    return torch.from_numpy(np.asarray(tokens[: n * seq_len], dtype=np.int64).reshape(n, seq_len))
