"""Data stage: validate and stage the sources, then real datatrove pipelines.

quality filters (tasks in parallel) -> exact dedup -> MinHash (4 passes) -> PII -> split.
Every dropped document lands in rejected/<NN>_<block>/ with its reason; every bad
input line lands in quarantine.jsonl with file, line and reason.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from components.data import embedded
from components.data.config import DataConfig
from components.data.readers import expand_sources, read_jsonl
from components.data.report import measure, write_report

log = logging.getLogger(__name__)
BLOCKS = ["gopher_repetition", "gopher_quality", "c4", "exact_dedup", "minhash"]


def stage_inputs(cfg: DataConfig, out_dir: Path) -> tuple[Path, Counter, int]:
    """Validated documents -> staged/<task>.jsonl.gz (round-robin over tasks); bad lines quarantined."""
    truth_needed = "embedded" in cfg.sources
    if truth_needed:
        truth = embedded.build(out_dir / "sources" / "embedded.jsonl", cfg.max_documents, cfg.seed)
        (out_dir / "ground_truth.json").write_text(json.dumps(truth))
    staged = out_dir / "work" / "staged"
    staged.mkdir(parents=True)
    writers = [gzip.open(staged / f"{t:05d}.jsonl.gz", "wt", encoding="utf-8") for t in range(cfg.tasks)]
    reasons: Counter = Counter()
    n = 0
    with open(out_dir / "quarantine.jsonl", "w") as quarantine:
        for path, name in expand_sources(cfg.sources, out_dir / "sources" / "embedded.jsonl"):
            for doc, bad in read_jsonl(path, cfg.text_key, cfg.max_line_bytes, name):
                if bad is not None:
                    quarantine.write(json.dumps(bad) + "\n")
                    reasons[bad["reason"].split(" ")[0]] += 1
                    continue
                writers[n % cfg.tasks].write(json.dumps(doc) + "\n")
                n += 1
    for w in writers:
        w.close()
    if n == 0:
        raise ValueError(f"data: no valid document in {cfg.sources} (see {out_dir / 'quarantine.jsonl'})")
    log.info("data: %d documents staged, %d lines quarantined", n, sum(reasons.values()))
    return staged, reasons, n


@contextlib.contextmanager
def stderr_to(path: Path):
    """datatrove logs every task at INFO to stderr (hard-coded): send it to a file
    (workers inherit the descriptor), and show its tail if the pipeline fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as handle:
        os.dup2(handle.fileno(), 2)
        try:
            yield
        except BaseException as err:
            os.dup2(saved, 2)
            tail = path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"datatrove pipeline failed ({err}); end of its log {path}:\n{tail}") from err
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run(cfg: DataConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from components.data.blocks import ExactDedupFilter, PIIScrubber, TrainValidationSplit

    staged, quarantined, n_in = stage_inputs(cfg, out_dir)
    work, rejected = out_dir / "work", out_dir / "rejected"

    def sink(i: int, block: str) -> JsonlWriter:
        return JsonlWriter(str(rejected / f"{i:02d}_{block}"))

    def execute(name: str, pipeline: list, tasks: int = 1, workers: int = 1) -> None:
        log.info("data: running %s (%d tasks)", name, tasks)
        with stderr_to(out_dir / "logs" / f"{name}.log"):
            LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(work / "logs" / name),
                                  skip_completed=False).run()

    quality = []
    if cfg.gopher_repetition:
        quality.append(GopherRepetitionFilter(exclusion_writer=sink(1, "gopher_repetition")))
    if cfg.gopher_quality:
        quality.append(GopherQualityFilter(exclusion_writer=sink(2, "gopher_quality")))
    if cfg.c4:
        quality.append(C4QualityFilter(filter_no_terminal_punct=False, exclusion_writer=sink(3, "c4")))
    execute("1_quality", [JsonlReader(str(staged)), *quality, JsonlWriter(str(work / "quality"))],
            tasks=cfg.tasks, workers=min(cfg.workers, cfg.tasks))

    after = [JsonlReader(str(work / "quality"))]
    if cfg.exact_dedup:
        after.append(ExactDedupFilter(exclusion_writer=sink(4, "exact_dedup")))
    execute("2_exact_dedup", [*after, JsonlWriter(str(work / "deduped"))])

    final_reader = JsonlReader(str(work / "deduped"))
    tail = []
    if cfg.minhash:
        mh = MinhashConfig(n_grams=cfg.minhash_ngrams, num_buckets=cfg.minhash_buckets,
                           hashes_per_bucket=cfg.minhash_hashes_per_bucket)
        execute("3_minhash_signatures", [JsonlReader(str(work / "deduped")), MinhashDedupSignature(str(work / "sigs"), config=mh)])
        execute("4_minhash_buckets", [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=mh)],
                tasks=cfg.minhash_buckets)
        execute("5_minhash_clusters", [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=mh)])
        tail.append(MinhashDedupFilter(str(work / "remove"), exclusion_writer=sink(5, "minhash")))
    if cfg.pii:
        tail.append(PIIScrubber(cfg.pii_keep_private_ips))
    tail.append(TrainValidationSplit(str(out_dir), cfg.validation_fraction))
    execute("6_pii_split", [final_reader, *tail])

    metrics = measure(cfg, out_dir, work, n_in, quarantined)
    write_report(out_dir, metrics)
    shutil.rmtree(work)
    return metrics
