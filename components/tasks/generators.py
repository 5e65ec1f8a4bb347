"""One function per task: rng -> (prompt, correct answer, plausible wrong answer)."""
from __future__ import annotations

import hashlib
import random

HELDOUT_PERCENT = 15

WORDS = (
    "apple river stone cloud garden window candle forest silver bridge pencil "
    "orange rabbit castle ocean mirror ladder button violin meadow rocket tiger "
    "planet lemon anchor basket desert engine feather harbor island jacket kettle "
    "lantern marble needle pillow rainbow saddle tunnel wagon yellow zebra"
).split()
NAMES = "Anna Tom Maria Omar Lena Ravi Sofia Jack Mei Paul Nora Ivan".split()
CITIES = "Paris Rome Oslo Lima Cairo Tokyo Delhi Quito Dublin Vienna Madrid Seoul".split()


def split_of(prompt: str) -> str:
    """Which split a prompt belongs to: a hash, so splits never overlap."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def add(rng: random.Random):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    wrong = rng.choice([a + b + d for d in (-2, -1, 1, 2) if a + b + d >= 0])
    return f"What is {a} + {b}?", str(a + b), str(wrong)


def larger(rng: random.Random):
    a, b = rng.sample(range(0, 100), 2)
    return f"Which number is larger, {a} or {b}?", str(max(a, b)), str(min(a, b))


def sort_numbers(rng: random.Random):
    nums = rng.sample(range(10), 3)
    ordered = sorted(nums)
    wrong = ordered[:]
    i = rng.randrange(len(wrong) - 1)
    wrong[i], wrong[i + 1] = wrong[i + 1], wrong[i]
    fmt = lambda xs: " ".join(map(str, xs))  # noqa: E731
    return f"Sort these numbers from smallest to largest: {fmt(nums)}", fmt(ordered), fmt(wrong)


def reverse_words(rng: random.Random):
    words = rng.sample(WORDS, 3)
    wrong = [words[1], words[0], words[2]] if rng.random() < 0.5 else words
    return (
        f"Reverse the order of these words: {' '.join(words)}",
        " ".join(reversed(words)),
        " ".join(wrong),
    )


def last_word(rng: random.Random):
    words = rng.sample(WORDS, rng.randint(3, 5))
    return f"What is the last word in: {' '.join(words)}?", words[-1], words[0]


def count_words(rng: random.Random):
    words = rng.sample(WORDS, rng.randint(2, 7))
    n = len(words)
    return f"How many words are in this list: {' '.join(words)}?", str(n), str(n + rng.choice([-1, 1]))


def repeat_word(rng: random.Random):
    word, other = rng.sample(WORDS, 2)
    times = rng.randint(2, 3)
    wrong = " ".join([word] * (5 - times)) if rng.random() < 0.5 else " ".join([other] * times)
    return f"Repeat the word {word} {times} times.", " ".join([word] * times), wrong


def recall_city(rng: random.Random):
    people = rng.sample(NAMES, 2)
    cities = rng.sample(CITIES, 2)
    asked = rng.randrange(2)
    facts = " ".join(f"{p} lives in {c}." for p, c in zip(people, cities))
    return f"{facts} Where does {people[asked]} live?", cities[asked], cities[1 - asked]


TASKS = {
    f.__name__: f
    for f in (add, larger, sort_numbers, reverse_words, last_word, count_words, repeat_word, recall_city)
}
