"""Data stage throughput against datatrove's FineWeb example order and a bare pipeline, in one run.

    .venv/bin/python benchmarks/data_throughput.py [--docs 3000] [--repeats 3] [--quick]

Input: the embedded corpus (prose, planted duplicates, PII, junk) plus paragraph
recombinations of its prose up to --docs documents, written once as jsonl.
- stage: components.data.run.run (sources read and validated inside the first pass, the reordered quality filters with
  one warm tokenizer, exact dedup, MinHash with the cluster guard, PII, split, per-block
  tallies, report).
- datatrove_fineweb: the same blocks as datatrove ships them, in its examples/fineweb.py order
  (Gopher repetition, Gopher quality, C4, FineWeb), with exact dedup after them and the cluster
  guard before MinHash's filter, as LocalPipelineExecutor passes on the same tasks and workers
  (components/data/reference.py). It must keep the same documents as the stage: checked.
- bare: the stage's own blocks wired by hand as plain LocalPipelineExecutor passes (reader ->
  quality filters -> writer; exact dedup; MinHash's four datatrove passes without the guard;
  MinHash filter, PII -> writer): what the stage's wiring costs or saves.
Each run is a fresh subprocess (so peak memory is its own: self + worker processes, from
getrusage); the variants' order rotates from one repeat to the next, to share the machine's
noise. Prints docs/s of each (best of --repeats, and median), whether the stage and
datatrove's order kept the same document ids, and the headline ratios (median over repeats
of the ratio within a repeat; higher = ours faster):
    ratio data_vs_datatrove_fineweb=<x.xx>   (target >= 1.5)
    ratio data_vs_bare_datatrove=<x.xx>      (bare has no guard, no tallies, no report)
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
from components.context import StageContext

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


def run_stage(src: Path, out: Path, cfg_kwargs: dict) -> list[Path]:
    from components.data.config import DataConfig
    from components.data.run import run

    run(DataConfig(sources=[str(src)], **cfg_kwargs), {}, StageContext.local(out))
    return [out / "train", out / "validation"]


def shard_input(src: Path, shards: Path, tasks: int) -> Path:
    """JsonlReader gives each task whole files: shard the input as the stage's reader stripes one file over
    its tasks (line i to task i % tasks; malformed lines skipped, as the stage quarantines them), so
    every variant runs its quality pass on the same documents in the same tasks."""
    shards.mkdir(parents=True)
    handles = [open(shards / f"{t:05d}.jsonl", "w") for t in range(tasks)]
    for index, line in enumerate(open(src)):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
            handles[index % tasks].write(line)
    for h in handles:
        h.close()
    return shards


def run_datatrove_fineweb(src: Path, out: Path, cfg_kwargs: dict) -> list[Path]:
    """The same blocks as datatrove ships them, in its FineWeb example's order (components/data/reference.py)."""
    from components.data.config import DataConfig
    from components.data.reference import run_reference

    cfg = DataConfig(sources=[str(src)], **cfg_kwargs)
    run_reference(cfg, shard_input(src, out / "input", cfg.tasks), out)
    return [out / "train", out / "validation"]


def run_bare(src: Path, out: Path, cfg_kwargs: dict) -> list[Path]:
    """The stage's blocks wired by hand, as a datatrove user would, without the stage's extras."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from components.data.blocks import ExactDedupFilter, PIIScrubber
    from components.data.config import DataConfig
    from components.data.pipelines import minhash_config, quality_blocks
    from components.data.words import WarmSpaCyTokenizer

    cfg = DataConfig(sources=[str(src)], **cfg_kwargs)
    mh = minhash_config(cfg)

    def sink(block):
        return JsonlWriter(str(out / "removed" / block))

    def execute(pipeline, tasks=1, workers=1, name="x"):
        LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(out / "logs" / name),
                              skip_completed=False).run()

    shards = shard_input(src, out / "input", cfg.tasks)
    execute([JsonlReader(str(shards)), *[b for _, b in quality_blocks(cfg, sink)], JsonlWriter(str(out / "quality"))],
            tasks=cfg.tasks, workers=min(cfg.workers, cfg.tasks), name="quality")
    execute([JsonlReader(str(out / "quality")), ExactDedupFilter(exclusion_writer=sink("exact")),
             JsonlWriter(str(out / "deduped"))], name="exact")
    execute([JsonlReader(str(out / "deduped")), MinhashDedupSignature(str(out / "sigs"), config=mh,
                                                                      language=WarmSpaCyTokenizer())], name="sigs")
    execute([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=mh)], tasks=mh.num_buckets,
            workers=min(cfg.workers, mh.num_buckets), name="buckets")
    execute([MinhashDedupCluster(str(out / "buckets"), str(out / "remove"), config=mh)], name="clusters")
    execute([JsonlReader(str(out / "deduped")), MinhashDedupFilter(str(out / "remove"), exclusion_writer=sink("minhash")),
             PIIScrubber(cfg.pii_keep_private_ips), JsonlWriter(str(out / "final"))], name="final")
    return [out / "final"]


VARIANTS = {"datatrove_fineweb": run_datatrove_fineweb, "bare": run_bare, "stage": run_stage}


def kept_ids(folders: list[Path]) -> list[str]:
    from components.data.report import read_docs

    return sorted(d["id"] for folder in folders for d in read_docs(folder))


def child(variant: str, src: Path, out: Path, cfg_kwargs: dict) -> None:
    """One timed run in this (fresh) process; prints seconds, peak RSS and the kept document ids as JSON."""
    import logging

    logging.disable(logging.WARNING)
    from datatrove.utils.logging import logger

    logger.remove()  # datatrove's per-task INFO lines on stderr: not what is measured
    start = time.perf_counter()
    outputs = VARIANTS[variant](src, out, cfg_kwargs)
    seconds = time.perf_counter() - start
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest reaped worker
    print(json.dumps({"seconds": seconds, "peak_rss_mb": max(self_kb, children_kb) / 1024,
                      "self_rss_mb": self_kb / 1024, "children_rss_mb": children_kb / 1024,
                      "kept": kept_ids(outputs)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1500 documents, one repeat: about two minutes")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "SRC", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.docs, args.repeats = 1500, 1
    cfg_kwargs = {"tasks": 2, "workers": args.workers}
    if args.child:
        variant, src, out = args.child
        return child(variant, Path(src), Path(out), cfg_kwargs)

    tmp = Path(tempfile.mkdtemp(prefix="data_throughput_"))
    try:
        src = tmp / "input.jsonl"
        n = build_input(src, args.docs)
        print(f"input: {n} lines ({src.stat().st_size / 1e6:.1f} MB), tasks={cfg_kwargs['tasks']}, "
              f"workers={args.workers}, {args.repeats} runs each, order rotating", flush=True)
        names = list(VARIANTS)
        results: dict[str, list[dict]] = {v: [] for v in names}
        for r in range(args.repeats):
            for variant in names[r % len(names):] + names[:r % len(names)]:
                out = tmp / f"{variant}{r}"
                out.mkdir()
                proc = subprocess.run([sys.executable, __file__, "--child", variant, str(src), str(out)],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
                results[variant].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"  repeat {r + 1}: {variant} {n / results[variant][-1]['seconds']:.1f} docs/s", flush=True)
                shutil.rmtree(out)
        # best of N is the figure least disturbed by other load on the machine (timeit's reasoning)
        print(f"| variant | best docs/s of {args.repeats} | median docs/s | kept docs | "
              "peak RSS MB (main process / largest worker) |")
        print("|---|---|---|---|---|")
        best, median = {}, {}
        for variant, runs in results.items():
            rates = [n / x["seconds"] for x in runs]
            best[variant], median[variant] = max(rates), statistics.median(rates)
            peak = max(runs, key=lambda x: x["peak_rss_mb"])
            print(f"| {variant} | {best[variant]:.1f} | {median[variant]:.1f} | {len(runs[0]['kept'])} | "
                  f"{peak['self_rss_mb']:.0f} / {peak['children_rss_mb']:.0f} |")
        stage_kept, reference_kept = results["stage"][0]["kept"], results["datatrove_fineweb"][0]["kept"]
        same = all(x["kept"] == stage_kept for x in results["stage"] + results["datatrove_fineweb"])
        print(f"kept by stage {len(stage_kept)}, by datatrove_fineweb {len(reference_kept)}: "
              f"{'the same document ids' if same else 'DIFFERENT document ids'} "
              f"({len(set(stage_kept) - set(reference_kept))} only in stage, "
              f"{len(set(reference_kept) - set(stage_kept))} only in datatrove_fineweb)")
        for name, other in (("data_vs_datatrove_fineweb", "datatrove_fineweb"), ("data_vs_bare_datatrove", "bare")):
            within = statistics.median(results[other][r]["seconds"] / results["stage"][r]["seconds"]
                                       for r in range(args.repeats))
            print(f"ratio {name}={within:.2f}  (stage/{other} docs/s, median of {args.repeats} repeats; "
                  f"best of {args.repeats}: {best['stage'] / best[other]:.2f})")
        if not same:
            sys.exit("the stage and datatrove's FineWeb order kept different documents")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
