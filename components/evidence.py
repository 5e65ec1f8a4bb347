"""What a stage says when it has nothing left to work with: the top reasons its records were left out.

A quarantine or rejection reason names its record and its values ("a.jsonl:3: field 'messages' must be a
list of turns, got 'hi'"); counted as they are, every reason would be its own. reason_kind() keeps what
the reasons of one kind share, so a failure can say "40 quarantined (31 ..., 9 ...)".
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

TOP_REASONS = 3
_DETAIL = re.compile(r" \(|, got |; ")  # where a reason's details (values, lengths, field lists) start


def reason_kind(reason: str, where: str | None = None) -> str:
    """The kind of a reason: without its record's location, its details, and with numbers as N."""
    text = str(reason).strip()
    if where and text.startswith(f"{where}: "):
        text = text[len(where) + 2:]
    text = _DETAIL.split(text, maxsplit=1)[0]
    return re.sub(r"\d+", "N", text).strip() or "no reason given"


def count_kinds(rows: Iterable[dict]) -> Counter:
    """{kind: count} of quarantine rows ({"reason", optional "where"})."""
    return Counter(reason_kind(row.get("reason", ""), row.get("where")) for row in rows)


def top_reasons(counts: Counter | dict, n: int = TOP_REASONS) -> str:
    """'31 wrong role order, 9 empty assistant turn, 2 more': the n commonest kinds, then the rest."""
    ranked = sorted(((count, kind) for kind, count in counts.items() if count), key=lambda ck: (-ck[0], ck[1]))
    shown = [f"{count} {kind}" for count, kind in ranked[:n]]
    rest = sum(count for count, _ in ranked[n:])
    return ", ".join(shown + ([f"{rest} more"] if rest else [])) or "none"


def corpus_drops(metrics: dict) -> Counter:
    """{"<block>: <reason>" or "quarantined: <code>": documents} from a data artifact's metrics: what
    kept its documents out of the corpus."""
    drops: Counter = Counter()
    reasons_of = metrics.get("drop_reasons", {})
    for key, n in metrics.items():
        block = key.removesuffix("_dropped")
        if key.endswith("_dropped") and isinstance(n, int) and n:
            reasons = reasons_of.get(block, {})
            drops.update({f"{block}: {reason}": count for reason, count in reasons.items()})
            if n > sum(reasons.values()):  # a block that drops without naming a reason
                drops[block] += n - sum(reasons.values())
    for key, n in metrics.items():
        if key.startswith("quarantined_") and isinstance(n, int):
            drops[f"quarantined: {key.removeprefix('quarantined_')}"] += n
    return drops


def empty_corpus(data_dir: Path, train_docs: int, validation_docs: int) -> str:
    """Why a stage cannot use a data artifact with no train or no validation document: the artifact, what
    dropped its documents (its manifest's metrics) and where they are."""
    manifest = Path(data_dir) / "manifest.json"
    try:
        metrics = json.loads(manifest.read_text()).get("metrics", {})
    except (OSError, ValueError):
        metrics = {}
    missing = "no document at all" if not train_docs else "no validation document"
    hint = ("relax the blocks that dropped them (data.<block>=false, data.<block>_rules), or give more sources"
            if not train_docs else "give more documents, or raise data.validation_fraction")
    return (f"the data artifact {data_dir} has {train_docs} train and {validation_docs} validation documents "
            f"({missing}): of {metrics.get('docs_in', '?')} documents read, {top_reasons(corpus_drops(metrics))}; "
            f"{hint}; see {Path(data_dir) / 'report.md'} and its rejected/, quarantine.jsonl")
