"""Counts per block, precision/recall against the planted ground truth, and the data report."""
from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Iterator

from components.data.pii import PII_TYPES
from components.evidence import corpus_drops, top_reasons
from components.data.pipelines import COUNTED_BLOCKS, DROPPING_BLOCKS, rejected_dir

QUALITY_BLOCKS = DROPPING_BLOCKS[:DROPPING_BLOCKS.index("exact_dedup")]
NEAR_DUP_TARGET_JACCARD = 0.8  # pairs at least this similar must be removed; below is a grey zone


def read_docs(folder: Path) -> Iterator[dict]:
    """The documents of a folder of .jsonl.gz files, one at a time (never the whole folder in memory)."""
    for path in sorted(Path(folder).glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def _stat_total(value) -> int:
    return int(value.get("total", 0)) if isinstance(value, dict) else int(value)


def _stat_files(work: Path, passes: str = "*") -> list[Path]:
    return sorted((work / "logs").glob(f"{passes}/stats/*.json"))  # per task: written by every executor


def pass_stats(work: Path, passes: str = "*") -> Counter:
    """Every counter of the passes matching `passes`, summed over steps and tasks."""
    counts: Counter = Counter()
    for stats_file in _stat_files(work, passes):
        for step in json.loads(stats_file.read_text()):
            for key, value in step.get("stats", {}).items():
                counts[key] += _stat_total(value)
    return counts


def _block_stats(work: Path) -> Iterator[tuple[str, dict]]:
    """(block, its step's stats) per task: the step before the Tally counting what leaves the block."""
    for stats_file in _stat_files(work):
        steps = json.loads(stats_file.read_text())
        for before, step in zip(steps, steps[1:]):
            for block in DROPPING_BLOCKS:
                if f"{block}_docs" in step.get("stats", {}):
                    yield block, before.get("stats", {})


def _dropped(work: Path) -> dict[str, int]:
    """Documents each block dropped, from the block's own `dropped` counter (what reached
    rejected/<NN>_<block>/, without reading it back)."""
    dropped = {block: 0 for block in DROPPING_BLOCKS}
    for block, stats in _block_stats(work):
        dropped[block] += _stat_total(stats.get("dropped", 0))
    return dropped


def _drop_reasons(work: Path) -> dict[str, dict[str, int]]:
    """{block: {reason: documents}} for the blocks that dropped any (datatrove's `dropped_<reason>`
    counters: the reason each rejected document carries as metadata.filter_reason)."""
    reasons: dict[str, Counter] = {}
    for block, stats in _block_stats(work):
        for key, value in stats.items():
            if key.startswith("dropped_") and _stat_total(value):
                reasons.setdefault(block, Counter())[key.removeprefix("dropped_")] += _stat_total(value)
    return {block: dict(counts.most_common()) for block, counts in reasons.items()}


def _pii_counts(stats: Counter) -> dict[str, int]:
    return {f"pii_{k.lower()}": stats.get(f"pii_{k.lower()}", 0) for k in PII_TYPES}


def _block_flow(stats: Counter) -> dict[str, int]:
    """Documents and bytes into and out of each block that ran (the Tally after each one)."""
    flow, previous = {}, "input"
    for block in COUNTED_BLOCKS:
        if f"{block}_docs" not in stats:
            continue
        for unit in ("docs", "bytes"):
            flow[f"{block}_{unit}_in"] = stats[f"{previous}_{unit}"]
            flow[f"{block}_{unit}_out"] = stats[f"{block}_{unit}"]
        previous = block
    return flow


def _cluster_stats(work: Path) -> dict:
    path = work / "remove" / "cluster_stats.json"
    return {f"minhash_{k}": v for k, v in json.loads(path.read_text()).items()} if path.is_file() else {}


def _share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def _near_dup_measures(truth: dict, dropped: dict[str, list[str]], kept: set[str]) -> dict:
    """Recall on planted pairs that reached MinHash (neither member dropped by an earlier block),
    for pairs with Jaccard >= 0.8 (the target) and per planted level; precision: MinHash removals
    that belong to a planted duplicate pair (any level >= 0.5) among all its removals."""
    earlier = {i for block in DROPPING_BLOCKS[:-1] for i in dropped[block]}
    pairs = [p for p in truth.get("near_dup_pairs", []) if p["dup"] not in earlier and p["src"] not in earlier]
    caught = {p["dup"]: not (p["dup"] in kept and p["src"] in kept) for p in pairs}
    target = [p for p in pairs if p["jaccard"] >= NEAR_DUP_TARGET_JACCARD]
    m = {"near_dup_pairs_target": len(target),
         "near_dup_recall": _share(sum(caught[p["dup"]] for p in target), len(target))}
    for level in sorted({p["target"] for p in pairs}, reverse=True):
        at = [p for p in pairs if p["target"] == level]
        m[f"near_dup_caught_at_{level}"] = _share(sum(caught[p["dup"]] for p in at), len(at))
    planted = {i for p in truth.get("near_dup_pairs", []) for i in (p["dup"], p["src"])}
    planted |= set(truth["exact_dup"]) | set(truth["exact_dup"].values())
    removed = dropped["minhash"]
    m["near_dup_precision"] = _share(sum(i in planted for i in removed), len(removed))
    return m


def _quality_measures(truth: dict, dropped: dict[str, list[str]], kept: set[str]) -> dict:
    """Recall: planted junk removed by any quality block, and shop listings (junk planted for FineWeb's
    short-line rule) removed by FineWeb; precision per block: its drops that are planted junk (prose
    dropped is a false positive, as the corpus is built from prose paragraphs)."""
    listings = set(truth.get("listings", []))
    junk = set(truth["junk"]) | listings
    all_drops = [i for b in QUALITY_BLOCKS for i in dropped[b]]
    m = {"quality_recall": _share(len(junk & set(all_drops)), len(junk))}
    if listings:
        m["fineweb_recall"] = _share(sum(i in listings for i in dropped["fineweb"]), len(listings))
    m["quality_precision"] = _share(sum(i in junk for i in all_drops), len(all_drops))
    for block in QUALITY_BLOCKS:
        if dropped[block]:
            m[f"{block}_precision"] = _share(sum(i in junk for i in dropped[block]), len(dropped[block]))
    return m


def _exact_dup_measures(truth: dict, dropped: dict[str, list[str]], kept: set[str]) -> dict:
    earlier = {i for block in QUALITY_BLOCKS for i in dropped[block]}
    pairs = {dup: src for dup, src in truth["exact_dup"].items() if dup not in earlier and src not in earlier}
    planted = set(truth["exact_dup"]) | set(truth["exact_dup"].values())
    removed = dropped["exact_dedup"]
    return {"exact_dup_recall": _share(sum(not (d in kept and s in kept) for d, s in pairs.items()), len(pairs)),
            "exact_dup_precision": _share(sum(i in planted for i in removed), len(removed))}


def _per_source(specs: list, stats: Counter) -> dict:
    """Per source: read, quarantined, skipped, taken by the mix, and kept after the filters (the reader's
    and the split's counters)."""
    names = ("docs_in", "bytes_in", "quarantined", "skipped", "docs_taken", "bytes_taken", "docs_out", "bytes_out")
    return {spec.name: {"type": spec.type, "weight": spec.weight, **{n: stats[f"source_{i}_{n}"] for n in names},
                        **_blocks_unable(spec.name, stats)}
            for i, spec in enumerate(specs)}


def _blocks_unable(source: str, stats: Counter) -> dict:
    """Documents of a source a block could not judge (kept): the url blocklist's, without a url."""
    n = stats.get(f"no_url_in:{source}", 0)
    return {"url_blocklist_no_url": n} if n else {}


def _issue_counts(stats: Counter) -> dict:
    quarantined = {k: n for k, n in stats.items() if k.startswith("quarantined_")}
    skipped = {k: n for k, n in stats.items() if k.startswith("skipped_")}
    return {"quarantined": sum(quarantined.values()), **dict(sorted(quarantined.items())),
            "skipped": sum(skipped.values()),  # records that are no document (WARC requests, images)
            **dict(sorted(skipped.items()))}


def measure(cfg, out_dir: Path, work: Path, specs: list) -> dict:
    """The stage's metrics from the passes' stats; only the planted ground truth (the embedded corpus,
    taken whole) streams the output and the rejected documents back, keeping ids and the texts it checks."""
    stats = pass_stats(work)
    metrics: dict = {
        "docs_in": stats["input_docs"],
        "docs_out": stats["train"] + stats["validation"],
        "train_docs": stats["train"],
        "validation_docs": stats["validation"],
        "train_bytes": stats["train_bytes"],
        **_issue_counts(stats),
        **{f"{block}_dropped": n for block, n in _dropped(work).items()},
        "drop_reasons": _drop_reasons(work),
        **_block_flow(stats),
        **_cluster_stats(work),
        "url_blocklist_no_url": stats.get("no_url", 0),
        # changed, not dropped: lines C4 removed (its line rules), documents PII scrubbing edited
        "c4_lines_removed": sum(v for k, v in stats.items() if k.startswith("line-filter-")),
        "pii_docs_changed": stats.get("pii_docs_changed", 0),
        **_pii_counts(stats),
        "sources": _per_source(specs, stats),
    }
    truth_file = out_dir / "ground_truth.json"
    if truth_file.is_file():
        metrics.update(_truth_measures(cfg, out_dir, json.loads(truth_file.read_text()), metrics["quarantined"]))
    return metrics


def _truth_measures(cfg, out_dir: Path, truth: dict, quarantined: int) -> dict:
    checked = {p["id"] for p in truth["pii"]} | {a["id"] for a in truth.get("look_alikes", [])}
    kept_ids: set[str] = set()
    texts: dict[str, str] = {}  # only the documents whose planted values are checked
    for split in ("train", "validation"):
        for d in read_docs(out_dir / split):
            kept_ids.add(d["id"])
            if d["id"] in checked:
                texts[d["id"]] = d["text"]
    dropped = {block: [d["id"] for d in read_docs(out_dir / "rejected" / rejected_dir(block))] for block in DROPPING_BLOCKS}
    prose = set(truth["prose"])
    m = {"prose_kept_frac": round(len(prose & kept_ids) / max(1, len(prose)), 4),
         "junk_removed_frac": round(sum(j not in kept_ids for j in truth["junk"]) / max(1, len(truth["junk"])), 4)}
    for part in (_quality_measures, _exact_dup_measures, _near_dup_measures):
        m.update({k: v for k, v in part(truth, dropped, kept_ids).items() if v is not None})
    surviving = [p for p in truth["pii"] if p["id"] in kept_ids]
    m["pii_recall"] = round(sum(p["value"] not in texts[p["id"]] for p in surviving) / max(1, len(surviving)), 4)
    for kind in PII_TYPES:  # per type: the value is gone from the kept document
        of_kind = [p for p in surviving if p["kind"] == kind]
        if of_kind:
            m[f"pii_recall_{kind.lower()}"] = round(sum(p["value"] not in texts[p["id"]] for p in of_kind) / len(of_kind), 4)
    alikes = [a for a in truth.get("look_alikes", []) if a["id"] in kept_ids]
    if alikes:  # versions, dates, order ids, ISBNs...: must survive the scrubber
        m["pii_look_alikes_altered_frac"] = round(sum(a["value"] not in texts[a["id"]] for a in alikes) / len(alikes), 4)
    if truth.get("passkey"):  # planted good data (eval's passkey skill): the filters should keep it
        m["passkey_kept_frac"] = round(sum(p["id"] in kept_ids for p in truth["passkey"]) / len(truth["passkey"]), 4)
    if truth.get("recall"):  # planted good data too: the copy skill retrieval needs
        m["recall_kept_frac"] = round(sum(i in kept_ids for i in truth["recall"]) / len(truth["recall"]), 4)
    if cfg.sources == ["embedded"]:
        m["quarantine_recall"] = round(quarantined / max(1, truth["malformed_lines"]), 4)
    return m


def plot_blocks(m: dict, path: Path) -> bool:
    """Bar chart of the documents left after each block that ran (the first bar: documents in)."""
    blocks = [b for b in COUNTED_BLOCKS if b + "_docs_out" in m]
    if not blocks:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["input", *blocks]
    docs = [m[blocks[0] + "_docs_in"], *(m[b + "_docs_out"] for b in blocks)]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.5))
    bars = ax.bar(names, docs, color=["#888888", *["#3b75af"] * len(blocks)])
    ax.bar_label(bars, fontsize=8)
    ax.set_ylabel("documents kept")
    ax.set_title("Documents kept after each block")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(out_dir: Path, m: dict) -> None:
    lines = ["# Data report", "", f"{m['docs_in']} documents in, {m['docs_out']} out "
             f"({m['train_docs']} train, {m['validation_docs']} validation); {m['quarantined']} input records quarantined "
             f"(see quarantine.jsonl), {m.get('skipped', 0)} skipped as no document.", "",
             "| block | docs in | docs out | bytes in | bytes out | dropped (rejected/) |", "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {m[b + '_docs_in']} | {m[b + '_docs_out']} | {m[b + '_bytes_in']} | {m[b + '_bytes_out']} "
              f"| {m.get(b + '_dropped', 0)} |" for b in COUNTED_BLOCKS if b + "_docs_in" in m]
    if m["docs_out"] == 0:  # a valid artifact all the same: what dropped everything, and where it is
        lines += ["", f"**No document survived.** Top reasons: {top_reasons(corpus_drops(m))}; every dropped "
                  "document is in rejected/, every quarantined record in quarantine.jsonl."]
    if m.get("drop_reasons"):
        lines += ["", "| block | reason | dropped |", "|---|---|---|"]
        lines += [f"| {block} | {reason} | {n} |" for block, reasons in m["drop_reasons"].items() for reason, n in reasons.items()]
    if plot_blocks(m, out_dir / "docs_per_block.png"):
        lines += ["", "![documents kept after each block](docs_per_block.png)"]
    lines += ["", f"Changed, not dropped: {m['c4_lines_removed']} lines removed by C4 line rules (javascript, policy, short lines...); "
              f"{m['pii_docs_changed']} documents with PII replaced."]
    if "minhash_clusters" in m:
        sizes = ", ".join(f"{size}: {n}" for size, n in m["minhash_cluster_sizes"].items()) or "none"
        lines += ["", f"MinHash: {m['minhash_clusters']} clusters (members per cluster: {sizes}; largest "
                  f"{m['minhash_cluster_size_max']}), {m['minhash_removed']} documents removed, {m['minhash_guard_kept']} "
                  "kept by the cluster guard (under data.minhash_guard_jaccard to every kept member)."]
    lines += ["", "| source | type | weight | docs read | quarantined | skipped | docs taken | bytes taken | docs out | bytes out |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {c['type']} | {c['weight'] if c['weight'] is not None else '-'} | {c['docs_in']} | {c['quarantined']} "
              f"| {c['skipped']} | {c['docs_taken']} | {c['bytes_taken']} | {c['docs_out']} | {c['bytes_out']} |"
              for name, c in m.get("sources", {}).items()]
    unjudged = [f"{c['url_blocklist_no_url']} of {name}" for name, c in m.get("sources", {}).items() if c.get("url_blocklist_no_url")]
    if unjudged:
        lines += ["", f"Not judged by data.url_blocklist (no url; kept): {', '.join(unjudged)} documents."]
    lines += ["", "| PII type | replaced |", "|---|---|"]
    lines += [f"| {kind} | {m.get('pii_' + kind.lower(), 0)} |" for kind in PII_TYPES]
    measured = [k for k in ("prose_kept_frac", "junk_removed_frac", "quality_recall", "quality_precision", "fineweb_recall",
                            *[f"{b}_precision" for b in QUALITY_BLOCKS], "exact_dup_recall", "exact_dup_precision",
                            "near_dup_pairs_target", "near_dup_recall", "near_dup_precision",
                            *sorted((k for k in m if k.startswith("near_dup_caught_at_")), reverse=True), "pii_recall", *[f"pii_recall_{t.lower()}" for t in PII_TYPES],
                            "pii_look_alikes_altered_frac", "quarantine_recall") if k in m]
    if measured:
        lines += ["", "Against the planted ground truth (ground_truth.json):", "", "| measure | value |", "|---|---|"]
        lines += [f"| {k} | {m[k]} |" for k in measured]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
