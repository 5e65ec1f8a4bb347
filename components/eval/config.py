"""Eval stage options (mirrored by conf/eval/default.yaml)."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import check, check_choice, log_only
from components.eval.benchmark_specs import DEFAULT_BENCHMARKS, BenchmarkSpec, parse_benchmarks
from components.eval.decoding import check_decoding
from components.model.config import ROPE_SCALINGS

PASSKEY_CONDITIONS = (*ROPE_SCALINGS, "extend")  # none: RoPE as trained


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
    # lm-evaluation-harness tasks, each {name, task, path, num_fewshot, limit, metric, fewshot_path}
    # (components/eval/benchmark_specs.py); path null = the embedded generated set of that shape; [] = none
    benchmarks: list[Any] = field(default_factory=lambda: [dict(b) for b in DEFAULT_BENCHMARKS])
    benchmark_items: int = 100  # items of each embedded benchmark set (path: null)
    benchmark_chat_template: bool = False  # sft and aligned models read benchmark prompts through their chat template
    # passkey retrieval (components/eval/passkey.py); the full grid: passkey_lengths=[0.5,1,2,4]
    passkey_lengths: list[float] = field(default_factory=lambda: [1.0, 2.0])  # prompt + answer tokens, as multiples of the trained context (the pretrain model's)
    passkey_depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])  # where the key sits in the filler: 0 first, 1 just before the question
    passkey_trials: int = 4  # prompts per (length, depth) cell (0: no passkey test)
    passkey_conditions: list[str] = field(default_factory=lambda: ["none", "linear", "dynamic", "yarn", "extend"])  # none (RoPE as trained) | linear (PI, no fine-tuning) | dynamic (NTK) | yarn | extend (the extend stage's model, when the run has one)

    def __post_init__(self) -> None:
        for name in ("num_tasks", "num_pairs", "max_val_tokens", "max_new_tokens", "batch_size"):
            check(getattr(self, name) > 0, f"eval.{name}", getattr(self, name), "must be > 0")
        check(self.num_samples >= 0, "eval.num_samples", self.num_samples, "must be >= 0")
        check_decoding(self.decoding, self.pass_k, self.num_return_sequences)
        check(self.benchmark_items > 0, "eval.benchmark_items", self.benchmark_items, "must be > 0")
        check(self.passkey_trials >= 0, "eval.passkey_trials", self.passkey_trials, "must be >= 0 (0: no passkey test)")
        check(bool(self.passkey_lengths) and all(0 < x <= 64 for x in self.passkey_lengths), "eval.passkey_lengths",
              self.passkey_lengths, "must be a non-empty list of multiples of the trained context in (0, 64]")
        check(bool(self.passkey_depths) and all(0 <= d <= 1 for d in self.passkey_depths), "eval.passkey_depths",
              self.passkey_depths, "must be a non-empty list of depths in [0, 1]")
        for name in ("passkey_lengths", "passkey_depths", "passkey_conditions"):
            values = getattr(self, name)
            check(len(set(values)) == len(values), f"eval.{name}", values, "lists a value twice")
        check(bool(self.passkey_conditions), "eval.passkey_conditions", self.passkey_conditions, "must not be empty")
        for condition in self.passkey_conditions:
            check_choice("eval.passkey_conditions", condition, PASSKEY_CONDITIONS)
        self.benchmark_specs  # parsed and checked now: a bad entry fails naming it, before any planning

    @functools.cached_property
    def benchmark_specs(self) -> tuple[BenchmarkSpec, ...]:
        return parse_benchmarks(self.benchmarks)

    def source_files(self) -> list[Path]:
        """The local files the benchmarks read: their content is part of the cache key."""
        return [path for spec in self.benchmark_specs for path in spec.input_files()]
