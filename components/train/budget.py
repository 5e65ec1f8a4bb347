"""What a training run costs: FLOPs per token, a memory estimate, and model FLOPs utilisation."""
from __future__ import annotations

import time

import torch

# Dense peak FLOP/s of common accelerators at 16-bit (vendor data sheets, without sparsity);
# matched as a substring of the device name, first match wins.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "B200": 2250e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
              "V100": 125e12, "T4": 65e12}


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention's 6 * layers * seq_len * d_model
    (forward + backward; Kaplan et al. 2020, as in nanoGPT's MFU)."""
    return 6 * n_params + 6 * n_layers * seq_len * d_model


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """The model's parameters (every expert of an MoE), or only those that train (LoRA: the adapters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def active_parameters(model: torch.nn.Module) -> int:
    """Parameters a token passes through: all of a dense model; with MoE, top_k of the experts'."""
    n_params = count_parameters(model)
    config = getattr(model, "config", None)
    experts = getattr(config, "num_local_experts", 0) or getattr(config, "num_experts", 0)  # Mixtral | Qwen-MoE, OLMoE
    top_k = getattr(config, "num_experts_per_tok", 0)
    if not experts:
        return n_params
    expert_params = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
    return n_params - expert_params + expert_params * top_k // experts


def model_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(active parameters, layers, width) of a Hugging Face causal LM, counted once even if sharded."""
    config = getattr(model, "config", None)  # plain torch modules: only the 6N term
    return active_parameters(model), getattr(config, "num_hidden_layers", 0), getattr(config, "hidden_size", 0)


def memory_estimate(model: torch.nn.Module, micro_batch: int, seq_len: int, world: int, sharded: bool,
                    activation_bytes: int = 4) -> dict[str, float]:
    """Bytes per rank: fp32 params, grads and AdamW's two moments (16 B/param, divided by the
    ranks under FSDP), plus activations without recomputation (Korthikanti et al. 2022:
    seq * batch * d * (34 + 5 * heads * seq / d) per layer at 2 bytes, scaled to activation_bytes)."""
    _, n_layers, d = model_shape(model)
    n_params = count_parameters(model)  # every expert is held in memory
    heads = model.config.num_attention_heads
    share = 1 / world if sharded else 1.0
    per_layer = seq_len * micro_batch * d * (34 + 5 * heads * seq_len / d) * activation_bytes / 2
    est = {"params": 4 * n_params * share, "grads": 4 * n_params * share, "optimizer": 8 * n_params * share,
           "activations": n_layers * per_layer}
    est["total"] = sum(est.values())
    return est


def peak_flops(configured_tflops: float, device: torch.device) -> float | None:
    """The device's peak FLOP/s: from config, else from the table by GPU name; None if unknown (CPUs)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return None


def mfu(tokens_per_second: float, flops_token: float, world: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all ranks."""
    return tokens_per_second * flops_token / (peak * world) if peak else None


def seq_len(batch: dict) -> int:
    return int(batch["input_ids"].shape[-1]) if "input_ids" in batch else 0


def batch_tokens(batch: dict) -> int:
    """Tokens a batch trains on: its real (non-pad) tokens where it counts them, else its targets."""
    return int(batch.get("n_tokens", batch["n_targets"]))


class Throughput:
    """Tokens/s and MFU over the steps since the last reading (one per progress line)."""

    def __init__(self, shape: tuple[int, int, int], peak: float | None, world: int) -> None:
        self.shape, self.peak, self.world = shape, peak, world  # shape: model_shape() before sharding
        self.tokens, self.flops, self.since = 0, 0.0, time.time()

    def add(self, batches: list[dict]) -> int:
        """Count one step's micro-batches; return its tokens."""
        tokens = sum(batch_tokens(b) for b in batches)
        self.tokens += tokens
        self.flops += sum(batch_tokens(b) * flops_per_token(*self.shape, seq_len(b)) for b in batches)
        return tokens

    def read(self) -> dict:
        now = time.time()
        seconds = max(1e-9, now - self.since)
        rates = {"tokens_per_s": self.tokens / seconds}
        if self.peak:
            rates["mfu"] = self.flops / seconds / (self.peak * self.world)
        self.tokens, self.flops, self.since = 0, 0.0, now
        return rates
