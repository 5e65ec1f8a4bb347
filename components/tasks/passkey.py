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
