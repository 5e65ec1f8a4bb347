"""Pretraining throughput of the project's loop on one device: a GPT-2-small-sized LLaMA
(12 layers, d 768, 12 heads, SwiGLU 2048, vocabulary 50304 tied: ~124M parameters) at
context 1024, bf16, through components/train/loop.py train() as pretrain runs it.

    python -m benchmarks.gpu_throughput [--steps 30] [--batch-size 32] [--compile]   # on a GPU
    python -m benchmarks.gpu_throughput --tiny                                      # a smoke run anywhere

Prints tokens/s over the steps after warm-up (timed from outside the loop, at each batch
fetch: the loop synchronises once per step, so host time is device time) and MFU against
the device's dense bf16 peak (components/train/budget.py), with FLOPs per token counted as
the loop counts them (6N + 6 * layers * context * d: causal attention does half of the
12 * layers * context * d that PaLM's convention counts) and by PaLM's convention beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile

import torch

from benchmarks.common import StepClock, median_rate, quiet
from components.model.build import build_model
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.train import budget, device
from components.train.loop import train
from components.train.losses import lm_loss

GPT2_SMALL = ModelConfig(n_layers=12, d_model=768, n_heads=12, n_kv_heads=12, ffn_hidden=2048, context_length=1024)
TINY = ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, context_length=64)


class Vocabulary:
    """What build_model needs of a tokenizer: throughput does not depend on the rest."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 3

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed (allocator, kernels, compile)")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences of the context length per step")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "no"])
    parser.add_argument("--compile", action="store_true", help="pretrain.compile=true (torch.compile of the model)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, for a smoke run on any machine")
    args = parser.parse_args()
    quiet(torch.get_num_threads())  # wandb disabled too: it is not on GPU machines

    shape, vocab = (TINY, 512) if args.tiny else (GPT2_SMALL, 50304)
    fields = {f.name for f in dataclasses.fields(PretrainConfig)}
    extra = {"compile": True} if args.compile and "compile" in fields else {}
    if args.compile and not extra:
        print("NOTE: this checkout's loop has no compile option; running eager")
    cfg = PretrainConfig(model=shape, max_steps=args.steps, warmup_steps=1, batch_size=args.batch_size,
                         mixed_precision=args.precision, log_every=10, save_every=10**9, **extra)
    model = build_model(shape, Vocabulary(vocab), seed=0)
    n_params, n_layers, d = budget.model_shape(model)
    seq = shape.context_length
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(4, vocab, (args.batch_size, seq), generator=gen) for _ in range(4)]
    clock, calls = StepClock(), []

    def batch_fn(step: int, micro: int) -> dict:
        calls.append(step)
        if len(calls) > 1:  # the first call is the loop's budget estimate
            clock.tick()
        ids = batches[step % len(batches)]
        return {"input_ids": ids, "n_targets": ids.numel() - len(ids), "n_tokens": ids.numel()}

    where = device.default_device()
    if where.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        metrics = train(model, cfg, batch_fn, lm_loss, out)
    clock.tick()
    seconds = clock.step_seconds(args.warmup)
    tokens_per_step = args.batch_size * seq
    tok_s = median_rate(seconds, tokens_per_step)
    ours = budget.flops_per_token(n_params, n_layers, d, seq)
    palm = 6 * n_params + 12 * n_layers * seq * d
    peak = budget.peak_flops(0.0, where)
    name = torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu"
    print(f"device {name}; torch {torch.__version__}; precision {device.resolve_precision(args.precision)}; "
          f"compile {bool(extra)}")
    print(f"model {n_params / 1e6:.1f}M parameters, {n_layers} layers, d {d}, context {seq}, "
          f"batch {args.batch_size} x {seq} = {tokens_per_step} tokens/step, {len(seconds)} timed steps "
          f"(first {args.warmup} not timed: {sum(clock.step_seconds(0)[:args.warmup]):.1f} s)")
    print(f"final loss {metrics['final_loss']:.3f}; step time median {sorted(seconds)[len(seconds) // 2] * 1e3:.1f} ms")
    if where.type == "cuda":
        print(f"peak memory {torch.cuda.max_memory_allocated(where) / 2**30:.1f} GiB")
    print(f"throughput tokens_per_s={tok_s:.0f}")
    if peak:
        print(f"throughput mfu={tok_s * ours / peak:.3f} (loop's FLOPs/token {ours:.3g}; "
              f"PaLM convention {tok_s * palm / peak:.3f}) against {peak / 1e12:.0f} TFLOP/s")
    else:
        print("throughput mfu=n/a (no peak FLOP/s known for this device)")


if __name__ == "__main__":
    main()
