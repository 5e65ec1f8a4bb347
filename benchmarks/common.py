"""Shared by the benchmarks: step timing, the default model, and a small results table."""
from __future__ import annotations

import logging
import os
import statistics
import time
import warnings

import torch

from components.model.build import build_model
from components.model.config import ModelConfig

VOCAB = 768  # conf/tokenizer/default.yaml


class StepClock:
    """Timestamps taken when each step fetches its batch: step k lasted t[k+1] - t[k].

    Taken from outside the code under test, the same way on both sides of a comparison.
    """

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())

    def trainer_callback(self):
        """A transformers TrainerCallback ticking this clock when training starts and after every
        step (Trainer's and TRL's side of a comparison)."""
        from transformers import TrainerCallback

        clock = self

        class Tick(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                clock.tick()

            def on_step_end(self, args, state, control, **kwargs):
                clock.tick()

        return Tick()

    def step_seconds(self, skip: int) -> list[float]:
        """Durations of the steps after the first `skip` (warm-up: allocator, first-call costs)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])][skip:]


def quiet(threads: int) -> None:
    torch.set_num_threads(threads)
    for name in ("components", "accelerate", "transformers", "trl", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false",
                      TQDM_DISABLE="1", HF_DATASETS_DISABLE_PROGRESS_BARS="1")


class Vocabulary:
    """What build_model needs of a tokenizer (size and special ids): speed does not depend on the rest."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 3

    def __len__(self) -> int:
        return VOCAB


def default_model(tokenizer=None, seed: int = 0) -> torch.nn.Module:
    """The pipeline's default LLaMA (conf/pretrain/default.yaml: 4 layers, d 256, GQA, context 256)."""
    return build_model(ModelConfig(), tokenizer or Vocabulary(), seed)


def table(rows: list[tuple[str, list[float], float]], unit: str) -> str:
    """rows: (name, per-step seconds, work per step) -> median / min / max throughput."""
    out = [f"{'':<40} {'median ' + unit:>16} {'min':>10} {'max':>10} {'steps':>6}"]
    for name, seconds, work in rows:
        rates = [work / s for s in seconds]
        out.append(f"{name:<40} {statistics.median(rates):>16.1f} {min(rates):>10.1f} {max(rates):>10.1f} {len(rates):>6}")
    return "\n".join(out)


def median_rate(seconds: list[float], work: float) -> float:
    return statistics.median(work / s for s in seconds)


def paired_ratio(runs_a: list[list[float]], runs_b: list[list[float]]) -> float:
    """Median over repeats of (a's median rate / b's) in that repeat: runs next to each other in time
    share the machine's load, so the paired ratio is steadier than a ratio of overall medians."""
    return statistics.median(statistics.median(b) / statistics.median(a) for a, b in zip(runs_a, runs_b))
