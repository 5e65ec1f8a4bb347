"""The stage's blocks in datatrove's own FineWeb example order, with datatrove's filters as they ship:
the reference the stage must keep the same documents as (tests/test_data.py) and must beat on speed
(benchmarks/data_throughput.py). Not used by the stage itself.

datatrove's examples/fineweb.py runs URLFilter, Trafilatura, LanguageFilter, GopherRepetition,
GopherQuality, C4Quality, FineWebQuality, then MinHash's four passes, then PII, one
LocalPipelineExecutor per pass. Here with the stage's settings (conf/data), plus what the stage has
and the example has not, placed where the stage had them before it was reordered: exact dedup after
the quality filters (one task, a global view) and the cluster guard between MinHash's clusters and
its filter. The URL blocklist (off by default), language id and toxicity are the stage's offline blocks.

    1_quality     reader -> [URL blocklist,] language id, toxicity, Gopher repetition, Gopher quality, C4, FineWeb -> writer
    2_exact_dedup one task -> writer (one file)
    3-6 minhash   signatures (one task: one file in), buckets, clusters, cluster guard
    7_final       MinHash filter, PII -> train/validation split
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from components.data.config import DataConfig
from components.data.pipelines import Pass, block_builders, n_gram_pairs, minhash_config


def reference_passes(cfg: DataConfig, staged: Path, out_dir: Path) -> list[Pass]:
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from components.data.blocks import ExactDedupFilter, PIIScrubber, TrainValidationSplit
    from components.data.filters import GopherQuality, URLBlocklistFilter
    from components.data.minhash_guard import MinhashClusterGuard

    work = out_dir / "work"
    mh = minhash_config(cfg)

    def sink(block: str) -> JsonlWriter:
        return JsonlWriter(str(out_dir / "removed" / block))

    quality = []
    if cfg.url_blocklist is not None:
        quality.append(URLBlocklistFilter(cfg.url_blocklist, exclusion_writer=sink("url_blocklist")))
    content = block_builders(cfg)  # language id and toxicity: the stage's offline blocks (no datatrove equivalent)
    quality += [content[name](cfg.block_rules(name), sink(name)) for name in ("language", "toxicity") if getattr(cfg, name)]
    if cfg.gopher_repetition:
        rules = cfg.gopher_repetition_rules
        quality.append(GopherRepetitionFilter(exclusion_writer=sink("gopher_repetition"), **{
            **asdict(rules), "top_n_grams": n_gram_pairs(rules.top_n_grams),
            "dup_n_grams": n_gram_pairs(rules.dup_n_grams)}))
    if cfg.gopher_quality:  # ours: datatrove's filter with the configured words for its alpha rule (filters.py)
        quality.append(GopherQuality(exclusion_writer=sink("gopher_quality"), alpha_words=cfg.gopher_alpha_words,
                                     **asdict(cfg.gopher_quality_rules)))
    if cfg.c4:
        quality.append(C4QualityFilter(exclusion_writer=sink("c4"), **asdict(cfg.c4_rules)))
    if cfg.fineweb:
        quality.append(FineWebQualityFilter(exclusion_writer=sink("fineweb"), **asdict(cfg.fineweb_rules)))
    passes = [Pass("1_quality", [JsonlReader(str(staged)), *quality, JsonlWriter(str(work / "quality"))],
                   cfg.tasks, min(cfg.workers, cfg.tasks))]
    exact = [ExactDedupFilter(exclusion_writer=sink("exact_dedup"))] if cfg.exact_dedup else []
    passes.append(Pass("2_exact_dedup", [JsonlReader(str(work / "quality")), *exact, JsonlWriter(str(work / "deduped"))]))

    def deduped() -> JsonlReader:
        return JsonlReader(str(work / "deduped"))

    final = []
    if cfg.minhash:
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
        final.append(MinhashDedupFilter(str(work / "remove"), exclusion_writer=sink("minhash")))
    if cfg.pii:
        final.append(PIIScrubber(cfg.pii_keep_private_ips, cfg.pii_phone_regions, cfg.pii_phone_leniency))
    passes.append(Pass("7_final", [deduped(), *final, TrainValidationSplit(str(out_dir), cfg.validation_fraction)]))
    return passes


def stage_sources(cfg: DataConfig, out_dir: Path) -> Path:
    """The documents the stage's first pass reads, task by task, written to out_dir/work/staged/<task>.jsonl.gz
    (the stage's own reader: the same documents in the same tasks), for the reference's JsonlReader."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.writers import JsonlWriter

    from components.data import embedded
    from components.data.ingest.step import SourceReader
    from components.data.ingest.units import plan_units

    specs = cfg.source_specs()
    embedded_file = out_dir / "sources" / "embedded.jsonl"
    if any(s.type == "embedded" for s in specs):
        embedded.build(embedded_file, cfg.max_documents, cfg.seed)
    reader = SourceReader(plan_units(specs, cfg.tasks, embedded_file), cfg.text_key, cfg.max_line_bytes, cfg.strict,
                          str(out_dir / "quarantine"), max_html_bytes=cfg.max_html_bytes)
    staged = out_dir / "work" / "staged"
    LocalPipelineExecutor([reader, JsonlWriter(str(staged))], tasks=cfg.tasks, workers=min(cfg.workers, cfg.tasks),
                          skip_completed=False, logging_dir=str(out_dir / "work" / "logs" / "0_staging")).run()
    return staged


def run_reference(cfg: DataConfig, staged: Path, out_dir: Path) -> None:
    """Every pass on a LocalPipelineExecutor, one after the other (data.executor is ignored)."""
    from datatrove.executor import LocalPipelineExecutor

    for p in reference_passes(cfg, staged, out_dir):
        LocalPipelineExecutor(p.pipeline, tasks=p.tasks, workers=p.workers, skip_completed=False,
                              logging_dir=str(out_dir / "work" / "logs" / p.name)).run()
