"""Weighted mixing of sources: which documents of each source to take, and how often.

Weights apportion documents or bytes of text (`data.mix_by`) among the sources, on
the documents entering the filters. The mix's size T is `data.mix_total`, or when
null the largest mix no source must repeat for: min over sources of amount / share.
Source i then contributes T * share_i:
  documents: that many documents, a seeded sample without replacement;
  bytes: documents in a seeded random order until their text reaches the target
         (the last one may overshoot by less than one document).
A share larger than the source is an error unless `data.mix_repeat`: then the
source is taken whole as many times as fits and the rest sampled as above.
Without weights every document is taken once.

The sources are read inside the first datatrove pass, task by task (components/data/ingest/), so the
exact totals above need each source's valid documents counted first: a weighted mix runs a counting
pass (SourceCounter: position and text bytes of each valid document, per unit), `copies_per_unit`
plans from those counts in the driver, and the reading pass takes each document as often as planned.
Index i of a source is its i-th valid document in file order, then record order, as one reader would
see them: the same samples as when the driver read every source itself. Unweighted sources (the
default) need no counting pass.
"""
from __future__ import annotations

import random
from collections import Counter


def take_all(sizes: list[int]) -> Counter:
    return Counter(range(len(sizes)))


def plan_mix(sizes: dict[str, list[int]], weights: dict[str, float] | None, mix_by: str = "documents",
             total: int | None = None, repeat: bool = False, seed: int = 0) -> dict[str, Counter]:
    """sizes: per source, the text bytes of each valid document. Returns per source {index: copies}."""
    if not weights:
        return {name: take_all(s) for name, s in sizes.items()}
    amount = {name: float(len(s) if mix_by == "documents" else sum(s)) for name, s in sizes.items()}
    share = {name: w / sum(weights.values()) for name, w in weights.items()}
    for name, a in amount.items():
        if a == 0:
            raise ValueError(f"data.sources: source {name!r} has no valid document to mix (see quarantine.jsonl)")
    size = float(total) if total is not None else min(amount[n] / share[n] for n in sizes)
    plan = {}
    for name, doc_sizes in sizes.items():
        target = size * share[name]
        if target > amount[name] * (1 + 1e-9) and not repeat:
            raise ValueError(
                f"data.mix_total={total}: source {name!r} has {amount[name]:.0f} {mix_by} but its "
                f"{share[name]:.0%} share needs {target:.0f}; lower data.mix_total or set data.mix_repeat=true")
        target = target if repeat else min(target, amount[name])  # float error must not start a repeat
        rng = random.Random(f"{seed}:{name}")  # per source: adding a source leaves the others' samples alone
        take = _by_documents(len(doc_sizes), round(target), rng) if mix_by == "documents" else _by_bytes(doc_sizes, target, rng)
        plan[name] = take
    return plan


def _by_documents(n: int, k: int, rng: random.Random) -> Counter:
    whole, rest = divmod(k, n)
    take = Counter({i: whole for i in range(n)}) if whole else Counter()
    take.update(rng.sample(range(n), rest))
    return take


def _by_bytes(sizes: list[int], target: float, rng: random.Random) -> Counter:
    take: Counter = Counter()
    taken = 0
    while taken < target:
        order = list(range(len(sizes)))
        rng.shuffle(order)
        for i in order:
            if taken >= target:
                break
            take[i] += 1
            taken += sizes[i]
    return take


def copies_per_unit(units: list, counts: dict[int, list[list[int]]], weights: dict[str, float], mix_by: str,
                    total: int | None, repeat: bool, seed: int) -> dict[int, list[int]]:
    """units: the first pass's units; counts: per unit number, [position, bytes] of its valid documents.
    Returns per unit number the copies of each of its valid documents, in the order the unit reads them."""
    order: dict[str, list[tuple[int, int, int, int, int]]] = {}  # source -> (file, position, unit, k, bytes)
    for job, unit in enumerate(units):
        rows = order.setdefault(unit.spec.name, [])
        rows += [(unit.file_index, pos, job, k, size) for k, (pos, size) in enumerate(counts[job])]
    for rows in order.values():
        rows.sort()
    plan = plan_mix({name: [r[4] for r in rows] for name, rows in order.items()}, weights, mix_by, total, repeat, seed)
    copies = {job: [0] * len(counts[job]) for job in range(len(units))}
    for name, rows in order.items():
        for index, (_, _, job, k, _) in enumerate(rows):
            copies[job][k] = plan[name].get(index, 0)
    return copies
