"""Optimisation settings shared by pretrain, sft and align (each stage's config extends this)."""
from __future__ import annotations

from dataclasses import dataclass

from components.config import check, check_choice, log_only


@dataclass(kw_only=True)
class TrainConfig:
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 50
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences (pairs for align) per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    weight_decay: float = 0.1  # on matrices only
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    mixed_precision: str = "bf16"  # bf16 | no (bf16 autocast runs ~2x faster on CPUs that have it)
    seed: int = 0
    log_every: int = log_only(25)  # steps between progress lines
    eval_every: int = log_only(0)  # steps between validation passes (0: only at the end)
    save_every: int = log_only(200)  # steps between checkpoints (resume after a crash)
    keep_checkpoints: int = log_only(2)

    def __post_init__(self) -> None:
        section = type(self).__name__.removesuffix("Config").lower()
        check(self.lr > 0, f"{section}.lr", self.lr, "must be > 0")
        check(0 <= self.min_lr_ratio <= 1, f"{section}.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        check(self.max_steps > 0, f"{section}.max_steps", self.max_steps, "must be > 0")
        check(0 <= self.warmup_steps < self.max_steps, f"{section}.warmup_steps", self.warmup_steps,
              f"must be >= 0 and < {section}.max_steps={self.max_steps}")
        check(self.batch_size > 0, f"{section}.batch_size", self.batch_size, "must be > 0")
        check(self.grad_accum > 0, f"{section}.grad_accum", self.grad_accum, "must be > 0")
        check(self.grad_clip > 0, f"{section}.grad_clip", self.grad_clip, "must be > 0")
        check_choice(f"{section}.mixed_precision", self.mixed_precision, ("bf16", "no"))
