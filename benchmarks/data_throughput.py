"""Data stage throughput against a bare datatrove pipeline of the same blocks, in one run.

    .venv/bin/python benchmarks/data_throughput.py [--docs 3000] [--repeats 2]

Input: the embedded corpus (prose, planted duplicates, PII, junk) plus paragraph
recombinations of its prose up to --docs documents, written once as jsonl.
- stage: components.data.run.run (staging and validation, quality filters, exact dedup,
  MinHash with the cluster guard, PII, split, per-block tallies, report).
- bare:  the same datatrove blocks on the same tasks and workers, chained as plain
  LocalPipelineExecutor passes: reader -> Gopher quality, Gopher repetition, C4, FineWeb
  -> writer; exact dedup; MinHash's four datatrove passes; MinHash filter, PII -> writer.
Each run is a fresh subprocess (so peak memory is its own: self + worker processes,
from getrusage); runs alternate bare/stage to share the machine's noise. Prints docs/s
for both (best of --repeats, and median), the ratio stage/bare (target >= 0.95) and peak
RSS (the main process, and the largest worker process).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's components, run as a script


def build_input(path: Path, n_docs: int) -> int:
    """The embedded corpus, then new documents made of its prose paragraphs reshuffled (seeded)."""
    from components.data import embedded

    embedded.build(path, None, seed=0)
    lines = [l for l in path.read_text().splitlines() if l.strip()]
    paragraphs = [p for d in embedded.prose_documents() for p in d.split("\n\n")]
    rng = random.Random(0)
    i = 0
    while len(lines) < n_docs:
        text = "\n\n".join(rng.sample(paragraphs, rng.randint(3, 8)))
        lines.append(json.dumps({"id": f"mix-{i:06d}", "text": text}))
        i += 1
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def run_stage(src: Path, out: Path, cfg_kwargs: dict) -> None:
    from components.data.config import DataConfig
    from components.data.run import run

    run(DataConfig(sources=[str(src)], **cfg_kwargs), {}, out)


def run_bare(src: Path, out: Path, cfg_kwargs: dict) -> None:
    """The same blocks wired by hand, as a datatrove user would, without the stage's extras."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from components.data.blocks import ExactDedupFilter, PIIScrubber
    from components.data.config import DataConfig
    from components.data.pipelines import minhash_config, quality_blocks

    cfg = DataConfig(sources=[str(src)], **cfg_kwargs)
    mh = minhash_config(cfg)

    def sink(block):
        return JsonlWriter(str(out / "removed" / block))

    def execute(pipeline, tasks=1, workers=1, name="x"):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(out / "logs" / name),
                              skip_completed=False).run()

    # JsonlReader gives each task whole files: shard the input as the stage's staging does, so both
    # run the quality pass on the same number of tasks (malformed lines skipped, as the stage quarantines them)
    shards = out / "input"
    shards.mkdir(parents=True)
    handles = [open(shards / f"{t:05d}.jsonl", "w") for t in range(cfg.tasks)]
    kept = 0
    for line in open(src):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
            handles[kept % cfg.tasks].write(line)
            kept += 1
    for h in handles:
        h.close()

    execute([JsonlReader(str(shards)), *[b for _, b in quality_blocks(cfg, sink)], JsonlWriter(str(out / "quality"))],
            tasks=cfg.tasks, workers=min(cfg.workers, cfg.tasks), name="quality")
    execute([JsonlReader(str(out / "quality")), ExactDedupFilter(exclusion_writer=sink("exact")),
             JsonlWriter(str(out / "deduped"))], name="exact")
    execute([JsonlReader(str(out / "deduped")), MinhashDedupSignature(str(out / "sigs"), config=mh)], name="sigs")
    execute([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=mh)], tasks=mh.num_buckets,
            workers=min(cfg.workers, mh.num_buckets), name="buckets")
    execute([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=mh)], name="clusters")
    execute([JsonlReader(str(out / "deduped")), MinhashDedupFilter(str(out / "remove"), exclusion_writer=sink("minhash")),
             PIIScrubber(cfg.pii_keep_private_ips), JsonlWriter(str(out / "final"))], name="final")


def child(variant: str, src: Path, out: Path, cfg_kwargs: dict) -> None:
    """One timed run in this (fresh) process; prints seconds and peak RSS as JSON."""
    import logging

    logging.disable(logging.WARNING)
    from datatrove.utils.logging import logger

    logger.remove()  # datatrove's per-task INFO lines on stderr: not what is measured
    start = time.perf_counter()
    (run_stage if variant == "stage" else run_bare)(src, out, cfg_kwargs)
    seconds = time.perf_counter() - start
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest reaped worker
    print(json.dumps({"seconds": seconds, "peak_rss_mb": max(self_kb, children_kb) / 1024,
                      "self_rss_mb": self_kb / 1024, "children_rss_mb": children_kb / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    cfg_kwargs = {"tasks": 2, "workers": args.workers}
    if args.child:
        variant, src, out = args.child
        return child(variant, Path(src), Path(out), cfg_kwargs)

    tmp = Path(tempfile.mkdtemp(prefix="data_throughput_"))
    try:
        src = tmp / "input.jsonl"
        n = build_input(src, args.docs)
        print(f"input: {n} lines ({src.stat().st_size / 1e6:.1f} MB), tasks={cfg_kwargs['tasks']}, "
              f"workers={args.workers}, {args.repeats} alternating runs each")
        results: dict[str, list[dict]] = {"bare": [], "stage": []}
        for r in range(args.repeats):
            for variant in ("bare", "stage"):
                out = tmp / f"{variant}{r}"
                out.mkdir()
                proc = subprocess.run([sys.executable, __file__, "--child", variant, str(src), str(out)],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
                results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                shutil.rmtree(out)
        # best of N is the figure least disturbed by other load on the machine (timeit's reasoning)
        print(f"| variant | best docs/s of {args.repeats} | median docs/s | peak RSS MB (main process / largest worker) |")
        print("|---|---|---|---|")
        best, median = {}, {}
        for variant, runs in results.items():
            rates = [n / x["seconds"] for x in runs]
            best[variant], median[variant] = max(rates), statistics.median(rates)
            peak = max(runs, key=lambda x: x["peak_rss_mb"])
            print(f"| {variant} | {best[variant]:.1f} | {median[variant]:.1f} | "
                  f"{peak['self_rss_mb']:.0f} / {peak['children_rss_mb']:.0f} |")
        print(f"ratio stage/bare, docs/s: best of {args.repeats} {best['stage'] / best['bare']:.3f}, "
              f"median {median['stage'] / median['bare']:.3f}  (target >= 0.95)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
