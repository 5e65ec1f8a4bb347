"""Decoding strategies for eval: `eval.decoding` maps a name to transformers GenerationConfig kwargs.

Each strategy scores the held-out tasks (exact match): a deterministic one (greedy, beam search)
answers each task once; a sampling one (do_sample: true) draws eval.num_return_sequences answers
per task, which give pass@k by the unbiased estimator of Chen et al. 2021 ("Evaluating Large
Language Models Trained on Code", eq. 1) and a task accuracy that is the mean over all draws
(= pass@1). Draws are seeded per batch of SAMPLING_PROMPTS prompts, a fixed size: a sampled
answer depends on eval.seed and the task list, never on eval.batch_size.

This module's checks run at config time and import neither torch nor transformers; a test
holds DECODING_KEYS to the fields of the installed GenerationConfig.
"""
from __future__ import annotations

import math
import re
from typing import Any

from components.config import check, unknown_key_error

SAMPLING_PROMPTS = 16  # prompts per sampled batch (x num_return_sequences sequences); part of the result


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# GenerationConfig fields a strategy may set, with the check of each value
DECODING_KEYS: dict[str, tuple[Any, str]] = {
    "do_sample": (lambda v: isinstance(v, bool), "must be true or false"),
    "num_beams": (lambda v: _int(v) and v >= 1, "must be an integer >= 1"),
    "length_penalty": (lambda v: _number(v), "must be a number (> 0 favours longer beams)"),
    "early_stopping": (lambda v: v in (True, False, "never"), "must be true, false or never"),
    "temperature": (lambda v: _number(v) and v > 0, "must be > 0"),
    "top_k": (lambda v: _int(v) and v >= 0, "must be an integer >= 0 (0: off)"),
    "top_p": (lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]"),
    "min_p": (lambda v: _number(v) and 0 <= v <= 1, "must be in [0, 1]"),
    "typical_p": (lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]"),
    "epsilon_cutoff": (lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1)"),
    "eta_cutoff": (lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1)"),
    "repetition_penalty": (lambda v: _number(v) and v > 0, "must be > 0 (1: off, > 1 penalises)"),
    "no_repeat_ngram_size": (lambda v: _int(v) and v >= 0, "must be an integer >= 0 (0: off)"),
    "min_new_tokens": (lambda v: _int(v) and v >= 0, "must be an integer >= 0"),
    "renormalize_logits": (lambda v: isinstance(v, bool), "must be true or false"),
}
SAMPLING_ONLY = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
SET_ELSEWHERE = {  # GenerationConfig fields that eval sets itself
    "max_new_tokens": "eval.max_new_tokens", "max_length": "eval.max_new_tokens",
    "num_return_sequences": "eval.num_return_sequences",
    "eos_token_id": "the model's exported generation_config.json", "pad_token_id": "the model's exported "
    "generation_config.json", "bos_token_id": "the model's exported generation_config.json",
}
NAME = re.compile(r"^[A-Za-z0-9_-]+$")  # a metrics.json key and a report column


def is_sampling(kwargs: dict) -> bool:
    return bool(kwargs.get("do_sample"))


def check_decoding(decoding: dict, pass_k: list[int], num_return_sequences: int) -> None:
    """Fail at config time naming eval.decoding.<name>[.<kwarg>] (or eval.pass_k) and the fix."""
    check(isinstance(decoding, dict) and len(decoding) > 0, "eval.decoding", decoding,
          "must map at least one name to GenerationConfig kwargs, e.g. {greedy: {}}")
    for name, kwargs in decoding.items():
        key = f"eval.decoding.{name}"
        check(bool(NAME.match(str(name))), key, name, "a strategy name is letters, digits, '_' or '-'")
        check(isinstance(kwargs, dict), key, kwargs, "must be a mapping of GenerationConfig kwargs ({} for greedy)")
        for arg, value in kwargs.items():
            if arg in SET_ELSEWHERE:
                check(False, f"{key}.{arg}", value, f"is set by {SET_ELSEWHERE[arg]}, not per strategy")
            if arg not in DECODING_KEYS:
                raise unknown_key_error(f"{key}.{arg}", list(DECODING_KEYS))
            valid, fix = DECODING_KEYS[arg]
            check(valid(value), f"{key}.{arg}", value, fix)
        for arg in SAMPLING_ONLY:
            check(arg not in kwargs or is_sampling(kwargs), f"{key}.{arg}", kwargs.get(arg),
                  "only acts when sampling: add do_sample: true to this strategy")
    check(_int(num_return_sequences) and num_return_sequences >= 1, "eval.num_return_sequences",
          num_return_sequences, "must be an integer >= 1")
    check(all(_int(k) and k >= 1 for k in pass_k), "eval.pass_k", pass_k, "each k must be an integer >= 1")
    check(max(pass_k, default=1) <= num_return_sequences, "eval.pass_k", pass_k,
          f"k must be <= eval.num_return_sequences={num_return_sequences} (the samples pass@k is estimated from)")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021),
    computed as their numerically stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def samples_per_task(kwargs: dict, num_return_sequences: int) -> int:
    """n: a deterministic strategy gives the same answer every time, so it answers once."""
    return num_return_sequences if is_sampling(kwargs) else 1


def score_strategy(correct: list[list[bool]], pass_k: list[int]) -> dict:
    """task_accuracy (mean over every answer) and pass@k for each k the n answers per task allow."""
    n = len(correct[0]) if correct else 1
    scores = {"task_accuracy": sum(map(sum, correct)) / max(1, sum(map(len, correct))), "samples_per_task": n}
    for k in sorted({1, *pass_k}):
        if k <= n:
            scores[f"pass@{k}"] = sum(pass_at_k(n, sum(row), k) for row in correct) / max(1, len(correct))
    return scores


def describe(kwargs: dict) -> str:
    """One strategy's kwargs as the report shows them."""
    return ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "greedy"
