"""What eval measures: perplexity, exact-match task accuracy, preference accuracy, samples."""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch

from components.chat.batches import pad_batch
from components.chat.generate import generate
from components.chat.template import encode_chat
from components.eval.decoding import SAMPLING_PROMPTS, is_sampling, samples_per_task, score_strategy
from components.train.device import model_device, to_device
from components.train.losses import mean_token_nll, sequence_logps

def unigram_ppl(train_tokens: np.ndarray, windows: torch.Tensor, vocab_size: int) -> float:
    """Add-one smoothed unigram model from the train shard, on the tokens the models predict."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    targets = windows[:, 1:].numpy().ravel()
    return float(math.exp(-logp[targets].mean()))


def val_ppl(model, windows: torch.Tensor, batch_size: int) -> float:
    """exp(mean next-token NLL) over the windows (each scores its seq_len - 1 targets)."""
    return math.exp(mean_token_nll(model, windows, batch_size))


def task_accuracy(model, tokenizer, examples: list[dict], max_new_tokens: int, batch_size: int,
                  num_return_sequences: int = 1, seed: int | None = None, **decoding) -> tuple[float, dict, list]:
    """Exact match (whitespace stripped) of the answers (greedy unless `decoding` says otherwise; n per
    example, in a row): overall and per task over every answer, and the answers."""
    n = num_return_sequences
    answers = generate(model, tokenizer, [ex["messages"][:-1] for ex in examples], max_new_tokens, batch_size,
                       num_return_sequences=n, seed=seed, **decoding)
    per_task: dict[str, list[bool]] = defaultdict(list)
    for i, ex in enumerate(examples):
        per_task[ex["task"]] += [answer.strip() == ex["answer"].strip() for answer in answers[i * n : (i + 1) * n]]
    overall = sum(sum(v) for v in per_task.values()) / (len(examples) * n)
    return overall, {t: sum(v) / len(v) for t, v in sorted(per_task.items())}, answers


def decoding_accuracy(model, tokenizer, examples: list[dict], cfg) -> tuple[dict, dict, list[str]]:
    """Every strategy of cfg.decoding on the examples: {name: task_accuracy, its interval, pass@k, n}, and
    the per-task accuracy and answers (the first of each example's) of the first strategy (the headline). Sampled strategies draw in seeded batches of a fixed size
    (SAMPLING_PROMPTS): their answers do not depend on eval.batch_size."""
    scores, per_task, first = {}, {}, None
    for name, kwargs in cfg.decoding.items():
        n = samples_per_task(kwargs, cfg.num_return_sequences)
        sampled = is_sampling(kwargs)
        _, per_task[name], answers = task_accuracy(
            model, tokenizer, examples, cfg.max_new_tokens, SAMPLING_PROMPTS if sampled else cfg.batch_size,
            num_return_sequences=n, seed=cfg.seed if sampled else None, **kwargs)
        correct = [[a.strip() == ex["answer"].strip() for a in answers[i * n : (i + 1) * n]]
                   for i, ex in enumerate(examples)]
        scores[name] = score_strategy(correct, cfg.pass_k)
        scores[name]["task_accuracy_ci95"] = wilson_interval(scores[name]["task_accuracy"], len(examples))  # tasks are the independent items
        first = answers[::n] if first is None else first
    return scores, per_task[next(iter(cfg.decoding))], first


@torch.no_grad()
def preference_accuracy(model, tokenizer, pairs: list[dict], batch_size: int) -> float:
    """Share of pairs where log p(chosen | prompt) > log p(rejected | prompt), summed over response tokens."""
    wins = 0
    for i in range(0, len(pairs), batch_size):
        part = pairs[i : i + batch_size]
        rows = [encode_chat(tokenizer, p["prompt"] + [{"role": "assistant", "content": p[side]}])
                for side in ("chosen", "rejected") for p in part]
        b = to_device(pad_batch(rows, tokenizer.pad_token_id), model_device(model))
        logps = sequence_logps(model, b["input_ids"], b["labels"], b["attention_mask"])
        wins += int((logps[: len(part)] > logps[len(part) :]).sum())
    return wins / len(pairs)


def samples(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, seed: int,
            strategies: dict[str, dict]) -> list[dict]:
    """Each prompt answered once by each decoding strategy (eval.decoding), each reseeded (reproducible).

    One batch per strategy (all prompts together): the draws depend on eval.num_samples, not batch_size.
    """
    shown = [{"prompt": prompt[-1]["content"]} for prompt in prompts]
    for name, kw in strategies.items():
        for row, answer in zip(shown, generate(model, tokenizer, prompts, max_new_tokens, max(1, len(prompts)),
                                               seed=seed, **kw)):
            row[name] = answer
    return shown


Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> list[float]:
    """95% Wilson score interval of a proportion measured on n items (sound near 0 and 1, unlike p +- z*se)."""
    if n <= 0:
        return [0.0, 1.0]
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def difference_interval(a: float, b: float, n_a: int, n_b: int, z: float = Z95) -> tuple[float, float]:
    """b - a and the half-width of its 95% interval (normal approximation of two independent proportions)."""
    se = math.sqrt(a * (1 - a) / max(n_a, 1) + b * (1 - b) / max(n_b, 1))
    return b - a, z * se
