"""Data stage: validate and stage the sources, then real datatrove pipelines.

quality filters (tasks in parallel) -> exact dedup -> MinHash (4 passes + cluster guard)
-> PII -> split: see components/data/pipelines.py; executors in components/data/executors.py.
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
    from components.data.executors import make_executor, run_to_completion
    from components.data.pipelines import build_passes

    staged, quarantined, n_in = stage_inputs(cfg, out_dir)
    work = out_dir / "work"
    for p in build_passes(cfg, staged, out_dir):
        log.info("data: running %s (%d tasks, %s executor)", p.name, p.tasks, cfg.executor)
        with stderr_to(out_dir / "logs" / f"{p.name}.log"):
            run_to_completion(cfg, make_executor(cfg, p.pipeline, p.name, p.tasks, p.workers, work / "logs" / p.name))

    metrics = measure(cfg, out_dir, work, n_in, quarantined)
    write_report(out_dir, metrics)
    shutil.rmtree(work)
    return metrics
