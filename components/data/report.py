"""Counts per block, precision/recall against the planted ground truth, and the data report."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

from components.data.pii import PII_TYPES

BLOCK_DIRS = ["01_gopher_repetition", "02_gopher_quality", "03_c4", "04_exact_dedup", "05_minhash"]


def read_docs(folder: Path) -> list[dict]:
    docs = []
    for path in sorted(Path(folder).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            docs += [json.loads(line) for line in handle]
    return docs


def _stat_total(value) -> int:
    return int(value.get("total", 0)) if isinstance(value, dict) else int(value)


def _pii_counts(work: Path) -> dict[str, int]:
    counts: Counter = Counter()
    for stats_file in (work / "logs").glob("*/stats.json"):
        for step in json.loads(stats_file.read_text()):
            for key, value in step.get("stats", {}).items():
                if key.startswith("pii_"):
                    counts[key] += _stat_total(value)
    return {f"pii_{k.lower()}": counts.get(f"pii_{k.lower()}", 0) for k in PII_TYPES}


def _pair_recall(pairs: dict[str, str], kept: set[str]) -> float:
    """A planted duplicate pair is caught when at most one of its two documents survives."""
    return sum(not (dup in kept and src in kept) for dup, src in pairs.items()) / max(1, len(pairs))


def _per_source_out(per_source: dict, docs: list[dict]) -> dict:
    """Per source: read, quarantined, skipped, taken by the mix, and kept after the filters."""
    out = {name: {**counts, "docs_out": 0, "bytes_out": 0} for name, counts in per_source.items()}
    for d in docs:
        counts = out.get(d.get("metadata", {}).get("source"))
        if counts is not None:
            counts["docs_out"] += 1
            counts["bytes_out"] += len(d["text"].encode())
    return out


def measure(cfg, out_dir: Path, work: Path, n_in: int, issues: Counter, per_source: dict | None = None) -> dict:
    train, val = read_docs(out_dir / "train"), read_docs(out_dir / "validation")
    kept = {d["id"]: d["text"] for d in train + val}
    dropped = {name[3:]: read_docs(out_dir / "rejected" / name) for name in BLOCK_DIRS}
    quarantined = {k: n for k, n in issues.items() if k.startswith("quarantined_")}
    skipped = {k: n for k, n in issues.items() if k.startswith("skipped_")}
    metrics: dict = {
        "docs_in": n_in,
        "docs_out": len(train) + len(val),  # not len(kept): two sources may share an id
        "train_docs": len(train),
        "validation_docs": len(val),
        "train_bytes": sum(len(d["text"].encode()) for d in train),
        "quarantined": sum(quarantined.values()),
        **dict(sorted(quarantined.items())),
        "skipped": sum(skipped.values()),  # records that are no document (WARC requests, images)
        **dict(sorted(skipped.items())),
        **{f"{block}_dropped": len(docs) for block, docs in dropped.items()},
        **_pii_counts(work),
        "sources": _per_source_out(per_source or {}, train + val),
    }
    truth_file = out_dir / "ground_truth.json"
    if truth_file.is_file():
        truth = json.loads(truth_file.read_text())
        prose = set(truth["prose"])
        metrics["prose_kept_frac"] = round(len(prose & kept.keys()) / max(1, len(prose)), 4)
        metrics["junk_removed_frac"] = round(sum(j not in kept for j in truth["junk"]) / max(1, len(truth["junk"])), 4)
        metrics["exact_dup_recall"] = round(_pair_recall(truth["exact_dup"], set(kept)), 4)
        metrics["near_dup_recall"] = round(_pair_recall(truth["near_dup"], set(kept)), 4)
        planted = set(truth["near_dup"]) | set(truth["near_dup"].values()) | set(truth["exact_dup"]) | set(truth["exact_dup"].values())
        minhash_ids = [d["id"] for d in dropped["minhash"]]
        if minhash_ids:
            metrics["near_dup_precision"] = round(sum(i in planted for i in minhash_ids) / len(minhash_ids), 4)
        surviving = [p for p in truth["pii"] if p["id"] in kept]
        metrics["pii_recall"] = round(sum(p["value"] not in kept[p["id"]] for p in surviving) / max(1, len(surviving)), 4)
        for kind in PII_TYPES:  # per type: the value is gone from the kept document
            of_kind = [p for p in surviving if p["kind"] == kind]
            if of_kind:
                metrics[f"pii_recall_{kind.lower()}"] = round(sum(p["value"] not in kept[p["id"]] for p in of_kind) / len(of_kind), 4)
        alikes = [a for a in truth.get("look_alikes", []) if a["id"] in kept]
        if alikes:  # versions, dates, order ids, ISBNs...: must survive the scrubber
            metrics["pii_look_alikes_altered_frac"] = round(sum(a["value"] not in kept[a["id"]] for a in alikes) / len(alikes), 4)
        metrics["quarantine_recall"] = round(metrics["quarantined"] / max(1, truth["malformed_lines"]), 4) if cfg.sources == ["embedded"] else None
        if metrics["quarantine_recall"] is None:
            del metrics["quarantine_recall"]
    return metrics


def write_report(out_dir: Path, m: dict) -> None:
    lines = ["# Data report", "", f"{m['docs_in']} documents in, {m['docs_out']} out "
             f"({m['train_docs']} train, {m['validation_docs']} validation); {m['quarantined']} input records quarantined "
             f"(see quarantine.jsonl), {m.get('skipped', 0)} skipped as no document.", "", "| block | dropped |", "|---|---|"]
    lines += [f"| {name[3:]} | {m.get(name[3:] + '_dropped', 0)} |" for name in BLOCK_DIRS]
    lines += ["", "| source | type | weight | docs read | quarantined | skipped | docs taken | bytes taken | docs out | bytes out |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {c['type']} | {c['weight'] if c['weight'] is not None else '-'} | {c['docs_in']} | {c['quarantined']} "
              f"| {c['skipped']} | {c['docs_taken']} | {c['bytes_taken']} | {c['docs_out']} | {c['bytes_out']} |"
              for name, c in m.get("sources", {}).items()]
    lines += ["", "| PII type | replaced |", "|---|---|"]
    lines += [f"| {kind} | {m.get('pii_' + kind.lower(), 0)} |" for kind in PII_TYPES]
    measured = [k for k in ("prose_kept_frac", "junk_removed_frac", "exact_dup_recall", "near_dup_recall",
                            "near_dup_precision", "pii_recall", *[f"pii_recall_{t.lower()}" for t in PII_TYPES],
                            "pii_look_alikes_altered_frac", "quarantine_recall") if k in m]
    if measured:
        lines += ["", "Against the planted ground truth (ground_truth.json):", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {m[k]} |" for k in measured]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
