"""Data stage options (mirrored by conf/data/default.yaml). Light: no datatrove import here."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import check, check_choice, log_only
from components.data.sources import SourceSpec, expand_files, parse_sources


@dataclass(kw_only=True)
class DataConfig:
    sources: list[Any] = field(default_factory=lambda: ["embedded"])  # paths, globs, "embedded" or {type, path, weight, ...}: see components/data/sources.py
    text_key: str = "text"  # field holding the text in jsonl / parquet / hf sources (a source's own text_key wins)
    strict: bool = False  # a malformed input line is an error naming file, line and field, instead of quarantined
    mix_by: str = "documents"  # what source weights apportion: documents or bytes (of text)
    mix_total: int | None = None  # size of a weighted mix in mix_by units (null: the largest mix needing no repetition)
    mix_repeat: bool = False  # let a source repeat documents to fill its share of mix_total
    max_documents: int | None = None  # cap on embedded prose documents (null: all)
    seed: int = 0  # planting of the embedded corpus's contamination, and the weighted mix's sampling
    validation_fraction: float = 0.08  # share of documents held out, chosen by a hash of the id
    gopher_repetition: bool = True  # Gopher repetition filter (duplicate lines, paragraphs, n-grams)
    gopher_quality: bool = True  # Gopher quality filter (length, word shapes, stop words, symbols)
    c4: bool = True  # C4 line and document rules (no bad-words list: it needs a download)
    exact_dedup: bool = True  # drop documents whose normalised text was seen before
    minhash: bool = True  # MinHash near-dedup, one document kept per cluster
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    pii: bool = True  # replace emails, IPs, phones, cards, SSNs, IBANs, secrets with <EMAIL>, <IP>, ...
    pii_keep_private_ips: bool = False  # leave 10/8, 192.168/16, 127/8, fc00::/7 ... untouched
    max_line_bytes: int = 1_000_000  # longer input lines (and longer texts, HTML pages) are quarantined
    tasks: int = 2  # datatrove tasks for the quality filters (sets the output sharding)
    workers: int = log_only(2)  # processes running those tasks (output does not depend on it)

    def __post_init__(self) -> None:
        specs = self.source_specs()
        weighted = specs[0].weight is not None
        check_choice("data.mix_by", self.mix_by, ("documents", "bytes"))
        check(self.mix_total is None or (weighted and self.mix_total > 0), "data.mix_total", self.mix_total,
              "must be null, or > 0 with weighted sources")
        check(not self.mix_repeat or self.mix_total is not None, "data.mix_repeat", self.mix_repeat,
              "repetition only fills a data.mix_total; set one, or data.mix_repeat=false")
        check(not (self.mix_repeat and (self.exact_dedup or self.minhash)), "data.mix_repeat", self.mix_repeat,
              "repeated documents would be removed again by data.exact_dedup / data.minhash; turn those off or repetition off")
        check(0 < self.validation_fraction < 0.5, "data.validation_fraction", self.validation_fraction,
              "must be in (0, 0.5)")
        check(self.max_documents is None or self.max_documents >= 10, "data.max_documents", self.max_documents,
              "must be null or >= 10")
        for name in ("minhash_ngrams", "minhash_buckets", "minhash_hashes_per_bucket", "tasks", "workers", "max_line_bytes"):
            check(getattr(self, name) > 0, f"data.{name}", getattr(self, name), "must be > 0")

    def source_specs(self) -> list[SourceSpec]:
        return parse_sources(self.sources)

    def source_files(self) -> list[Path]:
        """Every local file the sources read: their content is part of the cache key."""
        return [path for spec in self.source_specs() for path in expand_files(spec)]
