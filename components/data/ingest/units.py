"""The first pass's work list: which part of which source each task reads, and the dispatch to the
format readers.

A unit is one file of a source (the embedded corpus is one file; a Hugging Face dataset is one
unit), or one stripe of it: when there are fewer files than tasks, each file is split into
ceil(tasks / files) stripes by record position (record i goes to stripe i % stripes), so one big
file does not serialise the pass. Units are numbered in source order, then file order (sorted), then
stripe, and unit u is read by task u % tasks; every record's document or issue comes from exactly one
unit. Only the file listing is done here, in the driver: reading, validation and HTML extraction run
in the tasks (components/data/ingest/step.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from components.data.ingest.fields import RowFields
from components.data.ingest.records import WHOLE, Outcome, Stripe, owned
from components.data.sources import SourceSpec, expand_files


@dataclass(frozen=True)
class Unit:
    source_index: int  # position in data.sources: the per-source counters' key
    spec: SourceSpec
    path: str | None  # the file; None for a Hugging Face dataset (the spec names it)
    file_index: int  # position of the file among its source's files (sorted)
    label: str  # the file as documents and issues name it
    stripe: Stripe = WHOLE

    @property
    def web(self) -> bool:
        return self.spec.type in ("warc", "html")


def _source_files(spec: SourceSpec, embedded_file: Path, resolved: tuple[Path, ...] | None) -> list[tuple[str | None, str]]:
    """(path, label) of each unit of a source, before striping."""
    if spec.type == "embedded":
        return [(str(embedded_file), "embedded")]
    if spec.type == "hf":
        return [(None, spec.path)]
    return [(str(p), str(p)) for p in (expand_files(spec) if resolved is None else resolved)]


def plan_units(specs: list[SourceSpec], tasks: int, embedded_file: Path,
               resolved: list[tuple[Path, ...]] | None = None) -> list[Unit]:
    """The units of every source; `resolved`: each source's files as the plan globbed them
    (DataConfig.resolved_sources), so the stage reads the very files its key hashed."""
    resolved = resolved or [None] * len(specs)
    files = [(i, spec, f, path, label) for i, (spec, found) in enumerate(zip(specs, resolved))
             for f, (path, label) in enumerate(_source_files(spec, embedded_file, found))]
    stripes = max(1, math.ceil(tasks / max(1, len(files))))
    return [Unit(i, spec, path, f, label, Stripe(s, stripes)) for i, spec, f, path, label in files for s in range(stripes)]


def units_of_task(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    return units[rank::world_size]


def read_unit(unit: Unit, text_key: str, max_bytes: int, extract=None) -> Iterator[Outcome]:
    """Every outcome of one unit; `extract` (a web.HtmlExtractor, entered) for warc and html units."""
    from components.data.ingest.hf import read_hf
    from components.data.ingest.jsonl import read_jsonl
    from components.data.ingest.parquet import read_parquet
    from components.data.ingest.text import read_text
    from components.data.ingest.web import read_html, read_warc

    spec, stripe = unit.spec, unit.stripe
    key = RowFields(spec.text_key or text_key, spec.id_key, spec.metadata_keys)
    path = Path(unit.path) if unit.path is not None else None
    if spec.type == "embedded":
        outcomes = read_jsonl(path, "text", max_bytes, "embedded", unit.label, stripe)
    elif spec.type == "jsonl":
        outcomes = read_jsonl(path, key, max_bytes, spec.name, unit.label, stripe)
    elif spec.type == "parquet":
        outcomes = read_parquet(path, key, max_bytes, spec.name, unit.label, stripe)
    elif spec.type == "text":  # a whole file has no position (stripe 0); the other modes' documents do
        read = spec.mode != "file" or stripe.index == 0
        outcomes = read_text(path, spec.name, max_bytes, unit.label, spec.mode, spec.chunk_chars, stripe) if read else iter(())
    elif spec.type == "warc":
        outcomes = read_warc(path, spec.name, max_bytes, unit.label, extract, stripe)
    elif spec.type == "html":
        outcomes = iter([read_html(path, spec.name, max_bytes, unit.label, extract)]) if stripe.index == 0 else iter(())
    elif spec.type == "hf":
        outcomes = read_hf(spec, key, max_bytes, stripe)
    else:
        raise ValueError(f"{spec.key}.type={spec.type!r}: no reader for this type")
    yield from owned(outcomes, stripe)


def read_source(spec: SourceSpec, text_key: str, max_line_bytes: int, embedded_file: Path) -> Iterator[Outcome]:
    """Every outcome of one source, file by file in sorted order, in one process (tests, tools)."""
    from components.data.ingest.web import HtmlExtractor

    units = plan_units([spec], 1, embedded_file)
    if spec.type in ("warc", "html"):
        with HtmlExtractor() as extract:
            for unit in units:
                yield from read_unit(unit, text_key, max_line_bytes, extract)
    else:
        for unit in units:
            yield from read_unit(unit, text_key, max_line_bytes)
