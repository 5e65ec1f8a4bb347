"""DPO step time: our align path (reference log-probs computed once and cached: one policy
forward per pair batch, by default prefix-shared: chosen and rejected in one row, the prompt
computed once, pairs packed into rows) against TRL's DPOTrainer on the same model, pairs and
batch size. TRL by default runs a second, reference forward every step; with
precompute_ref_log_probs it computes them once too. TRL 1.x also enables gradient
checkpointing by default (one more forward per step), which our loop does not: measured both
ways, so the like-for-like figure (no checkpointing on either side) is there too. Our
previous layout (align.prefix_sharing=false: two padded rows per pair) is measured beside.
Targets: ours >= 1.5x faster than TRL's default and than TRL with precompute_ref_log_probs.
The headline ratios are printed as `ratio dpo_vs_trl_default=<x.xx>` and
`ratio dpo_vs_trl_precompute=<x.xx>` (median of per-repeat ratios; higher: ours faster).

    python -m benchmarks.dpo_step [--steps 8] [--repeats 3] [--threads 1] [--compile]

Both sides: the pipeline's default model (4 layers, d 256), align.batch_size=16 pairs of
generated tasks, AdamW (lr 5e-5, betas 0.9/0.95, weight decay 0.1), gradient clipping at
1.0, sigmoid loss with beta 0.1 (align.rpo_alpha=0 so the objectives are the same), fp32
(or bf16 where the CPU has it, on both), one process. A step is timed from one batch fetch
to the next (ours: batch_fn; TRL: its on_step_end callback), the first 2 being warm-up.
The one-off reference pass (ours, and TRL's precompute) is timed apart.
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import StepClock, default_model, median_rate, paired_ratio, quiet, table
from components.align.config import AlignConfig
from components.align.run import all_logps, dpo_objective, encode_pair, make_batch
from components.tasks import preference_pairs
from components.train.loop import make_accelerator, train

WARMUP_STEPS = 2
OURS = "ours (prefix-shared, packed)"
HEADLINES = {"TRL default (ref forward, grad ckpt)": "dpo_vs_trl_default",
             "TRL precompute_ref_log_probs, no ckpt": "dpo_vs_trl_precompute"}


def ours(model, tokenizer, pairs: list[dict], cfg: AlignConfig, compile_model: bool = False) -> tuple[list[float], float]:
    """(per-step seconds, seconds of the one-off reference pass)."""
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    accelerator = make_accelerator(cfg)
    if compile_model:  # shapes vary per batch: dynamic from the start (the compilation falls in the warm-up)
        model = torch.compile(model, dynamic=True)
    started = time.perf_counter()
    ref = all_logps(model, encoded, tokenizer.pad_token_id, cfg, accelerator)
    ref_seconds = time.perf_counter() - started
    clock, calls = StepClock(), []

    def batch_fn(step: int, micro: int) -> dict:
        calls.append(step)
        if len(calls) > 1:  # the first call is the budget estimate, before the loop starts
            clock.tick()
        idx = list(range(step * cfg.batch_size, (step + 1) * cfg.batch_size))  # TRL's order: no shuffling
        return make_batch(cfg, encoded, idx, tokenizer.pad_token_id, 1, ref[idx])

    with tempfile.TemporaryDirectory() as out:
        train(model, cfg, batch_fn, dpo_objective(cfg), out, accelerator=accelerator)
    clock.tick()
    if compile_model:  # the training graphs compile in the warm-up steps: a one-off cost too
        ref_seconds += sum(clock.step_seconds(0)[:WARMUP_STEPS])
    return clock.step_seconds(WARMUP_STEPS), ref_seconds


def trl_run(model, tokenizer, pairs: list[dict], cfg: AlignConfig, precompute: bool, checkpointing: bool,
            bf16: bool) -> tuple[list[float], float]:
    """(per-step seconds, seconds of construction: tokenisation, and the reference pass when precomputed)."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    clock = StepClock()

    dataset = Dataset.from_list([{"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": p["rejected"]}]} for p in pairs])
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, report_to=[], use_cpu=True, bf16=bf16, beta=cfg.beta, loss_type=["sigmoid"],
                         per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps, learning_rate=cfg.lr,
                         lr_scheduler_type="constant", adam_beta1=cfg.beta1, adam_beta2=cfg.beta2,
                         weight_decay=cfg.weight_decay, max_grad_norm=cfg.grad_clip, save_strategy="no",
                         logging_steps=10**6, disable_tqdm=True, max_length=None, dataloader_num_workers=0,
                         precompute_ref_log_probs=precompute, gradient_checkpointing=checkpointing, seed=cfg.seed)
        started = time.perf_counter()
        trainer = DPOTrainer(model=model, ref_model=None if precompute else copy.deepcopy(model).eval(), args=args,
                             train_dataset=dataset, processing_class=tokenizer, callbacks=[clock.trainer_callback()])
        trainer.remove_callback(PrinterCallback)  # its end-of-training metrics line would break the table
        setup_seconds = time.perf_counter() - started
        trainer.train()
    # the interval before the first step_end includes dataloader start-up: warm-up like the rest
    return clock.step_seconds(WARMUP_STEPS), setup_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per run (the first 2 are warm-up)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadiest on a shared machine; ratios hold at 2)")
    parser.add_argument("--compile", action="store_true",
                        help="also our default path with torch.compile(model, dynamic=True) (its compilation, "
                             "minutes on a CPU, in the reference pass and the warm-up steps, is printed as one-off)")
    args = parser.parse_args()
    quiet(args.threads)
    from transformers import AutoTokenizer

    from tests.tiny import make_tokenizer_artifact

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_artifact(Path(tmp), vocab_size=768) / "hf")
    cfg = AlignConfig(max_steps=args.steps, warmup_steps=0, rpo_alpha=0.0, rejected="generated",
                      save_every=10**6, log_every=10**6)
    bf16 = make_accelerator(cfg).mixed_precision == "bf16"
    pairs = preference_pairs("train", cfg.batch_size * args.steps)
    initial = default_model(tokenizer)
    # name -> ours: (its config, compiled) | TRL's (precompute_ref_log_probs, gradient_checkpointing);
    # TRL 1.x checkpoints by default
    modes = {OURS: (cfg, False),
             "ours, two rows per pair (no sharing)": (replace(cfg, prefix_sharing=False), False),
             **({"ours, torch.compile": (cfg, True)} if args.compile else {}),
             "TRL default (ref forward, grad ckpt)": (False, True),
             "TRL ref forward, no grad ckpt": (False, False),
             "TRL precompute_ref_log_probs, no ckpt": (True, False)}
    runs = {name: ([], []) for name in modes}
    notes = []
    for r in range(args.repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]  # other load on the machine hits all alike
        for name in order:
            model = copy.deepcopy(initial)
            try:
                if name.startswith("ours"):
                    steps, once = ours(model, tokenizer, pairs, *modes[name])
                else:
                    steps, once = trl_run(model, tokenizer, pairs, cfg, *modes[name], bf16)
            except Exception as e:  # report precisely why a TRL mode cannot run here, measure the rest
                notes.append(f"{name}: failed: {type(e).__name__}: {str(e)[:300]}")
                continue
            runs[name][0].append(steps)
            runs[name][1].append(once)
    encoded = [encode_pair(tokenizer, p) for p in pairs]
    tokens = sum(len(ids) for pair in encoded for ids, _ in pair) / args.steps
    shared = sum(make_batch(cfg, encoded, list(range(i, i + cfg.batch_size)), tokenizer.pad_token_id)["n_tokens"]
                 for i in range(0, len(pairs), cfg.batch_size)) / args.steps
    n_params = sum(p.numel() for p in initial.parameters())
    print(f"DPO step: {n_params / 1e6:.2f}M-param LLaMA, {cfg.batch_size} pairs per step (~{tokens:.0f} tokens as "
          f"two rows each, ~{shared:.0f} prefix-shared), {'bf16' if bf16 else 'fp32'}, {torch.get_num_threads()} "
          f"threads, {args.repeats} repeats x {args.steps - WARMUP_STEPS} timed steps")
    flat = lambda per_run: [s for run in per_run for s in run]  # noqa: E731
    print(table([(name, flat(steps), cfg.batch_size) for name, (steps, _) in runs.items() if steps], "pairs/s"))
    for name, (steps, once) in runs.items():
        if once:
            what = "reference pass and warm-up steps, compilation included" if "compile" in name else \
                "reference pass / trainer construction"
            print(f"  one-off before training, {name}: {min(once):.2f} s ({what})")
    mine = runs[OURS][0]
    headline = {}
    for name, (steps, _) in list(runs.items())[1:]:
        if steps and len(steps) == len(mine):
            ratio, overall = paired_ratio(mine, steps), median_rate(flat(mine), 1) / median_rate(flat(steps), 1)
            key = HEADLINES.get(name)
            target = f" target >= 1.5: {'met' if ratio >= 1.5 else 'NOT met'}" if key else ""
            print(f"speed-up of ours over {name}: {ratio:.2f}x (median of per-repeat ratios; of overall "
                  f"medians: {overall:.2f}x){target}")
            if key:
                headline[key] = ratio
    for note in notes:
        print(note)
    for key, ratio in headline.items():
        print(f"ratio {key}={ratio:.2f}")


if __name__ == "__main__":
    main()
