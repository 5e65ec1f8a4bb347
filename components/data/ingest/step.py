"""The first pass's reader: every source read inside datatrove's tasks, with the quarantine as a sink.

SourceReader reads the units (components/data/ingest/units.py) of its task: valid documents go down
the pipeline, bad records to quarantine/<task>.jsonl with file, line and reason (or, with data.strict,
an InputError naming them), records that are no document are counted as skipped. Counters per source
and per reason are datatrove stats (`source_<i>_docs_in`, `quarantined_<code>`...), summed by the
report like every block's. A weighted mix tells each unit how often to take each document
(`copies_folder`, planned by components/data/mix.py from SourceCounter's counting pass): copies after
the first get the id `<id>#<copy>`, so ids stay unique.
"""
from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Iterator

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from components.data.ingest.records import WHERE_KEYS, InputError, position, text_bytes
from components.data.ingest.units import Unit, read_unit, units_of_task


def job_file(job: int) -> str:
    return f"{job:05d}.json"


def task_outcomes(units: list[Unit], rank: int, world_size: int, text_key: str,
                  max_bytes: int, max_html_bytes: int | None = None) -> Iterator[tuple[int, Unit, dict | None, dict | None]]:
    """(unit number, unit, document, issue) for every record of this task's units; one extractor
    process for all the web units of the task."""
    jobs = units_of_task(list(enumerate(units)), rank, world_size)
    with contextlib.ExitStack() as stack:
        extract = None
        if any(unit.web for _, unit in jobs):
            from components.data.ingest.web import HtmlExtractor

            extract = stack.enter_context(HtmlExtractor(**({"max_html_bytes": max_html_bytes} if max_html_bytes else {})))
        for job, unit in jobs:
            for doc, bad in read_unit(unit, text_key, max_bytes, extract):
                yield job, unit, doc, bad


def strict_error(bad: dict, unit: Unit) -> InputError:
    where = "".join(f", {k} {bad[k]}" for k in WHERE_KEYS if bad.get(k) is not None)
    return InputError(f"data.strict: {bad['file']}{where}: {bad['reason']} (source {unit.spec.name!r}; "
                      "set data.strict=false to quarantine such records instead)")


class SourceReader(PipelineStep):
    name = "🗂 Sources"
    type = "📖 - READER"

    def __init__(self, units: list[Unit], text_key: str, max_bytes: int, strict: bool, quarantine_folder: str,
                 copies_folder: str | None = None, max_html_bytes: int | None = None):
        super().__init__()
        self.units, self.text_key, self.max_bytes, self.strict = units, text_key, max_bytes, strict
        self.max_html_bytes = max_html_bytes  # raw pages (null: web.MAX_HTML_BYTES)
        self.quarantine_folder, self.copies_folder = quarantine_folder, copies_folder

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.data import Document
        from datatrove.io import get_datafolder

        if data:
            yield from data
        counts: Counter = Counter()
        copies: dict[int, list[int]] = {}
        taken: Counter = Counter()  # documents read so far per unit: the index into its copies
        with contextlib.ExitStack() as stack:
            quarantine = None
            for job, unit, doc, bad in task_outcomes(self.units, rank, world_size, self.text_key, self.max_bytes,
                                                     self.max_html_bytes):
                source = f"source_{unit.source_index}"
                if bad is not None:
                    if quarantine is None and not bad.get("skip"):
                        quarantine = stack.enter_context(get_datafolder(self.quarantine_folder).open(f"{rank:05d}.jsonl", "wt"))
                    self._issue(bad, unit, quarantine, counts)
                    continue
                size = text_bytes(doc["text"])
                counts[f"{source}_docs_in"] += 1
                counts[f"{source}_bytes_in"] += size
                for copy in range(self._copies(job, taken[job], copies)):
                    counts[f"{source}_docs_taken"] += 1
                    counts[f"{source}_bytes_taken"] += size
                    yield Document(text=doc["text"], id=f"{doc['id']}#{copy}" if copy else doc["id"],
                                   metadata=dict(doc["metadata"]))
                taken[job] += 1
        self._check_plan(copies, taken)
        for key, value in counts.items():  # once per task: no per-document overhead
            self.stat_update(key, value=value)

    def _issue(self, bad: dict, unit: Unit, quarantine, counts: Counter) -> None:
        code = bad["reason"].split(" ")[0]
        if bad.get("skip"):
            counts[f"skipped_{code}"] += 1
            counts[f"source_{unit.source_index}_skipped"] += 1
            return
        if self.strict:
            raise strict_error(bad, unit)
        order = [unit.source_index, unit.file_index, -1 if position(bad) is None else position(bad)]
        quarantine.write(json.dumps({**bad, "source": unit.spec.name, "_order": order}) + "\n")
        counts[f"quarantined_{code}"] += 1
        counts[f"source_{unit.source_index}_quarantined"] += 1

    def _copies(self, job: int, index: int, copies: dict[int, list[int]]) -> int:
        if self.copies_folder is None:
            return 1
        if job not in copies:
            from datatrove.io import get_datafolder

            with get_datafolder(self.copies_folder).open(job_file(job), "rt") as handle:
                copies[job] = json.load(handle)
        plan = copies[job]
        if index >= len(plan):
            raise RuntimeError(f"data: unit {job} ({self.units[job].label}) read more documents than its counting "
                               f"pass ({len(plan)}): the source changed during the run?")
        return plan[index]

    def _check_plan(self, copies: dict[int, list[int]], taken: Counter) -> None:
        for job, plan in copies.items():
            if taken[job] != len(plan):
                raise RuntimeError(f"data: unit {job} ({self.units[job].label}) read {taken[job]} documents, its "
                                   f"counting pass {len(plan)}: the source changed during the run?")


class SourceCounter(PipelineStep):
    """The counting pass of a weighted mix: per unit, [position, text bytes] of each valid document,
    to counts_folder/<unit>.json (a unit with no valid document writes []). Strict errors raise here."""

    name = "🔢 Source counts"
    type = "📊 - STATS"

    def __init__(self, units: list[Unit], text_key: str, max_bytes: int, strict: bool, counts_folder: str,
                 max_html_bytes: int | None = None):
        super().__init__()
        self.units, self.text_key, self.max_bytes, self.strict = units, text_key, max_bytes, strict
        self.counts_folder, self.max_html_bytes = counts_folder, max_html_bytes

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        from datatrove.io import get_datafolder

        found: dict[int, list[list[int]]] = {job: [] for job, _ in units_of_task(list(enumerate(self.units)), rank, world_size)}
        for job, unit, doc, bad in task_outcomes(self.units, rank, world_size, self.text_key, self.max_bytes,
                                                 self.max_html_bytes):
            if bad is not None:
                if self.strict and not bad.get("skip"):
                    raise strict_error(bad, unit)
                continue
            found[job].append([position(doc["metadata"]) or 0, text_bytes(doc["text"])])
        folder = get_datafolder(self.counts_folder)
        for job, rows in found.items():
            with folder.open(job_file(job), "wt") as handle:
                json.dump(rows, handle)
        if data:
            yield from data
