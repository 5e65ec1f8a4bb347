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
# tokens a word (the default vocabulary), 75 words and the key sentences are ~240 of the default 256
# tokens; Gopher quality needs >= 50 words in all)
FILLER_WORDS = (30, 75)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def random_key(rng: random.Random) -> str:
    return str(rng.randint(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS - 1))


def answered(continuation: str, expected: str) -> bool:
    """Exact match: the continuation starts with the key as the tokenizer writes it after the
    question (`expected`), and no further digit follows it."""
    return continuation.startswith(expected) and not continuation[len(expected) : len(expected) + 1].isdigit()


def filler_span(prose: str, n_words: int, rng: random.Random) -> list[str]:
    """Whole sentences of `prose`, from a random one on, as many as fit in n_words words (a first
    sentence longer than that is cut to n_words)."""
    sentences = [s for s in _SENTENCE_END.split(" ".join(prose.split())) if s]
    start = rng.randrange(max(1, len(sentences) - 3))
    out, words = [], 0
    for sentence in sentences[start:]:
        if words + len(sentence.split()) > n_words:
            break
        out.append(sentence)
        words += len(sentence.split())
    return out or [" ".join(sentences[start].split()[:n_words]).rstrip(".,;:") + "."]


def planted_document(prose: str, rng: random.Random) -> tuple[str, str, float]:
    """(text, key, depth): filler sentences from `prose` with the key sentence after a random share
    of them (depth 0: first, 1: last), then the question answered. Paragraphs, as prose documents
    have them, so the data stage's line rules read it like the rest of the corpus."""
    sentences = filler_span(prose, rng.randint(*FILLER_WORDS), rng)
    key = random_key(rng)
    at = rng.randint(0, len(sentences))
    before, after = " ".join(sentences[:at]), " ".join(sentences[at:])
    parts = [p for p in (before, KEY_SENTENCE.format(key=key), after) if p]
    text = "\n\n".join(parts) + "\n\n" + f"{QUESTION} {key}."
    return text, key, at / max(1, len(sentences))
