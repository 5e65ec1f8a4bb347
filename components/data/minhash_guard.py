"""MinHash clusters checked against true Jaccard, so chains cannot swallow unrelated documents.

LSH links pairs; union-find then merges A~B and B~C into one cluster even when A and C
share little (long chains of drifting copies, templated pages). datatrove keeps one
document per cluster. Here each cluster is re-read in input order: the first member is
kept; every later member is removed only if its true Jaccard similarity (on the same
n-gram shingles MinHash estimates) with some kept member reaches `guard_jaccard`,
otherwise it is kept too and counted as `guard_kept`. A cluster thus keeps a set of
mutually dissimilar documents instead of one.
"""
from __future__ import annotations

import json
import struct
from collections import Counter, defaultdict
from pathlib import Path

from datatrove.pipeline.base import PipelineStep
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text

from components.data.words import WarmSpaCyTokenizer


def shingles(text: str, n: int, tokenizer=None) -> frozenset[str]:
    """The word n-grams MinHash hashes: datatrove's text normalisation, then its word tokenizer
    (spaCy, slow to load) or, without one, whitespace: the same words once punctuation is gone."""
    simple = simplify_text(text, TextNormConfig())
    words = tokenizer.word_tokenize(simple) if tokenizer is not None else simple.split()
    return frozenset(" ".join(g) for g in ngrams(words, n))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def read_pairs(path: Path, fmt: str = "<2I") -> list[tuple[int, ...]]:
    size = struct.calcsize(fmt)
    data = path.read_bytes()
    return [struct.unpack_from(fmt, data, i) for i in range(0, len(data), size)]


def size_bucket(size: int) -> str:
    return str(size) if size < 4 else "4-7" if size < 8 else "8-15" if size < 16 else "16+"


class MinhashClusterGuard(PipelineStep):
    """Reads the `.clusters` files of MinhashDedupCluster(save_cluster_id=True) and the documents the
    signatures were computed on (`reader(None, task, signature_tasks)`, task by task), writes `.remove`
    files for MinhashDedupFilter."""

    name = "minhash_guard"
    type = "🫂 - DEDUP"

    def __init__(self, clusters_folder: str, output_folder: str, reader, signature_tasks: int, n_grams: int,
                 guard_jaccard: float):
        super().__init__()
        self.clusters_folder, self.output_folder = Path(clusters_folder), Path(output_folder)
        self.reader, self.signature_tasks = reader, signature_tasks
        self.n_grams, self.guard_jaccard = n_grams, guard_jaccard

    def load_clusters(self) -> dict[int, list[tuple[int, int]]]:
        """cluster id -> members (file, doc index), in input order."""
        clusters: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for path in sorted(self.clusters_folder.glob("*.clusters")):
            file_id = int(path.name.split(".")[0])
            for doc, cluster in read_pairs(path):
                clusters[cluster].append((file_id, doc))
        return {c: sorted(members) for c, members in clusters.items()}

    def member_shingles(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], frozenset]:
        """Shingles of cluster members only: memory grows with the duplicates, not the corpus. Each
        rank's documents are read up to its last member (none at all without clusters)."""
        tokenizer = WarmSpaCyTokenizer()
        found = {}
        for rank in range(self.signature_tasks):
            last = max((index for r, index in wanted if r == rank), default=-1)
            if last < 0:
                continue
            for index, doc in enumerate(self.reader(None, rank, self.signature_tasks)):
                if (rank, index) in wanted:
                    found[(rank, index)] = shingles(doc.text, self.n_grams, tokenizer)
                if index >= last:
                    break
        return found

    def decide(self, members: list[tuple[int, int]], sh: dict) -> tuple[list, int]:
        """(members to remove, members kept by the guard) for one cluster."""
        kept, removed, guard_kept = [members[0]], [], 0
        for member in members[1:]:
            if any(jaccard(sh[member], sh[k]) >= self.guard_jaccard for k in kept):
                removed.append(member)
            else:
                kept.append(member)
                guard_kept += 1
        return removed, guard_kept

    def run(self, data=None, rank: int = 0, world_size: int = 1) -> None:  # a sink, like MinhashDedupCluster
        assert world_size == 1, "the cluster guard needs a global view: run it as one task"
        with self.track_time():
            clusters = self.load_clusters()
            sh = self.member_shingles({m for members in clusters.values() for m in members})
            removals: dict[int, list[int]] = defaultdict(list)
            sizes: Counter = Counter()
            for members in clusters.values():
                removed, guard_kept = self.decide(members, sh)
                for file_id, doc in removed:
                    removals[file_id].append(doc)
                sizes[size_bucket(len(members))] += 1
                self.stat_update("clusters")
                self.stat_update(f"cluster_size_{size_bucket(len(members))}")
                self.stat_update("removed", value=len(removed))
                self.stat_update("guard_kept", value=guard_kept)
            self.output_folder.mkdir(parents=True, exist_ok=True)
            for file_id, docs in removals.items():
                (self.output_folder / f"{file_id:06d}.remove").write_bytes(
                    b"".join(struct.pack("<I", d) for d in sorted(docs)))
            (self.output_folder / "cluster_stats.json").write_text(json.dumps({
                "clusters": len(clusters),
                "cluster_size_max": max((len(m) for m in clusters.values()), default=0),
                "cluster_sizes": dict(sorted(sizes.items())),
                "removed": sum(len(d) for d in removals.values()),
                "guard_kept": sum(len(m) - 1 for m in clusters.values()) - sum(len(d) for d in removals.values()),
            }))
