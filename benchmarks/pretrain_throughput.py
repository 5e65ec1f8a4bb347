"""Tokens/s of the project's training loop (components/train/loop.py train()) against a
minimal plain-PyTorch loop: same model, batches, steps, AdamW and gradient clipping, one
process, no accelerate. Target: ratio >= 0.95 (the loop's checkpoints-ready bookkeeping,
spike guard and logging should cost almost nothing).

    python -m benchmarks.pretrain_throughput [--steps 5] [--repeats 5] [--threads 1]

Each repeat runs both loops on a fresh copy of the same model, alternating which goes
first (other load on the machine hits both alike); the first 2 steps of each run are
warm-up and not timed. Reported: median tokens/s over all timed steps, and the ratio as the
median over repeats of the two loops' ratio within a repeat.
"""
from __future__ import annotations

import argparse
import copy
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import VOCAB, StepClock, default_model, median_rate, paired_ratio, quiet, table
from components.pretrain.config import PretrainConfig
from components.train.loop import make_accelerator, train
from components.train.losses import lm_loss

WARMUP_STEPS = 2


def make_batches(cfg: PretrainConfig, steps: int) -> list[dict]:
    """The default pretrain step's shape: batch_size windows of context_length tokens."""
    rng = np.random.default_rng(0)
    seq = cfg.model.context_length
    return [{"input_ids": torch.from_numpy(rng.integers(4, VOCAB, size=(cfg.batch_size, seq))),
             "n_targets": cfg.batch_size * (seq - 1), "n_tokens": cfg.batch_size * seq} for _ in range(steps)]


def project_loop(model: torch.nn.Module, cfg: PretrainConfig, batches: list[dict]) -> list[float]:
    clock, calls = StepClock(), []

    def batch_fn(step: int, micro: int) -> dict:
        calls.append(step)
        if len(calls) > 1:  # the first call is the budget estimate, before the loop starts
            clock.tick()
        return batches[step % len(batches)]

    with tempfile.TemporaryDirectory() as out:
        train(model, cfg, batch_fn, lm_loss, out)
    clock.tick()  # end of the last step (train returns right after it: no export, no evaluation)
    return clock.step_seconds(WARMUP_STEPS)


def plain_loop(model: torch.nn.Module, cfg: PretrainConfig, batches: list[dict], autocast: bool) -> list[float]:
    clock = StepClock()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    model.train()
    for batch in batches:
        clock.tick()
        ids = batch["input_ids"]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss)  # the project's loop reads the loss every step too (logging, spike guard)
    clock.tick()
    return clock.step_seconds(WARMUP_STEPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="steps per run (the first 2 are warm-up)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadiest on a shared machine; ratios hold at 2)")
    args = parser.parse_args()
    quiet(args.threads)
    cfg = PretrainConfig(max_steps=args.steps, warmup_steps=0, save_every=10**6, log_every=10**6)
    autocast = make_accelerator(cfg).mixed_precision == "bf16"  # what the project's loop resolves to here
    batches = make_batches(cfg, args.steps)
    initial = default_model()
    ours, plain = [], []  # per-step seconds, one list per run
    for r in range(args.repeats):
        runs = [(ours, lambda: project_loop(copy.deepcopy(initial), cfg, batches)),
                (plain, lambda: plain_loop(copy.deepcopy(initial), cfg, batches, autocast))]
        for results, run in runs if r % 2 == 0 else runs[::-1]:
            results.append(run())
    tokens = cfg.batch_size * cfg.model.context_length
    n_params = sum(p.numel() for p in initial.parameters())
    print(f"pretrain step: {n_params / 1e6:.2f}M-param LLaMA, {cfg.batch_size} x {cfg.model.context_length} tokens, "
          f"{'bf16 autocast' if autocast else 'fp32'}, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats x {args.steps - WARMUP_STEPS} timed steps")
    flat = lambda runs: [s for run in runs for s in run]  # noqa: E731
    print(table([("project loop (loop.train)", flat(ours), tokens), ("plain PyTorch loop", flat(plain), tokens)], "tok/s"))
    overall = median_rate(flat(ours), tokens) / median_rate(flat(plain), tokens)
    paired = paired_ratio(ours, plain)
    print(f"ratio project / plain: {paired:.3f} (median of per-repeat ratios; of overall medians: {overall:.3f}); "
          f"target >= 0.95: {'met' if paired >= 0.95 else 'NOT met'}")


if __name__ == "__main__":
    main()
