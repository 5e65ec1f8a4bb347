"""Data stage: validate and stage the sources, then real datatrove pipelines.

quality filters, exact-dedup digests and MinHash signatures (tasks in parallel) -> exact dedup
-> MinHash buckets, clusters, cluster guard -> duplicates removed, PII, split (tasks in parallel):
see components/data/pipelines.py; executors in components/data/executors.py.
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

from components.context import StageContext
from components.data import embedded
from components.data.config import DataConfig
from components.data.mix import plan_mix
from components.data.readers import read_source
from components.data.report import measure, write_report

log = logging.getLogger(__name__)


def stage_inputs(cfg: DataConfig, out_dir: Path) -> tuple[Path, Counter, int, dict]:
    """Validated documents of every source -> work/by_source/, then the (weighted) mix ->
    staged/<task>.jsonl.gz, round-robin over tasks. Bad records go to quarantine.jsonl
    (or raise, with data.strict); records that are no document (WARC requests) are counted."""
    specs = cfg.source_specs()
    embedded_file = out_dir / "sources" / "embedded.jsonl"
    truth = embedded.build(embedded_file, cfg.max_documents, cfg.seed) if any(s.type == "embedded" for s in specs) else None
    by_source = out_dir / "work" / "by_source"
    by_source.mkdir(parents=True)
    issues: Counter = Counter()
    sizes: dict[str, list[int]] = {}
    per_source: dict[str, dict] = {}
    with open(out_dir / "quarantine.jsonl", "w") as quarantine:
        for i, spec in enumerate(specs):
            sizes[spec.name], per_source[spec.name] = _collect(cfg, spec, embedded_file, by_source / f"{i}.jsonl",
                                                               quarantine, issues)
    weights = {s.name: s.weight for s in specs} if specs[0].weight is not None else None
    plan = plan_mix(sizes, weights, cfg.mix_by, cfg.mix_total, cfg.mix_repeat, cfg.seed)
    staged = out_dir / "work" / "staged"
    staged.mkdir(parents=True)
    writers = [gzip.open(staged / f"{t:05d}.jsonl.gz", "wt", encoding="utf-8") for t in range(cfg.tasks)]
    n = 0
    for i, spec in enumerate(specs):
        take, counts = plan[spec.name], per_source[spec.name]
        with open(by_source / f"{i}.jsonl", encoding="utf-8") as docs:
            for index, line in enumerate(docs):
                for copy in range(take.get(index, 0)):
                    doc = json.loads(line)
                    if copy:  # a repeat gets its own id: ids stay unique
                        doc["id"] = f"{doc['id']}#{copy}"
                    writers[n % cfg.tasks].write(json.dumps(doc) + "\n")
                    n += 1
                    counts["docs_taken"] += 1
                    counts["bytes_taken"] += sizes[spec.name][index]
    for w in writers:
        w.close()
    if n == 0:
        raise ValueError(f"data: no valid document in {cfg.sources} (see {out_dir / 'quarantine.jsonl'})")
    embedded_whole = truth is not None and per_source["embedded"]["docs_taken"] == per_source["embedded"]["docs_in"]
    if embedded_whole:  # the planted ground truth measures the filters only on the whole embedded corpus
        (out_dir / "ground_truth.json").write_text(json.dumps(truth))
    log.info("data: %d documents staged from %d sources, %d records quarantined, %d skipped", n, len(specs),
             sum(v for k, v in issues.items() if k.startswith("quarantined_")),
             sum(v for k, v in issues.items() if k.startswith("skipped_")))
    return staged, issues, n, per_source


def _collect(cfg: DataConfig, spec, embedded_file: Path, dest: Path, quarantine, issues: Counter) -> tuple[list[int], dict]:
    """Read one source into dest (one valid document per line); returns each document's text bytes and counts."""
    counts = {"type": spec.type, "weight": spec.weight, "docs_in": 0, "bytes_in": 0, "quarantined": 0, "skipped": 0,
              "docs_taken": 0, "bytes_taken": 0}
    sizes: list[int] = []
    with open(dest, "w", encoding="utf-8") as out:
        for doc, bad in read_source(spec, cfg.text_key, cfg.max_line_bytes, embedded_file):
            if bad is not None:
                code = bad["reason"].split(" ")[0]
                if bad.get("skip"):
                    issues[f"skipped_{code}"] += 1
                    counts["skipped"] += 1
                    continue
                if cfg.strict:
                    where = "".join(f", {k} {bad[k]}" for k in ("line", "row", "record") if bad.get(k) is not None)
                    raise ValueError(f"data.strict: {bad['file']}{where}: {bad['reason']} (source {spec.name!r}; "
                                     "set data.strict=false to quarantine such records instead)")
                quarantine.write(json.dumps({**bad, "source": spec.name}) + "\n")
                issues[f"quarantined_{code}"] += 1
                counts["quarantined"] += 1
                continue
            size = len(doc["text"].encode("utf-8", errors="surrogatepass"))
            out.write(json.dumps(doc) + "\n")
            sizes.append(size)
            counts["docs_in"] += 1
            counts["bytes_in"] += size
    return sizes, counts


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


def run(cfg: DataConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    from components.data.executors import make_executor, run_to_completion
    from components.data.pipelines import build_passes

    staged, issues, n_in, per_source = stage_inputs(cfg, out_dir)
    work = out_dir / "work"
    for p in build_passes(cfg, staged, out_dir):
        log.info("data: running %s (%d tasks, %s executor)", p.name, p.tasks, cfg.executor)
        with stderr_to(out_dir / "logs" / f"{p.name}.log"):
            run_to_completion(cfg, make_executor(cfg, p.pipeline, p.name, p.tasks, p.workers, work / "logs" / p.name))

    metrics = measure(cfg, out_dir, work, n_in, issues, per_source)
    write_report(out_dir, metrics)
    shutil.rmtree(work)
    return metrics
