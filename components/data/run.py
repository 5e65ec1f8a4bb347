"""Data stage: every pass a datatrove pipeline, the sources read inside the first one.

sources read, validated and extracted (HTML, WARC), quality filters, exact-dedup digests and MinHash
signatures (tasks in parallel) -> exact dedup -> MinHash buckets, clusters, cluster guard ->
duplicates removed, PII, split (tasks in parallel): see components/data/pipelines.py and
components/data/ingest/; executors in components/data/executors.py. The driver only lists the source
files (and builds the embedded corpus); a weighted mix adds a counting pass (components/data/mix.py).
Every dropped document lands in rejected/<NN>_<block>/ with its reason; every bad input record lands
in quarantine.jsonl with file, line and reason (per task in quarantine/ while the pass runs).
"""
from __future__ import annotations

import contextlib
import heapq
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from components.context import StageContext
from components.data import embedded
from components.data.config import DataConfig
from components.data.ingest.records import InputError
from components.data.ingest.step import SourceCounter, SourceReader, job_file
from components.data.ingest.units import Unit, plan_units
from components.data.report import measure, pass_stats, write_report
from components.evidence import top_reasons

log = logging.getLogger(__name__)


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
        except InputError:  # data.strict: the message names file, line and field already
            raise
        except BaseException as err:
            os.dup2(saved, 2)
            tail = path.read_text(errors="replace")[-3000:]
            where = Path(path.parent.name) / path.name  # in the stage's files, wherever a failure sets them aside
            raise RuntimeError(f"datatrove pipeline failed ({err}); end of its log {where}:\n{tail}") from err
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_pass(cfg: DataConfig, name: str, pipeline: list, tasks: int, workers: int, out_dir: Path) -> None:
    from components.data.executors import make_executor, run_to_completion

    log.info("data: running %s (%d tasks, %s executor)", name, tasks, cfg.executor)
    with stderr_to(out_dir / "logs" / f"{name}.log"):
        run_to_completion(cfg, make_executor(cfg, pipeline, name, tasks, workers, out_dir / "work" / "logs" / name))


def plan_weighted_mix(cfg: DataConfig, units: list[Unit], out_dir: Path) -> str:
    """The counting pass (valid documents per unit, read in the tasks), then the mix plan: per unit,
    how often to take each document, in work/mix/copies/. Returns that folder."""
    from components.data.mix import copies_per_unit

    mix = out_dir / "work" / "mix"
    counter = SourceCounter(units, cfg.text_key, cfg.max_line_bytes, cfg.strict, str(mix / "counts"),
                            max_html_bytes=cfg.max_html_bytes)
    run_pass(cfg, "0_count", [counter], cfg.tasks, min(cfg.workers, cfg.tasks), out_dir)
    counts = {job: json.loads((mix / "counts" / job_file(job)).read_text()) for job in range(len(units))}
    weights = {s.name: s.weight for s in cfg.source_specs()}
    copies = copies_per_unit(units, counts, weights, cfg.mix_by, cfg.mix_total, cfg.mix_repeat, cfg.seed)
    (mix / "copies").mkdir(parents=True)
    for job, plan in copies.items():
        (mix / "copies" / job_file(job)).write_text(json.dumps(plan))
    return str(mix / "copies")


def merge_quarantine(out_dir: Path) -> int:
    """quarantine/<task>.jsonl -> quarantine.jsonl in source, file and record order, streamed (each task's
    file is in that order already: a task holds at most one stripe of a file); returns the count."""
    folder = out_dir / "quarantine"
    with contextlib.ExitStack() as stack:
        tasks = [map(json.loads, stack.enter_context(open(p, encoding="utf-8"))) for p in sorted(folder.glob("*.jsonl"))]
        tmp, n = out_dir / "quarantine.jsonl.partial", 0
        with open(tmp, "w", encoding="utf-8") as out:
            for record in heapq.merge(*tasks, key=lambda r: r["_order"]):
                del record["_order"]
                out.write(json.dumps(record) + "\n")
                n += 1
    tmp.replace(out_dir / "quarantine.jsonl")
    shutil.rmtree(folder, ignore_errors=True)
    return n


def after_reading(cfg: DataConfig, out_dir: Path, truth: dict | None) -> None:
    """Once the first pass has read every source: the merged quarantine, the 'no valid document' error,
    and the ground truth, kept only when the embedded corpus was taken whole (it measures the filters)."""
    quarantined = merge_quarantine(out_dir)
    stats = pass_stats(out_dir / "work", "1_quality")
    if stats["input_docs"] == 0:  # the failed build's files (this quarantine) are set aside where the error says
        reasons = {k.removeprefix("quarantined_"): n for k, n in stats.items() if k.startswith("quarantined_")}
        raise ValueError(f"data: no valid document in {cfg.sources}: {quarantined} records quarantined "
                         f"({top_reasons(reasons)}); see quarantine.jsonl")
    specs = cfg.source_specs()
    log.info("data: %d documents read from %d sources, %d records quarantined, %d skipped", stats["input_docs"],
             len(specs), quarantined, sum(v for k, v in stats.items() if k.startswith("skipped_")))
    for spec in specs:  # a block that could not act on a source is said once, not only counted
        if stats.get(f"no_url_in:{spec.name}"):
            log.warning("data.url_blocklist cannot judge %d documents of source %r (%s): no url (kept); "
                        "name the url field with metadata_keys: {url: <field>}", stats[f"no_url_in:{spec.name}"],
                        spec.name, spec.type)
    index = next((i for i, s in enumerate(specs) if s.type == "embedded"), None)
    if truth is not None and stats[f"source_{index}_docs_taken"] == stats[f"source_{index}_docs_in"]:
        (out_dir / "ground_truth.json").write_text(json.dumps(truth))


def run(cfg: DataConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    from components.data.pipelines import build_passes

    out_dir = ctx.out_dir
    specs = cfg.source_specs()
    embedded_file = out_dir / "sources" / "embedded.jsonl"
    truth = embedded.build(embedded_file, cfg.max_documents, cfg.seed) if any(s.type == "embedded" for s in specs) else None
    units = plan_units(specs, cfg.tasks, embedded_file, [r.files for r in cfg.resolved_sources])  # reading: in the tasks
    copies = plan_weighted_mix(cfg, units, out_dir) if specs[0].weight is not None else None
    reader = SourceReader(units, cfg.text_key, cfg.max_line_bytes, cfg.strict, str(out_dir / "quarantine"), copies,
                          max_html_bytes=cfg.max_html_bytes)
    for p in build_passes(cfg, reader, out_dir, [s.name for s in specs]):
        run_pass(cfg, p.name, p.pipeline, p.tasks, p.workers, out_dir)
        if p.name == "1_quality":
            after_reading(cfg, out_dir, truth)
    metrics = measure(cfg, out_dir, out_dir / "work", specs)
    write_report(out_dir, metrics)
    shutil.rmtree(out_dir / "work")
    return metrics
