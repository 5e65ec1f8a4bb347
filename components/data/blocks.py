"""Data blocks written for this project, as datatrove steps: exact dedup, PII scrubbing, split."""
from __future__ import annotations

import hashlib
import re
import unicodedata

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.writers import JsonlWriter

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PII_PATTERNS = {
    "EMAIL": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    # four dotted octets, not part of a longer dotted number (version strings have 2-3 parts)
    "IP": re.compile(rf"(?<![\d.]){_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?![\d.]*\d)"),
    # +CC then 2-4 groups, or a North American (NNN) NNN-NNNN / NNN-NNN-NNNN; never a date's 4-2-2
    "PHONE": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,3}"
        r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"
    ),
}


def normalise(text: str) -> str:
    """Case, accents, punctuation and whitespace folded: what exact dedup compares."""
    text = unicodedata.normalize("NFKD", text.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


class ExactDedupFilter(BaseFilter):
    """Keeps the first document of each normalised text. Needs one task (a global view)."""

    name = "exact_dedup"

    def __init__(self, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.seen: set[bytes] = set()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        digest = hashlib.sha1(normalise(doc.text).encode()).digest()
        if digest in self.seen:
            return False, "exact_duplicate"
        self.seen.add(digest)
        return True


class PIIScrubber(BaseFormatter):
    """Replaces emails, IPv4 addresses and phone numbers with typed placeholders, counted per type."""

    name = "pii"

    def format(self, text: str) -> str:
        for kind, pattern in PII_PATTERNS.items():
            text, n = pattern.subn(f"<{kind}>", text)
            if n:
                self.stat_update(f"pii_{kind.lower()}", value=n)
        return text


def is_validation(doc_id: str, fraction: float) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


class TrainValidationSplit(PipelineStep):
    """Writes each document to train/ or validation/ by a hash of its id: stable whatever the order."""

    name = "split"
    type = "💽 - WRITER"

    def __init__(self, output_folder: str, fraction: float):
        super().__init__()
        self.output_folder, self.fraction = output_folder, fraction

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with JsonlWriter(f"{self.output_folder}/train") as train, JsonlWriter(f"{self.output_folder}/validation") as val:
            for doc in data:
                doc.metadata.pop("file_path", None)  # datatrove's staging path: would tie outputs to the build dir
                held_out = is_validation(doc.id, self.fraction)
                (val if held_out else train).write(doc, rank)
                self.stat_update("validation" if held_out else "train")
                yield doc
