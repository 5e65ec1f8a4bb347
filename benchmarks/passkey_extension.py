"""The position-interpolation seed's passkey claim, in miniature, on the default model shape: a model
that retrieves within its trained context, asked past it with RoPE as trained (extrapolation), with
the training-free scalings (linear PI, dynamic NTK, YaRN), and after a short fine-tune at the longer
length with PI (the `extend` recipe) or without it (plain extrapolation, fine-tuned).

The retrieval skill comes from copy_skill.py's passkey rows (random filler ids, a fixed marker, a
5-digit key, a question ending in the marker) trained with the loss on the answered key alone: the
full LM loss over the unpredictable filler never learns it at this size (benchmarks/README.md). The
base trains at rows of --context ids; lengths are multiples of it (the whole row, key and answer
included), depths random. Whole-key accuracy over 128 held-out rows a length.

    python -m benchmarks.passkey_extension [--context 64] [--steps 1500] [--finetune-steps 100] [--position alibi]

--position alibi trains the same with ALiBi biases instead of RoPE (issue 15's RoPE / ALiBi comparison): asked
past its context as trained, then fine-tuned at the longer length (no scaling to apply).
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from benchmarks.common import Vocabulary, build_model, quiet
from benchmarks.copy_skill import fit, passkey_accuracy, passkey_rows
from components.model.config import ModelConfig

ROW_EXTRA = 20  # ids of a passkey row besides its filler (BOS, marker, key, question, answer)


def with_rope(model, context: int, scaling: str, factor: float, position: str = "rope"):
    """`model`'s weights under another RoPE (the buffers are recomputed, the weights shared); ALiBi: as trained."""
    cfg = ModelConfig(context_length=context, rope_scaling=scaling, rope_factor=factor if scaling != "none" else 1.0,
                      position=position)
    other = build_model(cfg, Vocabulary(), 0)
    other.load_state_dict(model.state_dict())
    return other.eval()


def keys_right(model, held_out: dict[int, torch.Tensor]) -> list[float]:
    return [passkey_accuracy(model, rows)[1] for rows in held_out.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=64, help="trained row length (ids)")
    parser.add_argument("--multiples", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=100)
    parser.add_argument("--finetune-multiple", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--finetune-lr-ratio", type=float, default=1 / 3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--position", choices=["rope", "alibi"], default="rope", help="pretrain.model.position")
    args = parser.parse_args()
    quiet(args.threads)
    generator = torch.Generator().manual_seed(0)
    fillers = {m: m * args.context - ROW_EXTRA for m in args.multiples}
    held_out = {m: passkey_rows(128, n, torch.Generator().manual_seed(1)) for m, n in fillers.items()}
    start = time.perf_counter()
    base = build_model(ModelConfig(context_length=args.context, position=args.position), Vocabulary(), 0)
    fit(base, lambda: passkey_rows(args.batch, fillers[1], generator), 5, args.steps, args.lr)
    print(f"base: {args.steps} steps at {args.context} ids, {time.perf_counter() - start:.0f} s")
    print(f"{'condition':<44} " + " ".join(f"{f'{m}x':>6}" for m in args.multiples))
    alibi = args.position == "alibi"  # no position scaling to apply: as trained, and fine-tuned as it is
    for scaling in ("none",) if alibi else ("none", "linear", "dynamic", "yarn"):
        accs = [passkey_accuracy(with_rope(base, args.context, scaling, m, args.position), held_out[m])[1]
                for m in args.multiples]
        name = "ALiBi as trained" if alibi else f"RoPE {scaling} (no fine-tune)"
        print(f"{name:<44} " + " ".join(f"{a:>6.2f}" for a in accs), flush=True)
    tuned_at = args.finetune_multiple
    for scaling in ("none",) if alibi else ("linear", "none"):
        model = with_rope(copy.deepcopy(base), args.context, scaling, tuned_at, args.position).train()
        fit(model, lambda: passkey_rows(args.batch, tuned_at * args.context - ROW_EXTRA, generator), 5,
            args.finetune_steps, args.lr * args.finetune_lr_ratio, warmup=10,
            report=lambda step, loss: step % 100 or print(f"  step {step}: loss {loss:.3f}, keys at {tuned_at}x "
                                                          f"{passkey_accuracy(model, held_out[tuned_at])[1]:.2f}", flush=True))
        name = f"{'ALiBi' if alibi else 'PI' if scaling == 'linear' else 'no PI'} + {args.finetune_steps} steps at {tuned_at}x"
        print(f"{name:<44} " + " ".join(f"{a:>6.2f}" for a in keys_right(model.eval(), held_out)), flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
