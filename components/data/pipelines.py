"""The data stage's datatrove passes, built from config: what runs, in which order, on how many tasks.

    1_quality        Gopher quality, Gopher repetition, C4, FineWeb, URL blocklist, language id
    2_exact_dedup    normalised-text hash, first seen kept (one task: a global view)
    3-6 minhash      signatures, buckets, clusters, cluster guard (datatrove's passes + ours)
    7_final          MinHash filter, PII scrubbing, train/validation split

Every block that drops documents writes them to rejected/<NN>_<block>/ with the reason;
a Tally after each block counts documents and bytes, so the manifest has both in and out
per block. The executor (local, Slurm, Ray) is chosen elsewhere: a pass is only data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from components.data.config import DataConfig

# blocks in pipeline order; rejected/<NN>_<block> numbers them in this order
DROPPING_BLOCKS = ["gopher_quality", "gopher_repetition", "c4", "fineweb", "url_blocklist", "language",
                   "exact_dedup", "minhash"]
COUNTED_BLOCKS = [*DROPPING_BLOCKS, "pii"]


def rejected_dir(block: str) -> str:
    return f"{DROPPING_BLOCKS.index(block) + 1:02d}_{block}"


@dataclass
class Pass:
    name: str
    pipeline: list
    tasks: int = 1
    workers: int = 1


class Tally(PipelineStep):
    """Counts the documents and UTF-8 bytes leaving `block` (stats `<block>_docs`, `<block>_bytes`)."""

    name = "tally"
    type = "📊 - STATS"

    def __init__(self, block: str):
        super().__init__()
        self.block = block

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        docs = nbytes = 0
        for doc in data:
            docs += 1
            nbytes += len(doc.text.encode("utf-8"))
            yield doc
        self.stat_update(f"{self.block}_docs", value=docs)  # once per task: no per-document overhead
        self.stat_update(f"{self.block}_bytes", value=nbytes)


def _pairs(rules: dict) -> tuple[tuple[int, float], ...]:
    """{n: fraction} (config) -> ((n, fraction), ...) sorted by n (datatrove's form)."""
    return tuple(sorted((int(n), float(f)) for n, f in rules.items()))


def quality_blocks(cfg: DataConfig, sink) -> list[tuple[str, PipelineStep]]:
    """(block name, datatrove filter) for the enabled quality blocks, in pipeline order."""
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    from components.data.filters import LocalLanguageFilter, URLBlocklistFilter

    blocks = []
    if cfg.gopher_quality:
        blocks.append(("gopher_quality", GopherQualityFilter(exclusion_writer=sink("gopher_quality"),
                                                             **asdict(cfg.gopher_quality_rules))))
    if cfg.gopher_repetition:
        rules = cfg.gopher_repetition_rules
        blocks.append(("gopher_repetition", GopherRepetitionFilter(
            exclusion_writer=sink("gopher_repetition"), **{**asdict(rules), "top_n_grams": _pairs(rules.top_n_grams),
                                                          "dup_n_grams": _pairs(rules.dup_n_grams)})))
    if cfg.c4:  # no bad-words list: it needs a download
        blocks.append(("c4", C4QualityFilter(exclusion_writer=sink("c4"), **asdict(cfg.c4_rules))))
    if cfg.fineweb:
        blocks.append(("fineweb", FineWebQualityFilter(exclusion_writer=sink("fineweb"), **asdict(cfg.fineweb_rules))))
    if cfg.url_blocklist is not None:
        blocks.append(("url_blocklist", URLBlocklistFilter(cfg.url_blocklist, exclusion_writer=sink("url_blocklist"))))
    if cfg.language_model is not None:
        blocks.append(("language", LocalLanguageFilter(cfg.language_model, cfg.languages, cfg.language_threshold,
                                                       exclusion_writer=sink("language"))))
    return blocks


def minhash_config(cfg: DataConfig):
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig(n_grams=cfg.minhash_ngrams, num_buckets=cfg.minhash_buckets,
                         hashes_per_bucket=cfg.minhash_hashes_per_bucket)


def build_passes(cfg: DataConfig, staged: Path, out_dir: Path) -> list[Pass]:
    """The passes in order. Intermediate data lives in out_dir/work (a shared filesystem on a cluster)."""
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from components.data.blocks import ExactDedupFilter, PIIScrubber, TrainValidationSplit
    from components.data.minhash_guard import MinhashClusterGuard

    work = out_dir / "work"

    def sink(block: str) -> JsonlWriter:
        return JsonlWriter(str(out_dir / "rejected" / rejected_dir(block)))

    def tallied(blocks: list[tuple[str, PipelineStep]]) -> list:
        return [step for name, block in blocks for step in (block, Tally(name))]

    passes = [Pass("1_quality", [JsonlReader(str(staged)), Tally("input"), *tallied(quality_blocks(cfg, sink)),
                                 JsonlWriter(str(work / "quality"))], cfg.tasks, min(cfg.workers, cfg.tasks))]
    exact = [("exact_dedup", ExactDedupFilter(exclusion_writer=sink("exact_dedup")))] if cfg.exact_dedup else []
    passes.append(Pass("2_exact_dedup", [JsonlReader(str(work / "quality")), *tallied(exact),
                                         JsonlWriter(str(work / "deduped"))]))

    def deduped() -> JsonlReader:  # the same files in the same order for signatures, guard and filter
        return JsonlReader(str(work / "deduped"))

    final = []
    if cfg.minhash:
        mh = minhash_config(cfg)
        passes += [
            Pass("3_minhash_signatures", [deduped(), MinhashDedupSignature(str(work / "sigs"), config=mh)]),
            Pass("4_minhash_buckets", [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)],
                 tasks=cfg.minhash_buckets, workers=min(cfg.workers, cfg.minhash_buckets)),
            Pass("5_minhash_clusters", [MinhashDedupCluster(str(work / "buckets"), str(work / "clusters"), config=mh,
                                                            save_cluster_id=True)]),
            Pass("6_minhash_guard", [MinhashClusterGuard(str(work / "clusters"), str(work / "remove"), deduped(),
                                                         signature_tasks=1, n_grams=cfg.minhash_ngrams,
                                                         guard_jaccard=cfg.minhash_guard_jaccard)]),
        ]
        final.append(("minhash", MinhashDedupFilter(str(work / "remove"), exclusion_writer=sink("minhash"))))
    if cfg.pii:
        final.append(("pii", PIIScrubber(cfg.pii_keep_private_ips)))
    passes.append(Pass("7_final", [deduped(), *tallied(final), TrainValidationSplit(str(out_dir), cfg.validation_fraction)]))
    return passes
