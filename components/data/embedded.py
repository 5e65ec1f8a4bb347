"""The embedded default corpus: real English prose shipped with Python, plus planted contamination.

Prose comes from `pydoc_data.topics` (the language reference's topics) and the
prose-heavy docstrings of standard-library modules (read with `ast`, never imported).
Into it we plant exact and near duplicates, PII and junk, and keep the ground truth
aside, so every run measures each block's precision and recall. Deterministic.
"""
from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
from pathlib import Path

WORDS_PER_DOC = (120, 400)
_PROSE_WORD = re.compile(r"^[A-Za-z][a-z]*[.,;:]?$")
FIRST_NAMES = "alice bob carol dmitri elena farid grace hiro ines jamal kofi lena".split()
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "uni.example.edu"]
JUNK = [
    "Home | About | Contact | Blog | Login | Sign up\n" * 8,
    "BUY NOW!!! CLICK HERE!!! BEST PRICES!!!\n" * 30,
    "Subscribe to our newsletter.",
    "%$#@!& *** ### @@@ !!! $$$ %%% ^^^ &&& *** ((( ))) ### @@@ " * 10,
    "Cookie policy. Accept all cookies. Cookie settings. Privacy policy. Terms of use.\n" * 6,
    "page 1 page 2 page 3 page 4 page 5 next previous first last " * 12,
    "lorem ipsum " * 60,
    "Click to expand.",
]


def _prose_ratio(text: str) -> float:
    words = text.split()
    return sum(bool(_PROSE_WORD.match(w)) for w in words) / max(1, len(words))


_TOKEN = re.compile(r"\w+|[^\w\s]")


def as_prose(paragraph: str) -> str | None:
    """The paragraph reflowed onto one line if it is prose, else None. Prose: sentences,
    not code, grammar or tables: most tokens hold letters (Gopher quality's test, here
    per paragraph, so documents are built from paragraphs it would keep)."""
    text = " ".join(line.strip() for line in paragraph.strip().split("\n")).removeprefix("* ")
    if len(text.split()) < 8 or ">>>" in text or "::=" in text:
        return None
    tokens = _TOKEN.findall(text)
    return text if sum(any(c.isalpha() for c in t) for t in tokens) / max(1, len(tokens)) >= 0.75 else None


def _chunks(texts: list[str]) -> list[str]:
    """Prose paragraphs of all texts, in order, grouped into documents of WORDS_PER_DOC words."""
    docs, current, words, seen = [], [], 0, set()
    for text in texts:
        for para in re.split(r"\n\s*\n", text):
            para = as_prose(para)
            if para is None or para in seen:  # docstrings repeat inherited paragraphs
                continue
            seen.add(para)
            current.append(para)
            words += len(para.split())
            if words >= WORDS_PER_DOC[1]:
                docs.append("\n\n".join(current))
                current, words = [], 0
    if words >= WORDS_PER_DOC[0]:
        docs.append("\n\n".join(current))
    return docs


def prose_documents() -> list[str]:
    """Real English prose paragraphs from the interpreter's own documentation."""
    import pydoc_data.topics

    texts = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if any(part in {"test", "tests", "idle_test", "site-packages"} for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        module_docs = []  # a module's docstrings, together: one text, chunked below
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 25:
                    module_docs.append(doc)
        texts.append("\n\n".join(module_docs))
    return _chunks(texts)


def _near_copy(text: str, rng: random.Random, edit_rate: float) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * edit_rate))):
        words[i] = rng.choice(["the", "a", "this", "that", "which", "data", "value", "object"])
    return " ".join(words)


def _pii(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["EMAIL", "IP", "PHONE"])
    if kind == "EMAIL":
        value = f"{rng.choice(FIRST_NAMES)}.{rng.choice(FIRST_NAMES)}{rng.randint(1, 99)}@{rng.choice(DOMAINS)}"
        sentence = f"For questions, write to {value} and mention the topic."
    elif kind == "IP":
        value = f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        sentence = f"The service was reached from {value} during the test."
    else:
        value = rng.choice([
            f"+1 {rng.randint(200, 989)} {rng.randint(200, 999)} {rng.randint(1000, 9999)}",
            f"({rng.randint(200, 989)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
            f"+44 20 {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
            f"{rng.randint(200, 989)}-{rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        ])
        sentence = f"Call the maintainer on {value} if the build fails."
    return kind, value, sentence


def build(out_file: Path, max_documents: int | None, seed: int) -> dict:
    """Write the corpus as jsonl and return its ground truth."""
    rng = random.Random(seed)
    prose = prose_documents()
    if max_documents is not None:
        prose = prose[:max_documents]
    docs = [{"id": f"prose-{i:05d}", "text": t} for i, t in enumerate(prose)]
    truth: dict = {"prose": [d["id"] for d in docs], "exact_dup": {}, "near_dup": {}, "pii": [], "junk": [],
                   "malformed_lines": 3}
    n = len(docs)
    for i, src in enumerate(rng.sample(docs[:n], max(1, n // 20))):
        truth["exact_dup"][f"exactdup-{i:05d}"] = src["id"]
        docs.append({"id": f"exactdup-{i:05d}", "text": src["text"]})
    for i, src in enumerate(rng.sample(docs[:n], max(1, n // 20))):
        truth["near_dup"][f"neardup-{i:05d}"] = src["id"]
        docs.append({"id": f"neardup-{i:05d}", "text": _near_copy(src["text"], rng, rng.uniform(0.01, 0.04))})
    for src in rng.sample(docs[:n], max(3, n // 10)):
        kind, value, sentence = _pii(rng)
        paragraphs = src["text"].split("\n\n")
        paragraphs.insert(rng.randrange(len(paragraphs) + 1), sentence)
        src["text"] = "\n\n".join(paragraphs)
        truth["pii"].append({"id": src["id"], "kind": kind, "value": value})
    for i in range(max(len(JUNK), n // 20)):
        docs.append({"id": f"junk-{i:05d}", "text": JUNK[i % len(JUNK)]})
        truth["junk"].append(f"junk-{i:05d}")
    rng.shuffle(docs)
    lines = [json.dumps(d) for d in docs]
    # malformed input, as real crawls have it: must be quarantined with file, line and reason
    for bad in ('{"id": "broken", "text": "unterminated', json.dumps({"id": "no-text"}), json.dumps({"id": "empty", "text": ""})):
        lines.insert(rng.randrange(len(lines)), bad)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("\n".join(lines) + "\n")
    return truth
