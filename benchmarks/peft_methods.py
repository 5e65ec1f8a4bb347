"""The PEFT methods side by side: trainable parameters, tokens/s, peak memory and task accuracy after a short sft.

    .venv/bin/python -m benchmarks.peft_methods --pretrain ARTIFACTS/pretrain/<key> [--steps 60] [--examples 2000]

Each method (sft.adapter) runs the sft stage itself (components/sft/run.py: the generated tasks, the one
training loop, the export) on the same pretrained model, in its own process so that its peak resident
memory (RSS) is its own; then the exported model is loaded back as eval loads it (adapters.load_model)
and scored by exact match on held-out tasks (greedy). qlora needs CUDA: on a CPU its row says so.
A pretrained default-size model: `python -m flows.pipeline run.until=pretrain` (its artifact directory).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from components.train.adapter_config import ADAPTERS

# sft's default lr for full fine-tuning; adapters train far fewer weights from a neutral start and take a
# larger step, as their papers do (LoRA / IA3 ~1e-2 on small models, prompt tuning ~3e-2)
LEARNING_RATES = {"none": 2e-3, "lora": 1e-2, "adalora": 1e-2, "qlora": 1e-2, "ia3": 1e-2,
                  "prefix": 3e-2, "prompt": 3e-2, "ptuning": 3e-2}


def run_one(method: str, pretrain: Path, steps: int, examples: int, n_eval: int, out: Path) -> dict:
    """The sft stage with sft.adapter=method, then its exported model scored: one row of the table."""
    import torch
    from transformers import AutoTokenizer

    from components.artifacts import read_manifest
    from components.context import StageContext
    from components.eval import metrics as m
    from components.sft.config import SFTConfig
    from components.sft.run import run
    from components.tasks import sft_examples
    from components.train import adapters

    cfg = SFTConfig(adapter=method, lr=LEARNING_RATES[method], max_steps=steps, warmup_steps=max(1, steps // 10),
                    num_examples=examples, num_val_examples=50, eval_every=0, save_every=10 * steps, log_every=steps)
    out.mkdir(parents=True)
    started = time.perf_counter()
    tokenizer_dir = read_manifest(pretrain)["inputs"]["tokenizer"]["path"]  # the shard sft.replay mixes in
    metrics = run(cfg, {"pretrain": pretrain, "tokenizer": Path(tokenizer_dir)}, StageContext.local(out))
    model, tokenizer = adapters.load_model(out / "model").eval(), AutoTokenizer.from_pretrained(out / "model")
    torch.manual_seed(0)
    accuracy, _, _ = m.task_accuracy(model, tokenizer, sft_examples("heldout", n_eval, 0), 24, 50)
    return {"method": method, "lr": cfg.lr, "trainable_params": metrics["trainable_params"], "params": metrics["params"],
            "tokens_per_s": metrics["tokens_per_second"], "final_loss": metrics["final_loss"],
            "val_loss": metrics.get("val_loss"), "task_accuracy": accuracy,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "exported": "merged" if not (out / "model" / adapters.ADAPTER_DIR).is_dir() else "base + adapter",
            "seconds": round(time.perf_counter() - started, 1)}


def table(rows: list[dict]) -> str:
    head = ("| sft.adapter | lr | trainable params | share | tokens/s | peak RSS (MB) | val loss | task accuracy "
            "| export |\n|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['method']} | | | | | | | | {r['skipped']} |")
            continue
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['trainable_params']:,} | "
                     f"{r['trainable_params'] / r['params']:.2%} | {r['tokens_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} | "
                     f"{r['val_loss']:.3f} | {r['task_accuracy']:.3f} | {'full model' if r['method'] == 'none' else r['exported']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain", type=Path, help="a pretrain artifact directory (holds model/)")
    parser.add_argument("--steps", type=int, default=60, help="sft optimizer steps per method (batch 32)")
    parser.add_argument("--examples", type=int, default=2000, help="generated training examples")
    parser.add_argument("--eval", type=int, default=200, help="held-out tasks scored per method")
    parser.add_argument("--methods", nargs="*", default=list(ADAPTERS))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one method, a JSON line
    parser.add_argument("--table", type=Path, help="only print the table of a run's JSON lines (its stderr)")
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from benchmarks.common import quiet

    quiet(threads=args.threads)
    if args.table:
        print(table([json.loads(line) for line in args.table.read_text().splitlines() if line.startswith("{")]))
        return
    if args.one:
        print(json.dumps(run_one(args.one, args.pretrain, args.steps, args.examples, args.eval, args.out)))
        return
    from components.train.adapter_config import cuda_available

    rows, scratch = [], Path(tempfile.mkdtemp(prefix="peft_methods_"))
    for method in args.methods:
        if method == "qlora" and not cuda_available():
            rows.append({"method": method, "skipped": "needs CUDA (sft.adapter=qlora fails at config time here)"})
            continue
        child = subprocess.run([sys.executable, "-m", "benchmarks.peft_methods", "--one", method, "--pretrain",
                                str(args.pretrain), "--steps", str(args.steps), "--examples", str(args.examples),
                                "--eval", str(args.eval), "--threads", str(args.threads), "--out", str(scratch / method)],
                               capture_output=True, text=True)
        if child.returncode:  # its own traceback, not only the command line
            raise SystemExit(f"peft_methods: {method} failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
