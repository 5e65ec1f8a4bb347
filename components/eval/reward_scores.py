"""The reward model's view of the run: its own held-out pair accuracy (from its manifest), and the mean
reward it gives each model's answers to eval's held-out tasks (the first decoding strategy's, greedy by
default), beside the mean reward of the tasks' correct answers and of every wrong answer given."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from components.reward.model import score_conversations

log = logging.getLogger(__name__)
HELD_OUT = ("val_pair_accuracy", "val_reward_margin", "val_chosen_reward", "val_rejected_reward")


def reward_scores(reward_dir: Path | None, tasks: list[dict], answers: dict[str, list[str]], batch_size: int,
                  where: torch.device) -> dict:
    """{held-out metrics of the reward model, "mean_reward": {model: mean reward of its answers, "reference":
    the correct answers'}, "mean_reward_correct" / "mean_reward_wrong": over every model's answers}; {}: no
    reward model in the run."""
    if reward_dir is None:
        return {}
    model_dir = Path(reward_dir) / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).to(where).eval()
    prompts = [t["messages"][:-1] for t in tasks]

    def mean_reward(replies: list[str]) -> tuple[float, list[float]]:
        scores = score_conversations(model, tokenizer, [p + [{"role": "assistant", "content": r.strip()}]
                                                         for p, r in zip(prompts, replies)], batch_size)
        return sum(scores) / len(scores), scores

    metrics = json.loads((Path(reward_dir) / "manifest.json").read_text()).get("metrics", {})
    out: dict = {k: metrics[k] for k in HELD_OUT if k in metrics}
    out["val_pair_accuracy_by_group"] = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("val_pair_accuracy/")}
    out["mean_reward"], right, wrong = {}, [], []
    out["mean_reward"]["reference"], _ = mean_reward([t["answer"] for t in tasks])
    for name, replies in answers.items():
        out["mean_reward"][name], scores = mean_reward(replies)
        for task, reply, score in zip(tasks, replies, scores):
            (right if reply.strip() == task["answer"].strip() else wrong).append(score)
    out["mean_reward_correct"] = sum(right) / len(right) if right else None
    out["mean_reward_wrong"] = sum(wrong) / len(wrong) if wrong else None
    log.info("eval: reward model: %s", out)
    return out


def reward_lines(results: dict) -> list[str]:
    """The report's section on the reward model; none without one."""
    scores = results.get("reward_model") or {}
    if not scores:
        return []
    lines = ["## Reward model", "", f"Held-out pair accuracy {scores.get('val_pair_accuracy', float('nan')):.3f}, "
             f"mean margin {scores.get('val_reward_margin', float('nan')):.3f} (the reward stage's own held-out pairs). "
             "Mean reward of each model's answers to the held-out tasks (the first decoding strategy's):", "",
             "| answers | mean reward |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in scores["mean_reward"].items()]
    for side in ("correct", "wrong"):
        if scores.get(f"mean_reward_{side}") is not None:
            lines.append(f"| every {side} answer | {scores[f'mean_reward_{side}']:.3f} |")
    by_group = scores.get("val_pair_accuracy_by_group") or {}
    if by_group:
        lines += ["", "Held-out pair accuracy by source (or by task, for generated pairs):", "",
                  "| group | pair accuracy |", "|---|---|", *(f"| {g} | {a:.3f} |" for g, a in by_group.items())]
    return lines + [""]
