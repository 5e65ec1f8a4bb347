"""Eval stage options (mirrored by conf/eval/default.yaml)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from components.config import check, log_only
from components.eval.decoding import check_decoding


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    num_tasks: int = 200  # held-out generated instructions scored by exact match
    num_pairs: int = 200  # held-out preference pairs
    max_val_tokens: int = 100_000  # validation tokens scored for perplexity
    max_new_tokens: int = 24  # greedy decoding budget per answer
    num_samples: int = 3  # prompts shown with each decoding strategy in the report
    # name -> transformers GenerationConfig kwargs; each strategy scores the tasks (components/eval/decoding.py)
    decoding: dict[str, dict[str, Any]] = field(default_factory=lambda: {"greedy": {}})
    pass_k: list[int] = field(default_factory=lambda: [1, 5])  # pass@k of sampling strategies (Chen et al. 2021)
    num_return_sequences: int = 5  # n: answers sampled per task by a sampling strategy (>= every k)
    seed: int = 0
    batch_size: int = log_only(50)  # results do not depend on it (padding-invariant scoring)

    def __post_init__(self) -> None:
        for name in ("num_tasks", "num_pairs", "max_val_tokens", "max_new_tokens", "batch_size"):
            check(getattr(self, name) > 0, f"eval.{name}", getattr(self, name), "must be > 0")
        check(self.num_samples >= 0, "eval.num_samples", self.num_samples, "must be >= 0")
        check_decoding(self.decoding, self.pass_k, self.num_return_sequences)
