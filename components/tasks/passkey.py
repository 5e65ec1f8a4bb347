"""Passkey retrieval (Mohtashami & Jaggi 2023; the position-interpolation paper's test): a number
stated once inside filler text, asked for at the end. One format, shared by the documents planted
in the embedded pretraining corpus (components/data/embedded.py) and eval's prompts
(components/eval/passkey.py), so a model that learnt the skill on the first is tested on the second.
"""
from __future__ import annotations

import random
import re

KEY_DIGITS = 5
KEY_SENTENCE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
# planted documents: words of filler prose (a planted document must fit the pretrain context: at ~2.5
# tokens a word (the default vocabulary), 65 words and the key sentences are ~210 (at most ~260) of the default 256
# tokens; Gopher quality needs >= 50 words in all, its repetition rule ~45 of filler beside the key's
# repeated 5-gram)
FILLER_WORDS = (45, 65)
_SENTENCE_END = re.compile(r"[.!?]\s")


def random_key(rng: random.Random) -> str:
    return str(rng.randint(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS - 1))


def answered(continuation: str, expected: str) -> bool:
    """Exact match: the continuation starts with the key as the tokenizer writes it after the
    question (`expected`), and no further digit follows it."""
    return continuation.startswith(expected) and not continuation[len(expected) : len(expected) + 1].isdigit()


def filler_words(prose: str, n_words: int, rng: random.Random) -> list[str]:
    """n_words consecutive words of `prose` from the start of a random sentence (fewer if it is short)."""
    words = prose.split()
    starts = [0] + [i + 1 for i, w in enumerate(words[:-1]) if _SENTENCE_END.search(w + " ")]
    begin = rng.choice([i for i in starts if i <= max(0, len(words) - n_words)] or [0])
    return words[begin : begin + n_words]


def planted_document(prose: str, rng: random.Random) -> tuple[str, str, float]:
    """(text, key, depth): filler words from `prose` with the key sentence after a random share of
    them (depth 0: first, 1: last), then the question answered; one paragraph, laid out as eval's
    prompts are (the key sentence between two words of filler)."""
    words = filler_words(prose, rng.randint(*FILLER_WORDS), rng)
    key = random_key(rng)
    at = rng.randint(0, len(words))
    text = " ".join([*words[:at], KEY_SENTENCE.format(key=key), *words[at:], QUESTION, f"{key}."])
    return text, key, at / max(1, len(words))


# Recall documents: a dense copy signal (induction), the skill retrieval needs. A list of labelled
# keys, then the same labels asked again in another order, each answered with its key: every
# answer is a copy of five digits from up to ~250 tokens back, cued by the same two words before
# it ("... red door is"), as eval's answer is cued by "The pass key is". Statement and answer differ
# in the words around "<label> is <key>", so no 5 words repeat (Gopher's repetition rule counts
# "." as a word), and the paragraph ends in a full stop (FineWeb's line punctuation rule).
RECALL_HEADER = "Each door has its own pass key, and the list below gives them all."
RECALL_COLORS = "red blue green black white grey brown gold pink orange".split()
RECALL_THINGS = "door gate box safe room desk lock case shed van".split()
RECALL_PAIRS = (5, 7)  # labelled keys per document
RECALL_FILLER = (0, 6)  # words of filler prose before each statement and after each answer


def recall_document(prose: str, rng: random.Random) -> tuple[str, list[str]]:
    """(text, keys): labelled keys stated between short spans of `prose`, then asked again in a
    shuffled order, each answered. One paragraph, ~150-250 tokens at the default vocabulary."""
    n = rng.randint(*RECALL_PAIRS)
    labels = rng.sample([f"{c} {t}" for c in RECALL_COLORS for t in RECALL_THINGS], n)
    keys = [random_key(rng) for _ in labels]
    filler = filler_words(prose, 2 * n * RECALL_FILLER[1] + 20, rng)
    parts, at = [RECALL_HEADER], 0

    def take(k: int) -> list[str]:
        nonlocal at
        out = filler[at : at + k]
        at += len(out)
        return out

    for label, key in zip(labels, keys):
        parts += [*take(rng.randint(*RECALL_FILLER)), f"Key of the {label} is {key}."]
    parts += [*take(rng.randint(8, 20)), "Now the same list again."]
    for i in rng.sample(range(n), n):
        parts += [f"So {labels[i]} is {keys[i]} again.", *take(rng.randint(*RECALL_FILLER))]
    return " ".join([*parts, "That is the whole list."]), keys

