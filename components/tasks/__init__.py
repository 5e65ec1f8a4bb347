"""Generated instruction tasks with checkable answers, and preference pairs built from them.

Every task draws a prompt, its correct answer and a plausible wrong answer from a
seeded RNG. A prompt belongs to the "train" or "heldout" split by a hash of its
text, so the two splits are disjoint whatever the seeds and sizes asked for.
"""
from __future__ import annotations

from components.tasks.generators import TASKS, split_of

SPLITS = ("train", "heldout")


def _draw(split: str, n: int, seed: int, salt: int):
    """Yield n (task, prompt, answer, wrong) tuples of one split, tasks round-robin."""
    import random

    if split not in SPLITS:
        raise ValueError(f"split={split!r}: choose one of {SPLITS}")
    rng = random.Random(f"{seed}:{salt}:{split}")
    names = sorted(TASKS)
    out = []
    i = 0
    while len(out) < n:
        name = names[i % len(names)]
        for _ in range(1000):  # rejection-sample a prompt of the wanted split
            prompt, answer, wrong = TASKS[name](rng)
            if split_of(prompt) == split:
                break
        else:
            raise RuntimeError(f"task {name!r} produced no {split} prompt in 1000 draws")
        out.append((name, prompt, answer, wrong))
        i += 1
    return out


def sft_examples(split: str, n: int, seed: int = 0) -> list[dict]:
    """n chat examples: {"messages": [user, assistant], "answer", "task"}."""
    return [
        {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ],
            "answer": answer,
            "task": name,
        }
        for name, prompt, answer, _ in _draw(split, n, seed, salt=1)
    ]


def preference_pairs(split: str, n: int, seed: int = 0) -> list[dict]:
    """n pairs: {"prompt": [user], "chosen": correct, "rejected": plausible but wrong, "task"}."""
    return [
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": answer,
            "rejected": wrong,
            "task": name,
        }
        for name, prompt, answer, wrong in _draw(split, n, seed, salt=2)
    ]
