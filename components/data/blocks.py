"""Data blocks written for this project, as datatrove steps: exact dedup, PII scrubbing, split,
and the reader that hands each task the file its rank wrote in the previous pass."""
from __future__ import annotations

import hashlib
import re
import struct
import unicodedata
from collections import Counter
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

from components.data.pii import PHONE_REGIONS, PhoneRules, scrub


def normalise(text: str) -> str:
    """Case, accents, punctuation and whitespace folded: what exact dedup compares."""
    text = unicodedata.normalize("NFKD", text.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def text_digest(text: str) -> bytes:
    """What exact dedup compares: the sha1 of the normalised text (20 bytes)."""
    return hashlib.sha1(normalise(text).encode()).digest()


DIGEST_BYTES = 20


class ExactDedupFilter(BaseFilter):
    """Keeps the first document of each normalised text. Needs one task (a global view); the stage
    runs the same rule in three parallel-friendly parts (ExactDedupHashes, ExactDedupIndex,
    ExactDedupRemove)."""

    name = "exact_dedup"

    def __init__(self, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.seen: set[bytes] = set()

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        digest = text_digest(doc.text)
        if digest in self.seen:
            return False, "exact_duplicate"
        self.seen.add(digest)
        return True


class ExactDedupHashes(PipelineStep):
    """Exact dedup, part 1, in every task of the quality pass: the digest of each document leaving it,
    in order, to `<folder>/<rank>.hashes`. Documents pass through unchanged."""

    name = "exact_dedup_hashes"
    type = "🫂 - DEDUP"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = Path(folder)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{rank:05d}.hashes", "wb") as out:
            for doc in data:
                out.write(text_digest(doc.text))
                yield doc


class ExactDedupIndex(PipelineStep):
    """Exact dedup, part 2, one task (a global view): reads the digests of tasks 0, 1, ... in that order
    and lists, per task, the indices of documents whose normalised text came earlier
    (`<output>/<rank>.remove`, uint32). The first seen is kept: the document ExactDedupFilter keeps
    when it reads the tasks' output files in order."""

    name = "exact_dedup_index"
    type = "🫂 - DEDUP"

    def __init__(self, hashes_folder: str, output_folder: str, tasks: int):
        super().__init__()
        self.hashes_folder, self.output_folder, self.tasks = Path(hashes_folder), Path(output_folder), tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:  # a sink, like MinhashDedupCluster
        assert world_size == 1, "exact dedup needs a global view: run its index as one task"
        self.output_folder.mkdir(parents=True, exist_ok=True)
        seen: set[bytes] = set()
        with self.track_time():
            for task in range(self.tasks):
                path = self.hashes_folder / f"{task:05d}.hashes"
                digests = path.read_bytes() if path.is_file() else b""
                duplicates = []
                for index in range(len(digests) // DIGEST_BYTES):
                    digest = digests[index * DIGEST_BYTES:(index + 1) * DIGEST_BYTES]
                    if digest in seen:
                        duplicates.append(index)
                    else:
                        seen.add(digest)
                self.stat_update("exact_duplicates", value=len(duplicates))
                (self.output_folder / f"{task:06d}.remove").write_bytes(struct.pack(f"<{len(duplicates)}I", *duplicates))


class ExactDedupRemove(BaseFilter):
    """Exact dedup, part 3, in every task of the next pass: drops the documents ExactDedupIndex listed
    for this task (reason `exact_duplicate`, as ExactDedupFilter). Its input must be the task's own
    output of the pass that hashed (TaskFileReader), so that indices match."""

    name = "exact_dedup"

    def __init__(self, remove_folder: str, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.remove_folder = Path(remove_folder)
        self._remove: set[int] = set()
        self._index = -1

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        packed = (self.remove_folder / f"{rank:06d}.remove").read_bytes()
        self._remove, self._index = set(struct.unpack(f"<{len(packed) // 4}I", packed)), -1
        yield from super().run(data, rank, world_size)

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        self._index += 1
        return (False, "exact_duplicate") if self._index in self._remove else True


class SignaturesWithoutDuplicates(PipelineStep):
    """Exact dedup meets MinHash, one task: the quality pass wrote MinHash signatures for every document
    it kept (its workers have the tokenizer loaded and warm); this drops the records of the documents
    ExactDedupIndex lists and renumbers the others as the deduplicated stream numbers them. The files
    are then those MinhashDedupSignature writes reading that stream: its records are sorted by
    (hashes, index), and renumbering keeps that order."""

    name = "minhash_signatures_deduped"
    type = "🫂 - DEDUP"

    def __init__(self, input_folder: str, output_folder: str, remove_folder: str, config, tasks: int):
        super().__init__()
        self.input_folder, self.output_folder = Path(input_folder), Path(output_folder)
        self.remove_folder, self.config, self.tasks = Path(remove_folder), config, tasks

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:  # a sink
        import numpy as np

        assert world_size == 1, "one task rewrites every task's signature files"
        fmt = self.config.hash_config.struct_format
        record = np.dtype([(f"hash{i}", f"<{fmt}") for i in range(self.config.hashes_per_bucket)] + [("doc", "<u4")])
        with self.track_time():
            for task in range(self.tasks):
                removed = np.frombuffer((self.remove_folder / f"{task:06d}.remove").read_bytes(), dtype="<u4")
                for bucket in range(self.config.num_buckets):
                    name = Path(f"bucket_{bucket:03d}") / f"{task:05d}.minhash.sig"
                    records = np.frombuffer((self.input_folder / name).read_bytes(), dtype=record)
                    records = records[~np.isin(records["doc"], removed)]  # a copy: writable
                    records["doc"] -= np.searchsorted(removed, records["doc"]).astype("<u4")
                    (self.output_folder / name).parent.mkdir(parents=True, exist_ok=True)
                    (self.output_folder / name).write_bytes(records.tobytes())


class TaskFileReader(JsonlReader):
    """Reads `<rank>.jsonl.gz` only: what the task of the same rank wrote in the previous pass (nothing
    if it wrote nothing). JsonlReader deals a folder's files round-robin, which would hand a task its
    neighbour's file once one task's file is missing; the passes after quality number each task's
    documents (exact dedup, MinHash signatures, the cluster guard, the MinHash filter), so a task must
    read its own."""

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        name = f"{rank:05d}.jsonl.gz"
        for doc in self.read_files_shard([name] if self.data_folder.isfile(name) else []):
            self.update_doc_stats(doc)
            yield doc


class PIIScrubber(BaseFormatter):
    """Typed placeholders (<EMAIL>, <IP>, <PHONE>, <CREDIT_CARD>, <SSN>, <IBAN>, <SECRET>), counted per type."""

    name = "pii"

    def __init__(self, keep_private_ips: bool = False, phone_regions=PHONE_REGIONS, phone_leniency: str = "valid"):
        super().__init__()
        self.keep_private_ips = keep_private_ips
        self.phones = PhoneRules(tuple(r.upper() for r in phone_regions), phone_leniency)

    def format(self, text: str) -> str:
        text, counts = scrub(text, self.keep_private_ips, self.phones)
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

    def __init__(self, output_folder: str, fraction: float, sources: list[str] | None = None):
        super().__init__()
        self.output_folder, self.fraction = output_folder, fraction
        self.source_index = {name: i for i, name in enumerate(sources or [])}

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()  # the report's figures: it reads these stats, not the output
        with JsonlWriter(f"{self.output_folder}/train") as train, JsonlWriter(f"{self.output_folder}/validation") as val:
            for doc in data:
                doc.metadata.pop("file_path", None)  # a JsonlReader's input path (the reference's): would tie outputs to the build dir
                held_out = is_validation(doc.id, self.fraction)
                (val if held_out else train).write(doc, rank)
                split, size = "validation" if held_out else "train", len(doc.text.encode("utf-8"))
                counts[split] += 1
                counts[f"{split}_bytes"] += size
                source = self.source_index.get(doc.metadata.get("source"))
                if source is not None:
                    counts[f"source_{source}_docs_out"] += 1
                    counts[f"source_{source}_bytes_out"] += size
                yield doc
        for key, value in counts.items():
            self.stat_update(key, value=value)


class Chain:
    """Steps run one after the other as one reader, `chain(data, rank, world_size)`: e.g. a task's file
    without its exact duplicates, for the cluster guard, which reads documents outside a pipeline."""

    def __init__(self, *steps: PipelineStep):
        self.steps = steps

    def __call__(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        for step in self.steps:
            data = step(data, rank, world_size)
        return data
