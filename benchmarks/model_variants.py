"""Cost of the model options against the dense fp32 model, measured in the same run:
tokens/s of a training step (forward, backward, AdamW) and the activation memory kept for
backward (bytes of the distinct tensors autograd saves during the forward).

    python -m benchmarks.model_variants [--steps 4] [--repeats 2]

Variants: gradient checkpointing (expected: same result, much less activation memory,
~1.3x the compute), MoE with 4 experts top-2 (expected: ~2x the parameters of a dense
layer active per token, so fewer tokens/s; 4x the expert parameters held).
The default pretrain shape: 4 layers, d_model 256, context 256, batch 8.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from components.model.build import build_model
from components.model.config import ModelConfig
from components.train import budget
from components.train.loop import enable_gradient_checkpointing
from components.train.losses import lm_loss

VOCAB = 768


class Vocab:
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 3

    def __len__(self) -> int:
        return VOCAB


VARIANTS = {
    "dense": (ModelConfig(), False),
    "dense + gradient checkpointing": (ModelConfig(), True),
    "moe 4 experts top-2": (ModelConfig(moe_experts=4, moe_top_k=2), False),
}


def saved_activation_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes autograd keeps from the forward for the backward (each storage counted once)."""
    storages: dict[int, int] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # saved too, but not activations

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = lm_loss(model, batch)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values())


def tokens_per_second(model: torch.nn.Module, batch: dict, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        loss, _ = lm_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - started)
    return batch["input_ids"].numel() / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig()
    batch = {"input_ids": torch.randint(8, VOCAB, (8, cfg.context_length))}
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    memory, params = {}, {}
    for _ in range(args.repeats):  # interleaved: load from other processes hits every variant alike
        for name, (model_cfg, checkpointing) in VARIANTS.items():
            model = build_model(model_cfg, Vocab(), seed=0).train()
            if checkpointing:
                enable_gradient_checkpointing(model)
            memory[name] = saved_activation_bytes(model, batch)
            params[name] = (sum(p.numel() for p in model.parameters()), budget.active_parameters(model))
            rates[name].append(tokens_per_second(model, batch, args.steps))
    base_rate, base_mem = statistics.median(rates["dense"]), memory["dense"]
    print(f"{'variant':<32} {'params':>8} {'active':>8} {'tok/s':>8} {'x dense':>8} {'saved act. MB':>14} {'x dense':>8}")
    for name in VARIANTS:
        rate = statistics.median(rates[name])
        print(f"{name:<32} {params[name][0] / 1e6:>7.2f}M {params[name][1] / 1e6:>7.2f}M {rate:>8.0f} "
              f"{rate / base_rate:>8.2f} {memory[name] / 2**20:>14.1f} {memory[name] / base_mem:>8.2f}")


if __name__ == "__main__":
    main()
