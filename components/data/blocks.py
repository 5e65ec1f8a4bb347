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

from components.data.pii import scrub

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
    """Typed placeholders (<EMAIL>, <IP>, <PHONE>, <CREDIT_CARD>, <SSN>, <IBAN>, <SECRET>), counted per type."""

    name = "pii"

    def __init__(self, keep_private_ips: bool = False):
        super().__init__()
        self.keep_private_ips = keep_private_ips

    def format(self, text: str) -> str:
        text, counts = scrub(text, self.keep_private_ips)
        for kind, n in counts.items():
            self.stat_update(f"pii_{kind.lower()}", value=n)
        if counts:
            self.stat_update("pii_docs_changed")
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
