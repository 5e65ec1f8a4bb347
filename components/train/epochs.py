"""Training length in epochs: the one place `num_epochs` becomes a number of optimizer steps."""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import TypeVar

from components.config import check
from components.train.config import TrainConfig

log = logging.getLogger(__name__)
Config = TypeVar("Config", bound=TrainConfig)


def steps_for_epochs(num_epochs: int, n_items: int, global_batch: int) -> int:
    """Optimizer steps in which a sampler drawing `global_batch` items a step sees all n_items num_epochs times
    (the last step may start the next pass: ceil, so no item of the last epoch is left out)."""
    return max(1, math.ceil(num_epochs * n_items / global_batch))


def with_epochs(cfg: Config, n_items: int, what: str) -> tuple[Config, dict]:
    """(cfg with max_steps derived from num_epochs, the record of how, for the manifest), or (cfg, {}) when
    num_epochs is 0 (max_steps as given). A step takes batch_size x grad_accum items: batch_size is the
    global micro-batch, split across the ranks, so the world size does not change the count."""
    if cfg.num_epochs == 0:
        return cfg, {}
    section = type(cfg).__name__.removesuffix("Config").lower()
    global_batch = cfg.batch_size * cfg.grad_accum
    steps = steps_for_epochs(cfg.num_epochs, n_items, global_batch)
    check(cfg.warmup_steps < steps, f"{section}.warmup_steps", cfg.warmup_steps,
          f"must be < the {steps} steps of {section}.num_epochs={cfg.num_epochs} over {n_items} {what} "
          f"at {global_batch} a step: lower it, or raise num_epochs")
    log.info("%s: %d epochs of %d %s at %d a step (batch_size %d x grad_accum %d) = %d optimizer steps "
             "(max_steps=%d ignored)", section, cfg.num_epochs, n_items, what, global_batch, cfg.batch_size,
             cfg.grad_accum, steps, cfg.max_steps)
    record = {"num_epochs": cfg.num_epochs, "epoch_items": n_items, "epoch_unit": what,
              "global_batch": global_batch, "derived_max_steps": steps}
    return dataclasses.replace(cfg, max_steps=steps), record
