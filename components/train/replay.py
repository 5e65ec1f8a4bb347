"""Replay: windows of pretraining text mixed into a fine-tuning stage's batches, so it keeps the language model.

Trained only on short chat answers, the sft model forgets prose (on the default pipeline its validation
perplexity went from the base model's 48 to ~500,000). Mixing pretraining text into every batch, with the
plain next-token loss on each of its tokens, keeps it (InstructGPT's "PPO-ptx" mix, here for SFT and DPO).

The replay windows ride in the batch under `replay_*` keys and get a forward of their own: they are up to
the model's context long, the chat rows far shorter, and one padded tensor would multiply the compute.
Every tensor has rows first, so the loop's shard() hands each rank its own windows. Windows are drawn
from (seed, step, micro) alone: a resumed run sees the same text, as the loop requires of batch_fn.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from components.train.losses import IGNORE, lm_loss

BatchFn = Callable[[int, int], dict]
LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]
REPLAY_STREAM = 7919  # seeds the window draws apart from any other draw keyed by (seed, step, micro)
PREFIX = "replay_"


def replay_windows(tokens: np.ndarray, n_targets: int, max_len: int, seed: int, step: int, micro: int) -> dict:
    """Windows of `tokens` holding n_targets next-token targets in all, each at most max_len tokens: the
    fewest windows, lengths as equal as possible, right-padded (labels IGNORE, attention 0 on padding)."""
    width = min(max_len, len(tokens))
    n_windows = -(-n_targets // (width - 1))
    base, extra = divmod(n_targets, n_windows)
    lengths = [base + 1 + (i < extra) for i in range(n_windows)]  # a window of n tokens has n - 1 targets
    rng = np.random.default_rng([seed, step, micro, REPLAY_STREAM])
    ids = torch.zeros((n_windows, max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE)
    for row, n in enumerate(lengths):
        start = int(rng.integers(0, len(tokens) - n + 1))
        ids[row, :n] = torch.from_numpy(tokens[start : start + n].astype(np.int64))
        mask[row, :n] = 1
        labels[row, :n] = ids[row, :n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def check_replay_tokens(tokens: np.ndarray, vocab_size: int, key: str) -> None:
    """The shard must hold a window and speak the model's vocabulary (the same tokenizer stage made both)."""
    if len(tokens) < 2:
        raise ValueError(f"{key}: the tokenizer's train shard has {len(tokens)} tokens, too few for one replay "
                         f"window; set {key}=0 or give the data stage more text")
    top = int(tokens.max())
    if top >= vocab_size:
        raise ValueError(f"{key}: the train shard has token id {top}, outside the model's vocabulary of {vocab_size}: "
                         f"the shard and the model come from different tokenizers; set {key}=0 or rebuild them together")


def with_replay_share(batch_fn: BatchFn, tokens: np.ndarray, share: float, max_len: int, seed: int) -> BatchFn:
    """batch_fn's batches with replay windows making `share` of each one's targets (at least one target):
    the loss sums over both, so each replay token weighs what a trained chat token weighs (sft.replay)."""
    def mixed(step: int, micro: int) -> dict:
        batch = batch_fn(step, micro)
        n = max(1, round(batch["n_targets"] * share / (1 - share)))
        replay = replay_windows(tokens, n, max_len, seed, step, micro)
        return {**batch, **{PREFIX + k: v for k, v in replay.items()}, "replay_scale": 1.0,
                "n_targets": batch["n_targets"] + n,
                "n_tokens": batch.get("n_tokens", batch["n_targets"]) + int(replay["attention_mask"].sum())}

    return mixed


def with_replay_weight(batch_fn: BatchFn, tokens: np.ndarray, weight: float, n_replay: int, max_len: int,
                       seed: int) -> BatchFn:
    """batch_fn's batches with n_replay replay targets each, their mean next-token loss added with `weight`
    to the objective's (whose n_targets, e.g. DPO's pairs, stays as it is): align.replay."""
    def mixed(step: int, micro: int) -> dict:
        batch = batch_fn(step, micro)
        replay = replay_windows(tokens, n_replay, max_len, seed, step, micro)
        # the loop divides the summed loss by n_targets: scale the replay sum to weight x its mean
        return {**batch, **{PREFIX + k: v for k, v in replay.items()},
                "replay_scale": weight * batch["n_targets"] / n_replay,
                "n_tokens": batch.get("n_tokens", 0) + int(replay["attention_mask"].sum())}

    return mixed


def with_replay_loss(loss_fn: LossFn) -> LossFn:
    """loss_fn on the batch's own rows plus replay_scale x the next-token loss summed over its replay windows;
    reports replay_loss, the mean over its windows. A rank whose shard holds no window (fewer windows than
    ranks) adds nothing and reports 0, but still makes the replay forward, on one target-less row: DDP
    broadcasts buffers at every forward, and ranks making different numbers of forwards would wait forever."""
    def loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        own = {k: v for k, v in batch.items() if not k.startswith(PREFIX)}
        total, metrics = loss_fn(model, own)
        replay = {k.removeprefix(PREFIX): v for k, v in batch.items() if k.startswith(PREFIX) and k != "replay_scale"}
        if not replay:
            return total, metrics
        replay_loss = 0.0  # every rank reports the same keys (the loop reduces them in one tensor)
        if len(replay["input_ids"]):
            nll, _ = lm_loss(model, replay)
            total = total + batch["replay_scale"] * nll
            replay_loss = float(nll.detach()) / max(1, int((replay["labels"][:, 1:] != IGNORE).sum()))
        else:
            ids = own["input_ids"][:1, :2]  # any two tokens; every label ignored: a sum over no target, 0
            nll, _ = lm_loss(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                     "labels": torch.full_like(ids, IGNORE)})
            total = total + 0.0 * nll
        return total, {**metrics, "replay_loss": replay_loss}

    return loss
