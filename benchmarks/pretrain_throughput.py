"""Tokens/s of the project's training loop (components/train/loop.py train()) against Hugging
Face's `Trainer` and a minimal plain-PyTorch loop: same model, batches, steps, AdamW
hyper-parameters and gradient clipping, one process, one precision on every side. Targets:
the loop >= 1.25x Trainer's tokens/s, and never below 0.95x the plain loop.

    python -m benchmarks.pretrain_throughput [--steps 6] [--repeats 4] [--threads 1] [--precision auto|bf16|fp32]

The loop runs twice, compiled (`compile=true`) and eager; the headline ratios
(`ratio pretrain_vs_hf_trainer=...`, `ratio pretrain_vs_plain_pytorch=...`) are the
compiled loop's, the faster configuration, and the eager loop's ratios are printed beside
them. Each repeat runs every side on a fresh copy of the same model, alternating the order
(other load on the machine hits all alike); the first 2 steps of each run are warm-up and
not timed, and compile's one-off cost (the compiled loop's first step) is printed apart.
Reported: median tokens/s over all timed steps, and each ratio as the median over repeats
of the two sides' ratio within a repeat.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
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


def project_loop(model: torch.nn.Module, cfg: PretrainConfig, batches: list[dict]) -> tuple[list[float], float]:
    """(per-step seconds, seconds of the first step: compile's one-off cost when compiling)."""
    clock, calls = StepClock(), []

    def batch_fn(step: int, micro: int) -> dict:
        calls.append(step)
        if len(calls) > 1:  # the first call is the budget estimate, before the loop starts
            clock.tick()
        return batches[step % len(batches)]

    with tempfile.TemporaryDirectory() as out:
        train(model, cfg, batch_fn, lm_loss, out)
    clock.tick()  # end of the last step (train returns right after it: no export, no evaluation)
    return clock.step_seconds(WARMUP_STEPS), clock.step_seconds(0)[0]


def plain_loop(model: torch.nn.Module, cfg: PretrainConfig, batches: list[dict], autocast: bool) -> tuple[list[float], float]:
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
    return clock.step_seconds(WARMUP_STEPS), clock.step_seconds(0)[0]


class Rows(torch.utils.data.Dataset):
    """The benchmark's batches as Trainer's dataset: one row per sequence, labels = input_ids
    (the model shifts them), collated back into batch_size rows by Trainer's default collator."""

    def __init__(self, batches: list[dict]):
        self.rows = [ids for b in batches for ids in b["input_ids"]]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def trainer_run(model: torch.nn.Module, cfg: PretrainConfig, batches: list[dict], bf16: bool) -> tuple[list[float], float]:
    """(per-step seconds, seconds of Trainer's construction), timed by an on_step_end callback."""
    import time

    from transformers import PrinterCallback, Trainer, TrainingArguments

    clock = StepClock()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, report_to=[], use_cpu=True, bf16=bf16, max_steps=len(batches),
                                 per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.lr,
                                 lr_scheduler_type="cosine", warmup_steps=0, adam_beta1=cfg.beta1,
                                 adam_beta2=cfg.beta2, weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip,
                                 save_strategy="no", eval_strategy="no", logging_steps=10**6, disable_tqdm=True,
                                 dataloader_num_workers=0, seed=cfg.seed)
        started = time.perf_counter()
        trainer = Trainer(model=model, args=args, train_dataset=Rows(batches), callbacks=[clock.trainer_callback()])
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line would break the table
        setup_seconds = time.perf_counter() - started
        trainer.train()
    # the interval before the first step_end includes dataloader start-up: warm-up like the rest
    return clock.step_seconds(WARMUP_STEPS), setup_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="steps per run (the first 2 are warm-up)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadiest on a shared machine; ratios hold at 2)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: the loop's default (bf16 where the CPU has it natively, else fp32), on every side")
    args = parser.parse_args()
    quiet(args.threads)
    cache = tempfile.TemporaryDirectory()  # compile's one-off cost as a first run pays it, not a cache hit
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache.name
    requested = {"auto": PretrainConfig().mixed_precision, "bf16": "bf16", "fp32": "no"}[args.precision]
    cfg = PretrainConfig(max_steps=args.steps, warmup_steps=0, save_every=10**6, log_every=10**6,
                         mixed_precision=requested)
    bf16 = make_accelerator(cfg).mixed_precision == "bf16"  # what the project's loop resolves to here
    compiled = PretrainConfig(**{**cfg.__dict__, "compile": True})
    batches = make_batches(cfg, args.steps)
    initial = default_model()
    sides = {  # name -> run(model) -> (per-step seconds, one-off seconds)
        "project loop (loop.train), compile=True": lambda m: project_loop(m, compiled, batches),
        "project loop (loop.train), compile=False": lambda m: project_loop(m, cfg, batches),
        "HF Trainer (default: eager, fused AdamW)": lambda m: trainer_run(m, cfg, batches, bf16),
        "plain PyTorch loop (eager)": lambda m: plain_loop(m, cfg, batches, bf16),
    }
    steps = {name: [] for name in sides}
    once = {name: [] for name in sides}
    for r in range(args.repeats):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            seconds, first = sides[name](copy.deepcopy(initial))
            steps[name].append(seconds)
            once[name].append(first)
    tokens = cfg.batch_size * cfg.model.context_length
    n_params = sum(p.numel() for p in initial.parameters())
    print(f"pretrain step: {n_params / 1e6:.2f}M-param LLaMA, {cfg.batch_size} x {cfg.model.context_length} tokens, "
          f"{'bf16 autocast' if bf16 else 'fp32'} on every side, {torch.get_num_threads()} threads, "
          f"{args.repeats} repeats x {args.steps - WARMUP_STEPS} timed steps")
    flat = lambda runs: [s for run in runs for s in run]  # noqa: E731
    print(table([(name, flat(runs), tokens) for name, runs in steps.items()], "tok/s"))
    names = list(sides)
    first = once[names[0]]
    print(f"one-off: the compiled loop's first step (torch.compile) took {first[0]:.1f} s in the first repeat "
          f"(empty inductor cache), {statistics.median(first[1:] or first):.1f} s median in later ones (Dynamo's "
          f"in-process cache, or a recompile from inductor's cache); eager loop's first step {statistics.median(once[names[1]]):.1f} s; Trainer "
          f"construction {statistics.median(once[names[2]]):.2f} s")
    for ours, label in ((names[0], "compiled"), (names[1], "eager")):
        for other, key in ((names[2], "hf_trainer"), (names[3], "plain_pytorch")):
            paired = paired_ratio(steps[ours], steps[other])
            overall = median_rate(flat(steps[ours]), tokens) / median_rate(flat(steps[other]), tokens)
            target = 1.25 if key == "hf_trainer" else 0.95
            print(f"{label} loop / {other}: {paired:.3f} (median of per-repeat ratios; of overall medians: "
                  f"{overall:.3f}); target >= {target}: {'met' if paired >= target else 'NOT met'}")
    speedup = paired_ratio(steps[names[0]], steps[names[1]])
    best = names[0] if speedup >= 1 else names[1]  # the headline measures the faster configuration
    print(f"compiled / eager loop: {speedup:.3f}; the headline ratios below are the "
          f"{'compiled' if best == names[0] else 'eager'} loop's (the faster here)")
    for other, key in ((names[2], "hf_trainer"), (names[3], "plain_pytorch")):
        print(f"ratio pretrain_vs_{key}={paired_ratio(steps[best], steps[other]):.2f}")


if __name__ == "__main__":
    main()
