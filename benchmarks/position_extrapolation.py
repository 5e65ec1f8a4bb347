"""RoPE against ALiBi past the trained context (issue 15's comparison): for every pretrain artifact of a run,
validation perplexity of windows 1x, 2x and 4x the trained length (over all targets, and over the targets
past the trained length alone), and passkey retrieval at 1x and 2x. RoPE is measured as trained (`none`) and
with linear position interpolation to the window (`linear`, no fine-tuning); ALiBi as trained.

    python -m flows.pipeline run.until=pretrain                                  # the default (RoPE)
    python -m flows.pipeline run.until=pretrain pretrain.model.position=alibi    # ALiBi, same data and budget
    python -m benchmarks.position_extrapolation artifacts [--lengths 1 2 4] [--windows 16] [--trials 4]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def position_of(model_dir: Path) -> str:
    return "alibi" if json.loads((model_dir / "config.json").read_text()).get("model_type") == "alibi_llama" else "rope"


@torch.no_grad()
def nll_by_position(model, tokens: np.ndarray, length: int, n_windows: int) -> torch.Tensor:
    """[length - 1]: mean next-token NLL at each position over n_windows evenly spaced windows of `length` tokens."""
    starts = np.linspace(0, len(tokens) - length - 1, n_windows).astype(int)
    total = torch.zeros(length - 1)
    for start in starts:
        ids = torch.from_numpy(np.asarray(tokens[start : start + length], dtype=np.int64))[None]
        logits = model(input_ids=ids).logits[0, :-1].float()
        total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
    return total / len(starts)


def measure(model_dir: Path, tokenizer_dir: Path, args) -> list[dict]:
    from transformers import AutoConfig, AutoTokenizer

    import components.model.registry  # noqa: F401  registers the ALiBi classes with transformers' Auto classes
    from components.eval.passkey import accuracy_by_depth, filler_tokens, load_with_rope
    from components.train.data import load_shard

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    context = AutoConfig.from_pretrained(model_dir).max_position_embeddings
    tokens, filler = load_shard(tokenizer_dir, "validation"), filler_tokens(tokenizer_dir, tokenizer)
    position = position_of(model_dir)
    rows = []
    for condition in ["none", "linear"] if position == "rope" else ["none"]:
        for multiple in args.lengths:
            length = round(multiple * context)
            model = load_with_rope(model_dir, condition, max(1.0, multiple), context, "cpu")  # none: as saved
            nll = nll_by_position(model, tokens, length, args.windows)
            passkey = accuracy_by_depth(model, tokenizer, filler, length, args.depths, args.trials, 16, 0) \
                if multiple in args.passkey_lengths else None
            rows.append({"model": f"{position} ({model_dir.parent.name[:8]})", "condition": condition, "x": multiple,
                         "ppl": float(nll.mean().exp()),
                         "ppl_past_context": float(nll[context - 1 :].mean().exp()) if length > context else None,
                         "passkey": sum(passkey.values()) / len(passkey) if passkey else None})
            del model
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--lengths", type=float, nargs="+", default=[1, 2, 4])
    parser.add_argument("--passkey-lengths", type=float, nargs="+", default=[1, 2])
    parser.add_argument("--depths", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1])
    parser.add_argument("--windows", type=int, default=16, help="validation windows per length")
    parser.add_argument("--trials", type=int, default=4, help="passkey prompts per depth")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from benchmarks.passkey import newest

    tokenizer_dir = newest(args.artifacts, "tokenizer")
    models = sorted(p.parent / "model" for p in (args.artifacts / "pretrain").glob("*/manifest.json"))
    if not models:
        raise SystemExit(f"no pretrain artifact under {args.artifacts}: run the pipeline to pretrain first")
    start, rows = time.perf_counter(), []
    for model_dir in models:
        rows += measure(model_dir, tokenizer_dir, args)
    print("| model | condition | length | val ppl | ppl past the trained length | passkey |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        past = f"{r['ppl_past_context']:.1f}" if r["ppl_past_context"] is not None else "-"
        key = f"{r['passkey']:.2f}" if r["passkey"] is not None else "-"
        print(f"| {r['model']} | {r['condition']} | {r['x']:g}x | {r['ppl']:.1f} | {past} | {key} |")
    print(f"\n{time.perf_counter() - start:.0f} s; {args.windows} windows a length, passkey n={args.trials} a depth x "
          f"{len(args.depths)} depths; {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
