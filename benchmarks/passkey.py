"""Passkey retrieval grid on a run's artifacts: mean accuracy over depths per (condition, length),
then per depth. The seed's claim in miniature: RoPE as trained fails past the trained length,
PI plus the short `extend` fine-tune retrieves there.

    python -m benchmarks.passkey ARTIFACTS [--lengths 0.5 1 2 4] [--trials 10] [--png out.png]
    python -m benchmarks.passkey --metrics ARTIFACTS/eval/<key>/metrics.json   # print what eval measured

ARTIFACTS is a run's artifacts_dir: its tokenizer, pretrain and (when it ran) extend artifacts are
used (the newest of each). The conditions are eval's (components/eval/passkey.py), on the same prompts.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path


def newest(root: Path, stage: str) -> Path | None:
    found = sorted((p.parent for p in (root / stage).glob("*/manifest.json")), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def table(name: str, passkey: dict) -> str:
    conditions = [c for c, v in passkey.items() if isinstance(v, dict)]
    lengths = list(passkey[conditions[0]])
    lines = [f"{name} (context {passkey['context']}, n={passkey['n']} a cell, mean over depths)",
             "| condition | " + " | ".join(f"{x}x" for x in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for c in conditions:
        lines.append(f"| {c} | " + " | ".join(f"{sum(passkey[c][x].values()) / len(passkey[c][x]):.2f}" for x in lengths) + " |")
    lines += ["", "per depth (condition, length: accuracy at each depth)"]
    for c in conditions:
        for x in lengths:
            lines.append(f"  {c:8s} {x:>4s}x  " + "  ".join(f"{d}:{a:.2f}" for d, a in passkey[c][x].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="?", type=Path)
    parser.add_argument("--metrics", type=Path, help="an eval metrics.json: print its passkey tables and stop")
    parser.add_argument("--lengths", type=float, nargs="+", default=[0.5, 1, 2, 4])
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--conditions", nargs="+", default=["none", "linear", "dynamic", "yarn", "extend"])
    parser.add_argument("--png", type=Path, help="write the heat-map here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.metrics:
        metrics = json.loads(args.metrics.read_text())
        for name, r in metrics.items():
            if isinstance(r, dict) and r.get("passkey"):
                print(table(name, r["passkey"]), "\n")
        return

    import torch
    from transformers import AutoTokenizer

    from components.eval.config import EvalConfig
    from components.eval.passkey import PasskeyProbe
    from components.eval.passkey_report import plot_heatmaps

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cfg = EvalConfig(passkey_lengths=args.lengths, passkey_depths=args.depths, passkey_trials=args.trials,
                     passkey_conditions=args.conditions)
    extend = newest(args.artifacts, "extend")
    inputs = {"tokenizer": newest(args.artifacts, "tokenizer"), "pretrain": extend or newest(args.artifacts, "pretrain")}
    probe = PasskeyProbe.from_inputs(cfg, inputs)
    model_dir = Path(inputs["pretrain"]) / "model"
    start = time.perf_counter()
    passkey = probe.measure(model_dir, AutoTokenizer.from_pretrained(model_dir), with_extend=True, device="cpu")
    print(f"pretrain {newest(args.artifacts, 'pretrain').name}" + (f", extend {extend.name}" if extend else ", no extend"))
    print(table("base", passkey))
    print(f"\n{time.perf_counter() - start:.0f} s, {len(args.lengths)} lengths x {len(args.depths)} depths x "
          f"{args.trials} trials x {len([c for c in passkey if isinstance(passkey[c], dict)])} conditions")
    if args.png:
        plot_heatmaps(passkey, args.png, "base")
    print(json.dumps(passkey))


if __name__ == "__main__":
    main()
