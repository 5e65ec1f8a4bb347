"""What an rl answer is worth: the task's checker (1/0, exact match, as eval scores) or the reward stage's model
(a scalar per conversation), as one batch scorer score(answers, examples) -> [float], which GRPO and PPO both
take; and the held-out figures both report (greedy task accuracy, and the reward model's mean score)."""
from __future__ import annotations

from components.chat.generate import generate
from components.reward.model import score_conversations


def checker_reward(answer: str, example: dict) -> float:
    """The task's check, as eval scores it: exact match of the answer, whitespace stripped."""
    return float(answer.strip() == example["answer"].strip())


def per_answer(reward):
    """score(answers, examples) from reward(answer, example), one answer at a time."""
    def score(answers: list[str], examples: list[dict]) -> list[float]:
        return [reward(a, ex) for a, ex in zip(answers, examples)]

    return score


checker_score = per_answer(checker_reward)


def reward_model_score(reward_model, tokenizer, batch_size: int = 64):
    """score(answers, examples): the reward model's score of each (prompt, answer) conversation."""
    def score(answers: list[str], examples: list[dict]) -> list[float]:
        conversations = [ex["messages"][:-1] + [{"role": "assistant", "content": a}] for a, ex in zip(answers, examples)]
        return score_conversations(reward_model, tokenizer, conversations, batch_size)

    return score


def heldout_figures(policy, tokenizer, examples: list[dict], cfg, reward_model) -> dict:
    """Greedy answers to held-out prompts: task accuracy, and the reward model's mean score when there is one."""
    answers = generate(policy, tokenizer, [ex["messages"][:-1] for ex in examples], cfg.max_new_tokens, batch_size=64)
    out = {"val_task_accuracy": sum(checker_score(answers, examples)) / len(examples)}
    if reward_model is not None:
        out["val_reward_model_score"] = sum(reward_model_score(reward_model, tokenizer)(answers, examples)) / len(examples)
    return out
