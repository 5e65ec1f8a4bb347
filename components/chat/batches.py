"""Batches of labelled examples (input ids, labels): which examples (epoch_indices), right-padded
(pad_batch), or packed: several short examples in one sequence, each attending only to itself.

In a packed row, positions restart at 0 for every example. Given position_ids and no attention_mask,
transformers (masking_utils.find_packed_sequence_indices, 5.x) reads each restart as a
new sequence and builds a block-diagonal causal mask, for sdpa and eager attention as
for flash attention: no custom mask is needed, and a packed example sees exactly what
it would see alone (tests/test_sft.py checks the logits).
"""
from __future__ import annotations

import functools
from collections import defaultdict

import numpy as np
import torch

from components.train.losses import IGNORE

Row = tuple[list[int], list[int]]  # (input ids, labels)


@functools.lru_cache(maxsize=4)
def _epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_items)


def epoch_indices(n_items: int, batch_size: int, seed: int, position: int) -> list[int]:
    """Items of the batch at `position` (global micro-batch index), shuffled per epoch."""
    out = []
    for j in range(position * batch_size, (position + 1) * batch_size):
        epoch, offset = divmod(j, n_items)
        out.append(int(_epoch_order(n_items, seed, epoch)[offset]))
    return out


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and labels (IGNORE on padding)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, labs) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(labs)] = torch.tensor(labs)
        mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of item indices, each bin's lengths summing to <= capacity (best-fit decreasing:
    each item, longest first, goes into the fullest bin it fits)."""
    bins: list[list[int]] = []
    bins_by_room: dict[int, list[int]] = defaultdict(list)  # free room -> bins with exactly that room
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item {i} has {n} tokens, more than the sequence length {capacity}")
        room = next((r for r in range(n, capacity + 1) if bins_by_room.get(r)), None)
        if room is None:
            bins.append([i])
            b, left = len(bins) - 1, capacity - n
        else:
            b = bins_by_room[room].pop()
            bins[b].append(i)
            left = room - n
        if left > 0:
            bins_by_room[left].append(b)
    return bins


def packed_batch(sequences: list[list[Row]], pad_id: int) -> dict:
    """Right-padded rows of concatenated examples, with positions restarting per example.

    No attention_mask on purpose (see the module docstring). Padding is a segment of its
    own at the end, unlabelled. The first token of every example must be unlabelled (the
    chat template's BOS), so no example is trained to predict the next one's start.
    """
    widths = [sum(len(ids) for ids, _ in seq) for seq in sequences]
    width = max(widths)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    labels = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, seq in enumerate(sequences):
        at = 0
        for ids, labs in seq:
            assert labs[0] == IGNORE, "a packed example must start with an unlabelled token"
            input_ids[r, at : at + len(ids)] = torch.tensor(ids)
            labels[r, at : at + len(ids)] = torch.tensor(labs)
            position_ids[r, at : at + len(ids)] = torch.arange(len(ids))
            at += len(ids)
        position_ids[r, at:] = torch.arange(width - at)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
            "n_tokens": sum(widths)}
