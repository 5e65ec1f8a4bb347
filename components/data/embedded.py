"""The embedded default corpus: real English prose shipped with Python, plus planted contamination.

Prose comes from `pydoc_data.topics` (the language reference's topics) and the
prose-heavy docstrings of standard-library modules (read with `ast`, never imported).
Into it we plant exact and near duplicates, PII and junk, and keep the ground truth
aside, so every run measures each block's precision and recall. Passkey documents
(components/tasks/passkey.py) are planted as good data: they teach the base model the retrieval
that eval's passkey test measures. Deterministic.
"""
from __future__ import annotations

import ast
import json
import random
import re
import sysconfig
from pathlib import Path

from components.tasks.passkey import planted_document, recall_document

WORDS_PER_DOC = (120, 400)
_PROSE_WORD = re.compile(r"^[A-Za-z][a-z]*[.,;:]?$")
FIRST_NAMES = "alice bob carol dmitri elena farid grace hiro ines jamal kofi lena".split()
DOMAINS = ["example.com", "mail.example.org", "corp.example.net", "uni.example.edu"]
PII_KINDS = ("EMAIL", "IP", "PHONE", "CREDIT_CARD", "SSN", "IBAN", "SECRET")
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


_LISTING = [w.split() for w in ("red blue green black white grey brown navy olive coral",
                                 "wool cotton linen silk denim leather fleece velvet",
                                 "hat scarf shirt jacket coat skirt sweater glove sock belt",
                                 "men women kids teens winter summer travel work hiking school")]


def _listing(rng: random.Random) -> str:
    """A shop listing: one line per product, short lines that end in a full stop. Passes Gopher and
    C4 (words, stop words, sentences) but not FineWeb's short-line rule: that block's planted junk."""
    colors, materials, items, audiences = _LISTING
    lines = [f"{rng.choice(colors).capitalize()} {rng.choice(materials)} {rng.choice(items)} for {rng.choice(audiences)}."
             for _ in range(rng.randint(25, 40))]
    return "Shop the new season and save with us today.\n" + "\n".join(lines)


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


# Neither share below teaches the default 3M model to retrieve in its 320 steps (README, "Passkey retrieval":
# 0.00 at 1x with 3%, 12% and 12% + 24% recall documents), so the default plants a small share and no recall
# documents: the corpus and its figures stay close to the unplanted one while the test stays in place.
RECALL_DOCS_PER_PASSKEY = 0  # recall documents (a dense copy signal) per passkey document
PASSKEY_DOCS_PER_PROSE = 4  # one passkey document per 4 prose ones: ~3% of the corpus's words

NEAR_DUP_JACCARD = (0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)  # planted levels: >= 0.8 must go, below is a grey zone
_FILLERS = ["the", "a", "this", "that", "which", "data", "value", "object"]


def _quick_jaccard(a: list[str], b: list[str], n: int = 5) -> float:
    sa, sb = ({tuple(w[i : i + n]) for i in range(len(w) - n + 1)} for w in (a, b))
    return len(sa & sb) / max(1, len(sa | sb))


def _near_copy(text: str, rng: random.Random, target: float) -> str:
    """A copy with as many random word substitutions as keep its 5-gram Jaccard >= target
    (a quick estimate; the ground truth records the exact value on MinHash's shingles)."""
    words = text.split(" ")
    lower = [w.lower() for w in words]
    order = rng.sample(range(len(words)), len(words))
    fillers = [rng.choice(_FILLERS) for _ in order]

    def edited(k: int) -> list[str]:
        out = list(words)
        for i, f in zip(order[:k], fillers[:k]):
            out[i] = f
        return out

    lo, hi = 1, len(words)  # largest k with Jaccard >= target: binary search
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _quick_jaccard(lower, [w.lower() for w in edited(mid)]) >= target:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(edited(lo))


def _luhn_complete(body: str) -> str:
    """body + the check digit that makes it pass the Luhn test."""
    total = 0
    for i, d in enumerate(reversed(body)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return body + str((10 - total % 10) % 10)


def _iban(rng: random.Random) -> str:
    country, length = rng.choice([("DE", 22), ("GB", 22), ("FR", 27), ("NL", 18), ("ES", 24)])
    if country == "GB":
        bban = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4))
        bban += "".join(str(rng.randint(0, 9)) for _ in range(length - 8))
    else:
        bban = "".join(str(rng.randint(0, 9)) for _ in range(length - 4))
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(digits) % 97
    raw = f"{country}{check:02d}{bban}"
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4)) if rng.random() < 0.5 else raw


def _pii(rng: random.Random, kind: str) -> tuple[str, str]:
    """(value, sentence holding it): each PII type in the kind of sentence it appears in."""
    r = rng.randint
    if kind == "EMAIL":
        value = f"{rng.choice(FIRST_NAMES)}.{rng.choice(FIRST_NAMES)}{r(1, 99)}@{rng.choice(DOMAINS)}"
        return value, f"For questions, write to {value} and mention the topic."
    if kind == "IP":
        value = rng.choice([f"{r(11, 99)}.{r(0, 255)}.{r(0, 255)}.{r(1, 254)}",
                            f"2a01:4f8:{r(4096, 65535):x}:{r(4096, 65535):x}::{r(1, 255):x}"])
        return value, f"The service was reached from {value} during the test."
    if kind == "PHONE":
        value = rng.choice([f"+1 {r(201, 989)} {r(201, 999)} {r(1000, 9999)}", f"({r(201, 989)}) {r(201, 999)}-{r(1000, 9999)}",
                            f"+44 20 {r(1000, 9999)} {r(1000, 9999)}", f"{r(201, 989)}-{r(201, 999)}-{r(1000, 9999)}",
                            f"+49 30 {r(100000, 999999)}", f"01 {r(10, 99)} {r(10, 99)} {r(10, 99)} {r(10, 99)}"])
        return value, f"Call the maintainer on {value} if the build fails."
    if kind == "CREDIT_CARD":
        prefix = rng.choice(["4", "52", "6011"])  # Visa, Mastercard, Discover
        digits = _luhn_complete(prefix + "".join(str(r(0, 9)) for _ in range(15 - len(prefix))))
        value = rng.choice([digits, " ".join(digits[i : i + 4] for i in range(0, 16, 4)),
                            "-".join(digits[i : i + 4] for i in range(0, 16, 4))])
        return value, f"The order was paid with card {value} last week."
    if kind == "SSN":
        value = f"{r(1, 665):03d}-{r(1, 99):02d}-{r(1, 9999):04d}"
        return value, f"The form listed the social security number {value} in error."
    if kind == "IBAN":
        value = _iban(rng)
        return value, f"Transfers go to the account {value} before the end of the month."
    alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    value = rng.choice(["AKIA" + "".join(rng.choice(alnum) for _ in range(16)),
                        "ghp_" + "".join(rng.choice(alnum + "abcdefghijklmnopqrstuvwxyz") for _ in range(36)),
                        "s3cr3t-" + "".join(rng.choice(alnum.lower()) for _ in range(12))])
    return value, f"The deployment script still contained api_key={value} in plain text."


def _look_alike(rng: random.Random) -> tuple[str, str]:
    """Numbers shaped like PII that a scrubber must leave alone: (value, sentence)."""
    r = rng.randint
    value, template = rng.choice([
        (f"{r(1, 3)}.{r(0, 12)}.{r(0, 30)}", "This behaviour changed in version {} of the library."),
        (f"20{r(10, 29)}-{r(1, 12):02d}-{r(1, 28):02d}", "The release was tagged on {} after review."),
        (f"20{r(10, 29)}-{r(1, 12):02d}-{r(1, 28):02d}T{r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}", "The log entry at {} shows the restart."),
        (f"{r(100000000, 999999999)}", "Refer to order number {} when you write."),
        (f"978-{r(0, 1)}-{r(100, 999)}-{r(10000, 99999)}-{r(0, 9)}", "The book has ISBN {} on its cover."),
        (f"{r(1990, 2010)}-{r(2011, 2024)}", "The project ran from {} with two teams."),
        (f"{r(10, 99)}:{r(10, 59)}:{r(10, 59)}", "The job finished at {} on the first day."),
    ])
    return value, template.format(value)


def _insert_sentence(doc: dict, sentence: str, rng: random.Random) -> None:
    paragraphs = doc["text"].split("\n\n")
    paragraphs.insert(rng.randrange(len(paragraphs) + 1), sentence)
    doc["text"] = "\n\n".join(paragraphs)


def _passkey_documents(prose: list[str], count: int, seed: int) -> list[dict]:
    """Passkey documents on spans of random prose documents; their own RNG, so planting them leaves
    the other contamination (and its ground truth) as it was."""
    rng = random.Random(f"{seed}:passkey")
    docs = []
    for i in range(count):
        text, key, depth = planted_document(rng.choice(prose), rng)
        docs.append({"id": f"passkey-{i:05d}", "text": text, "key": key, "depth": round(depth, 3)})
    for i in range(count * RECALL_DOCS_PER_PASSKEY):  # after the passkey ones: those stay as they were
        text, _ = recall_document(rng.choice(prose), rng)
        docs.append({"id": f"recall-{i:05d}", "text": text})
    return docs


def build(out_file: Path, max_documents: int | None, seed: int) -> dict:
    """Write the corpus as jsonl and return its ground truth. PII goes into the prose first, so
    the planted duplicates copy the text the dedup blocks will see."""
    from components.data.minhash_guard import jaccard, shingles

    rng = random.Random(seed)
    prose = prose_documents()
    if max_documents is not None:
        prose = prose[:max_documents]
    docs = [{"id": f"prose-{i:05d}", "text": t} for i, t in enumerate(prose)]
    truth: dict = {"prose": [d["id"] for d in docs], "exact_dup": {}, "near_dup": {}, "near_dup_pairs": [],
                   "pii": [], "look_alikes": [], "junk": [], "listings": [], "malformed_lines": 3}
    n = len(docs)
    passkey = _passkey_documents(prose, max(3, n // PASSKEY_DOCS_PER_PROSE), seed)  # from the prose before PII goes in
    truth["passkey"] = [{"id": d["id"], "key": d.pop("key"), "depth": d.pop("depth")} for d in passkey if "key" in d]
    truth["recall"] = [d["id"] for d in passkey if d["id"].startswith("recall-")]
    for i, src in enumerate(rng.sample(docs[:n], max(len(PII_KINDS), n // 5))):  # every type, in turn
        kind = PII_KINDS[i % len(PII_KINDS)]
        value, sentence = _pii(rng, kind)
        _insert_sentence(src, sentence, rng)
        truth["pii"].append({"id": src["id"], "kind": kind, "value": value})
    for src in rng.sample(docs[:n], max(7, n // 5)):
        value, sentence = _look_alike(rng)
        _insert_sentence(src, sentence, rng)
        truth["look_alikes"].append({"id": src["id"], "value": value})
    for i, src in enumerate(rng.sample(docs[:n], max(1, n // 20))):
        truth["exact_dup"][f"exactdup-{i:05d}"] = src["id"]
        docs.append({"id": f"exactdup-{i:05d}", "text": src["text"]})
    by_id = {d["id"]: d["text"] for d in docs}
    for i, src in enumerate(rng.sample(docs[:n], max(len(NEAR_DUP_JACCARD), n // 5))):  # every level, in turn
        target = NEAR_DUP_JACCARD[i % len(NEAR_DUP_JACCARD)]
        dup = {"id": f"neardup-{i:05d}", "text": _near_copy(src["text"], rng, target)}
        docs.append(dup)
        truth["near_dup"][dup["id"]] = src["id"]
        measured = jaccard(shingles(dup["text"], 5), shingles(by_id[src["id"]], 5))
        truth["near_dup_pairs"].append({"dup": dup["id"], "src": src["id"], "target": target,
                                        "jaccard": round(measured, 4)})
    for i in range(max(len(JUNK), n // 20)):
        docs.append({"id": f"junk-{i:05d}", "text": JUNK[i % len(JUNK)]})
        truth["junk"].append(f"junk-{i:05d}")
    for i in range(max(3, n // 40)):
        docs.append({"id": f"listing-{i:05d}", "text": _listing(rng)})
        truth["listings"].append(f"listing-{i:05d}")
    docs += passkey
    rng.shuffle(docs)
    lines = [json.dumps(d) for d in docs]
    # malformed input, as real crawls have it: must be quarantined with file, line and reason
    for bad in ('{"id": "broken", "text": "unterminated', json.dumps({"id": "no-text"}), json.dumps({"id": "empty", "text": ""})):
        lines.insert(rng.randrange(len(lines)), bad)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_text("\n".join(lines) + "\n")
    return truth
