"""Data stage options (mirrored by conf/data/default.yaml). Light: no datatrove import here."""
from __future__ import annotations

from dataclasses import dataclass, field

from components.config import check, log_only


@dataclass(kw_only=True)
class DataConfig:
    sources: list[str] = field(default_factory=lambda: ["embedded"])  # "embedded" and/or jsonl paths or globs
    text_key: str = "text"  # field holding the text in jsonl sources
    max_documents: int | None = None  # cap on embedded prose documents (null: all)
    seed: int = 0  # planting of the embedded corpus's contamination
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
    max_line_bytes: int = 1_000_000  # longer input lines are quarantined
    tasks: int = 2  # datatrove tasks for the quality filters (sets the output sharding)
    workers: int = log_only(2)  # processes running those tasks (output does not depend on it)

    def __post_init__(self) -> None:
        check(len(self.sources) > 0, "data.sources", self.sources, "name at least one source")
        check(0 < self.validation_fraction < 0.5, "data.validation_fraction", self.validation_fraction,
              "must be in (0, 0.5)")
        check(self.max_documents is None or self.max_documents >= 10, "data.max_documents", self.max_documents,
              "must be null or >= 10")
        for name in ("minhash_ngrams", "minhash_buckets", "minhash_hashes_per_bucket", "tasks", "workers", "max_line_bytes"):
            check(getattr(self, name) > 0, f"data.{name}", getattr(self, name), "must be > 0")
