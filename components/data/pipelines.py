"""The data stage's datatrove passes, built from config: what runs, in which order, on how many tasks.

    1_quality      the sources read, validated and (HTML, WARC) extracted in the tasks, bad records to the
                   quarantine (components/data/ingest/); URL blocklist, language id, toxicity, Gopher quality, Gopher repetition, C4, FineWeb; then,
                   for each document kept, its exact-dedup digest and its MinHash signature   (tasks)
    2_exact_dedup  the digests in task order, first seen kept; duplicates' signatures dropped (one task)
    3-5 minhash    buckets, clusters, cluster guard (datatrove's passes + ours)
    6_final        exact and MinHash duplicates removed, PII scrubbing, train/validation split (tasks)

The order (measured: benchmarks/README.md). Blocks that need no words go first: the URL list
reads metadata and fastText reads characters, so what they drop never reaches spaCy. Language id
therefore scores the text before C4's line removal (it scored C4's output when it ran last), and
toxicity (word n-grams, no spaCy) right after it, on the text as written. The four heuristic filters are not free to move: C4
rewrites the text (it removes lines), so the Gopher filters must see the text before it and
FineWeb the text after it, as in datatrove's FineWeb example; which Gopher filter goes first
made no measurable difference (they share the split words). Exact dedup stays after the filters:
before them it would change which copy survives (C4's line removal makes documents equal;
FineWeb can reject one copy of a normalised text and keep another), and it drops few documents.
So the speed comes from doing less per document rather than from the order: one warm spaCy
tokenizer for every block (components/data/words.py), exact rewrites of C4, FineWeb and Gopher
repetition that skip work that cannot change a verdict (components/data/filters.py), and MinHash
signatures computed by the quality workers, whose tokenizer is loaded and warm, instead of by
one task over a copy of the corpus. components/data/reference.py is the same blocks in
datatrove's order, as shipped; tests/test_data.py checks both keep the same documents.

Every block that drops documents writes them to rejected/<NN>_<block>/ with the reason;
a Tally after each block counts documents and bytes, so the manifest has both in and out
per block. The executor (local, Slurm, Ray) is chosen elsewhere: a pass is only data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datatrove.data import DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from components.data.config import FILE_BLOCKS, DataConfig

# blocks in pipeline order; rejected/<NN>_<block> numbers them in this order
DROPPING_BLOCKS = ["url_blocklist", "language", "toxicity", "gopher_quality", "gopher_repetition", "c4", "c4_badwords", "fineweb",
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


def n_gram_pairs(rules: dict) -> tuple[tuple[int, float], ...]:
    """{n: fraction} (config) -> ((n, fraction), ...) sorted by n (datatrove's form)."""
    return tuple(sorted((int(n), float(f)) for n, f in rules.items()))


def quality_blocks(cfg: DataConfig, sink) -> list[tuple[str, PipelineStep]]:
    """(block name, datatrove filter) for the enabled quality blocks, in pipeline order. The blocks that
    split words or sentences share one tokenizer (components/data/words.py): same tokens, a fraction
    of the time, and Gopher repetition reuses the words Gopher quality split. A block that some source
    switches off or tunes (data.sources[i].blocks) is a PerSourceBlock: one filter per setting, picked
    by the document's source; a block off globally still runs for the sources that switch it on."""
    from components.data.filters import PerSourceBlock

    builders = block_builders(cfg)
    blocks = []
    for name, build in builders.items():
        by_source = {spec.name: spec.blocks[name] for spec in cfg.specs if name in spec.blocks}
        on = block_enabled(cfg, name)
        if not on and all(value is False for value in by_source.values()):
            continue
        if not by_source:
            blocks.append((name, build(cfg.block_rules(name), sink(name))))
            continue
        inner = {source: None if value is False else build(cfg.block_rules(name, value), None)
                 for source, value in by_source.items()}
        default = build(cfg.block_rules(name), None) if on else None
        blocks.append((name, PerSourceBlock(name, default, inner, exclusion_writer=sink(name))))
    return blocks


def block_enabled(cfg: DataConfig, name: str) -> bool:
    if name in FILE_BLOCKS:  # on when its file is given
        return getattr(cfg, FILE_BLOCKS[name]) is not None
    return bool(getattr(cfg, name))


def block_builders(cfg: DataConfig) -> dict:
    """block name -> build(settings, exclusion_writer), in pipeline order; settings as DataConfig.block_rules."""
    from components.data.filters import (BundledLanguageFilter, C4Filter, FineWebQuality, GopherQuality, GopherRepetition,
                                         LocalC4BadWords, LocalLanguageFilter, ToxicityFilter, URLBlocklistFilter)
    from components.data.words import WarmSpaCyTokenizer

    words = WarmSpaCyTokenizer()

    def language(rules, writer):
        if cfg.language_model is not None:
            return LocalLanguageFilter(cfg.language_model, rules["languages"], rules["threshold"], exclusion_writer=writer)
        return BundledLanguageFilter(rules["languages"], rules["threshold"], rules["min_words"], exclusion_writer=writer)

    def repetition(rules, writer):
        return GopherRepetition(exclusion_writer=writer, language=words, **{
            **rules, "top_n_grams": n_gram_pairs(rules["top_n_grams"]), "dup_n_grams": n_gram_pairs(rules["dup_n_grams"])})

    return {
        "url_blocklist": lambda rules, writer: URLBlocklistFilter(cfg.url_blocklist, exclusion_writer=writer),
        "language": language,
        "toxicity": lambda rules, writer: ToxicityFilter(rules["threshold"], rules["max_fraction"], exclusion_writer=writer),
        "gopher_quality": lambda rules, writer: GopherQuality(exclusion_writer=writer, language=words,
                                                              alpha_words=cfg.gopher_alpha_words, **rules),
        "gopher_repetition": repetition,
        "c4": lambda rules, writer: C4Filter(exclusion_writer=writer, language=words, **rules),
        "c4_badwords": lambda rules, writer: LocalC4BadWords(cfg.c4_badwords_file, exclusion_writer=writer),
        "fineweb": lambda rules, writer: FineWebQuality(exclusion_writer=writer, language=words, **rules),
    }


def minhash_config(cfg: DataConfig):
    from datatrove.pipeline.dedup.minhash import MinhashConfig

    return MinhashConfig(n_grams=cfg.minhash_ngrams, num_buckets=cfg.minhash_buckets,
                         hashes_per_bucket=cfg.minhash_hashes_per_bucket)


def build_passes(cfg: DataConfig, reader: PipelineStep, out_dir: Path, sources: list[str] | None = None) -> list[Pass]:
    """The passes in order, the first one starting with `reader` (the sources, read in the tasks:
    components/data/ingest/step.py); `sources` (names, in data.sources order) for the per-source
    counts of the split. Intermediate data lives in out_dir/work (a shared filesystem on a cluster).
    The quality pass and the final pass run on `tasks` tasks, task t of the final pass reading what
    task t of the quality pass wrote (TaskFileReader): documents keep one numbering per task, in the
    order one task would read the tasks' files, for exact dedup, the signatures, the guard and the
    MinHash filter alike."""
    from datatrove.pipeline.dedup import MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.writers import JsonlWriter

    from components.data.blocks import (Chain, ExactDedupHashes, ExactDedupIndex, ExactDedupRemove, PIIScrubber,
                                        SignaturesWithoutDuplicates, TaskFileReader, TrainValidationSplit)
    from components.data.words import WarmSpaCyTokenizer

    work = out_dir / "work"
    tasks, workers = cfg.tasks, min(cfg.workers, cfg.tasks)
    mh = minhash_config(cfg)

    def sink(block: str) -> JsonlWriter:
        return JsonlWriter(str(out_dir / "rejected" / rejected_dir(block)))

    def tallied(blocks: list[tuple[str, PipelineStep]]) -> list:
        return [step for name, block in blocks for step in (block, Tally(name))]

    quality = quality_blocks(cfg, sink)
    after_quality = [JsonlWriter(str(work / "quality"))]
    if cfg.exact_dedup:
        after_quality.append(ExactDedupHashes(str(work / "exact_hashes")))
    if cfg.minhash:  # last (a sink): the workers' spaCy pipeline is loaded and warm from the quality filters
        after_quality.append(MinhashDedupSignature(str(work / ("sigs_all" if cfg.exact_dedup else "sigs")), config=mh,
                                                   language=WarmSpaCyTokenizer()))
    passes = [Pass("1_quality", [reader, Tally("input"), *tallied(quality), *after_quality],
                   tasks, workers)]

    def deduplicated() -> list:  # a task's documents after the quality pass, without exact duplicates
        remove = [ExactDedupRemove(str(work / "exact_remove"))] if cfg.exact_dedup else []
        return [TaskFileReader(str(work / "quality")), *remove]

    exact = []
    if cfg.exact_dedup:
        index = [ExactDedupIndex(str(work / "exact_hashes"), str(work / "exact_remove"), tasks)]
        if cfg.minhash:
            index.append(SignaturesWithoutDuplicates(str(work / "sigs_all"), str(work / "sigs"),
                                                     str(work / "exact_remove"), mh, tasks))
        passes.append(Pass("2_exact_dedup", index))
        exact = [("exact_dedup", ExactDedupRemove(str(work / "exact_remove"), exclusion_writer=sink("exact_dedup")))]

    final = []
    if cfg.minhash:
        passes += minhash_passes(cfg, work, Chain(*deduplicated()))
        final.append(("minhash", MinhashDedupFilter(str(work / "remove"), exclusion_writer=sink("minhash"))))
    if cfg.pii:
        final.append(("pii", PIIScrubber(cfg.pii_keep_private_ips, cfg.pii_phone_regions, cfg.pii_phone_leniency)))
    passes.append(Pass("6_final", [TaskFileReader(str(work / "quality")), *tallied(exact), *tallied(final),
                                   TrainValidationSplit(str(out_dir), cfg.validation_fraction, sources)], tasks, workers))
    return passes


def minhash_passes(cfg: DataConfig, work: Path, guard_reader) -> list[Pass]:
    """MinHash's buckets and clusters (datatrove's passes), then the cluster guard, which reads each task's
    documents through `guard_reader` (the quality pass's output without exact duplicates)."""
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster

    from components.data.minhash_guard import MinhashClusterGuard

    mh = minhash_config(cfg)
    return [
        Pass("3_minhash_buckets", [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)],
             tasks=cfg.minhash_buckets, workers=min(cfg.workers, cfg.minhash_buckets)),
        Pass("4_minhash_clusters", [MinhashDedupCluster(str(work / "buckets"), str(work / "clusters"), config=mh,
                                                        save_cluster_id=True)]),
        Pass("5_minhash_guard", [MinhashClusterGuard(str(work / "clusters"), str(work / "remove"), guard_reader,
                                                     signature_tasks=cfg.tasks, n_grams=cfg.minhash_ngrams,
                                                     guard_jaccard=cfg.minhash_guard_jaccard)]),
    ]
