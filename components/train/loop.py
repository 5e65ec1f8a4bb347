"""The one training loop behind pretrain, sft and align.

An objective differs only through `loss_fn(model, batch) -> (loss_sum, metrics)`.
Batches come from `batch_fn(step, micro)`, a pure function of the position, so a
resumed run continues on exactly the data it would have seen, without replay.
Each batch carries "n_targets" (tokens, or pairs for DPO): the loss is normalised by
the targets of the whole accumulated batch, so accumulation 4 x 2 equals batch 8.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

from components.train import checkpoint
from components.train.config import TrainConfig

log = logging.getLogger(__name__)

BatchFn = Callable[[int, int], dict]
LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def bf16_supported() -> bool:
    """bf16 autocast pays only with hardware bf16: on a CPU without AVX512-BF16/AMX it
    is emulated and measured here 20x slower than fp32, so it is not used there."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_accelerator(cfg: TrainConfig) -> Accelerator:
    precision = cfg.mixed_precision
    if precision == "bf16" and not bf16_supported():
        log.warning("NOTE: mixed_precision=bf16 requested but this device has no native bf16; training in fp32")
        precision = "no"
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=precision)


def accumulate_gradients(model: torch.nn.Module, batches: list[dict], loss_fn: LossFn,
                         accelerator: Accelerator) -> tuple[float, int, dict]:
    """Backward over micro-batches, normalised by the targets of all of them together."""
    n_targets = sum(int(b["n_targets"]) for b in batches)
    loss_total, extras = 0.0, {}
    for batch in batches:
        with accelerator.autocast():
            loss_sum, metrics = loss_fn(model, batch)
        accelerator.backward(loss_sum / max(1, n_targets))
        loss_total += float(loss_sum.detach())
        for k, v in metrics.items():
            extras[k] = extras.get(k, 0.0) + float(v) / len(batches)
    return loss_total, n_targets, extras


def train(
    model: torch.nn.Module,
    cfg: TrainConfig,
    batch_fn: BatchFn,
    loss_fn: LossFn,
    out_dir: Path,
    evaluate: Callable[[torch.nn.Module], dict] | None = None,
    accelerator: Accelerator | None = None,
) -> dict:
    """Train in place; write out_dir/log.jsonl and checkpoints; return the final metrics."""
    accelerator = accelerator or make_accelerator(cfg)
    optimizer = make_optimizer(model, cfg)
    model, optimizer = accelerator.prepare(model, optimizer)
    ckpt_dir = Path(out_dir) / "checkpoints"
    log_path = Path(out_dir) / "log.jsonl"
    state = {"step": 0, "tokens": 0}
    if checkpoint.latest(ckpt_dir) is not None:
        state = checkpoint.load(checkpoint.latest(ckpt_dir), accelerator.unwrap_model(model), optimizer)
        log.info("resumed from step %d", state["step"])
        if log_path.exists():  # drop rows logged after the checkpoint: they will be redone
            rows = [r for r in log_path.read_text().splitlines() if json.loads(r)["step"] <= state["step"]]
            log_path.write_text("".join(r + "\n" for r in rows))
    final: dict = {}
    started, window_tokens, window_start = time.time(), 0, time.time()
    try:
        with open(log_path, "a") as log_file:
            while state["step"] < cfg.max_steps:
                step = state["step"]
                # --- one optimizer step over cfg.grad_accum micro-batches ---
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batches = [batch_fn(step, micro) for micro in range(cfg.grad_accum)]
                model.train()
                loss_total, n_targets, extras = accumulate_gradients(model, batches, loss_fn, accelerator)
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_tokens = sum(int(b.get("n_tokens", b["n_targets"])) for b in batches)
                state = {"step": step + 1, "tokens": state["tokens"] + step_tokens}
                window_tokens += step_tokens
                # --- logging, validation, checkpoints ---
                row = {"step": step + 1, "loss": loss_total / max(1, n_targets), "lr": lr,
                       "grad_norm": float(grad_norm), "tokens": state["tokens"], **extras}
                done = state["step"] == cfg.max_steps
                if step % cfg.log_every == 0 or done:
                    now = time.time()
                    row["tokens_per_s"] = window_tokens / max(1e-9, now - window_start)
                    window_tokens, window_start = 0, now
                    log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", row["step"], cfg.max_steps,
                             row["loss"], lr, row["tokens_per_s"])
                if evaluate is not None and (done or (cfg.eval_every and state["step"] % cfg.eval_every == 0)):
                    model.eval()
                    with torch.no_grad(), accelerator.autocast():
                        row.update(evaluate(model))
                    log.info("step %d validation %s", state["step"], {k: round(v, 4) for k, v in row.items() if k.startswith("val")})
                log_file.write(json.dumps(row) + "\n")
                log_file.flush()
                if state["step"] % cfg.save_every == 0 and not done:
                    checkpoint.save(ckpt_dir, accelerator.unwrap_model(model), optimizer, state, cfg.keep_checkpoints)
                final = row
    finally:
        accelerator.free_memory()
    seconds = time.time() - started
    return {
        "final_loss": final.get("loss", float("nan")),
        "steps": state["step"],
        "tokens_trained": state["tokens"],
        "train_seconds": round(seconds, 2),
        "tokens_per_second": round(state["tokens"] / max(1e-9, seconds), 1),
        **{k: v for k, v in final.items() if k.startswith("val")},
    }
