"""The embedded benchmark: small generated sets in the field layouts of the standard ones.

Each set is written as the real dataset is laid out when people download it (LAMBADA's
`text`; ARC's `question`, `choices.{text,label}`, `answerKey`; GSM8K's `question` and an
`answer` ending in `#### <number>`), so lm-evaluation-harness scores it with its own task
definition, the same path a local copy of the real set takes. Drawn from a seeded RNG like
components/tasks: the same seed and size give the same items.
"""
from __future__ import annotations

import random

from components.tasks.generators import CITIES, NAMES, TASKS, WORDS, split_of

LABELS = "ABCD"


def _recall_text(rng: random.Random) -> str:
    """Facts, then one restated: its last word can only be recalled from the context (LAMBADA's point)."""
    people = rng.sample(NAMES, 3)
    if rng.random() < 0.5:
        things = rng.sample(CITIES, 3)
        facts = [f"{p} lives in {t}." for p, t in zip(people, things)]
        asked = rng.randrange(3)
        end = f"Later that year {people[asked]} was still living in {things[asked]}"
    else:
        things = rng.sample(WORDS, 3)
        facts = [f"{p} keeps a {t} on the table." for p, t in zip(people, things)]
        asked = rng.randrange(3)
        end = f"When {people[asked]} came home, the thing on the table was a {things[asked]}"
    return " ".join(facts) + " " + end  # no final period: LAMBADA's texts end with the target word


def cloze_items(n: int, seed: int) -> list[dict]:
    rng = random.Random(f"{seed}:benchmark:cloze")
    return [{"text": _recall_text(rng)} for _ in range(n)]


def choice_items(n: int, seed: int) -> list[dict]:
    """Four choices: the right answer, the task's plausible wrong one, and two other answers of the task.
    Questions of the tasks' held-out split only: sft trains on the other split."""
    rng = random.Random(f"{seed}:benchmark:choice")
    names = sorted(TASKS)
    items = []
    while len(items) < n:
        name = names[len(items) % len(names)]
        question, answer, wrong = TASKS[name](rng)
        if split_of(question) != "heldout":
            continue
        options = [answer, wrong]
        for _ in range(100):  # distractors: answers of other draws of the same task
            if len(options) == 4:
                break
            other = TASKS[name](rng)[1]
            if other not in options:
                options.append(other)
        if len(options) < 4:
            continue
        rng.shuffle(options)
        items.append({"id": f"{name}-{len(items)}", "question": question,
                      "choices": {"text": options, "label": list(LABELS)},
                      "answerKey": LABELS[options.index(answer)]})
    return items


def arithmetic_items(n: int, seed: int) -> list[dict]:
    """Two-step word problems; the answer shows the working and ends in `#### <number>` as GSM8K's do."""
    rng = random.Random(f"{seed}:benchmark:arithmetic")
    items = []
    for _ in range(n):
        person, thing = rng.choice(NAMES), rng.choice(WORDS)
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        c = rng.randint(1, a + b - 1)
        question = (f"{person} has {a} {thing}s and gets {b} more, then gives {c} away. "
                    f"How many {thing}s does {person} have now?")
        answer = f"{person} has {a} + {b} = {a + b} {thing}s, then {a + b} - {c} = {a + b - c}.\n#### {a + b - c}"
        items.append({"question": question, "answer": answer})
    return items


GENERATORS = {"cloze": cloze_items, "choice": choice_items, "generation": arithmetic_items}
