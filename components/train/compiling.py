"""torch.compile for the training loop (`<stage>.compile=true`), and the attention it uses on a CPU.

The compiled module serves the training forward only; the loop keeps the model itself for
everything else. On a CPU in bf16, LLaMA/Mixtral models train with grouped-query eager
attention while compiled:

Profiled (default model, 16 x 256 tokens, bf16, one thread), SDPA's CPU flash-attention
backward is an opaque kernel that took a third of a compiled step. Written as matmuls and a
softmax, attention is fused by inductor with the rest of the graph instead: 1.23x faster
compiled bf16 steps (SDPA with its math backend: 1.06x, as it computes in fp32 on a CPU). In
fp32 SDPA stays: this was 0.93x of it there (its kernel skips the masked half; fp32 matmuls
dominate the step). transformers' own eager attention is not usable for this: it repeats
K/V for grouped-query attention (expand + reshape), and torch 2.13's inductor returned NaN
gradients (with a finite loss) for that graph in bf16 with Accelerate's autocast wrapper.
Here each K/V head is shared by grouping its query heads into one matmul, which repeats
nothing. Same result as SDPA to float tolerance; the implementation is a runtime setting of
the model, never saved in its config.
"""
from __future__ import annotations

import logging
import os
import shutil

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from components.train.config import TrainConfig

log = logging.getLogger(__name__)

NAME = "gqa_eager"
MODEL_TYPES = ("llama", "mixtral")  # attention without softcapping or sinks: what components/model builds


def gqa_eager_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                        **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' attention interface: query (b, heads, s, d), key/value (b, kv_heads, s_kv, d),
    an additive float mask (b, 1, s, s_kv) from eager_mask; returns (b, s, heads, d) and the weights."""
    b, heads, s, d = query.shape
    kv_heads = key.shape[1]
    groups = query.reshape(b, kv_heads, heads // kv_heads * s, d)  # query heads h = kv * r + j share K/V head kv
    scores = torch.matmul(groups, key.transpose(2, 3)).view(b, heads, s, -1) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights.view(b, kv_heads, heads // kv_heads * s, -1), value).view(b, heads, s, d)
    return out.transpose(1, 2).contiguous(), weights


def register() -> str:
    """Make NAME a valid attn_implementation (with eager attention's additive mask); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, gqa_eager_attention)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME


def training_forward(model: torch.nn.Module, cfg: TrainConfig, accelerator: Accelerator) -> torch.nn.Module:
    """The module the training steps call: the prepared model itself, or (cfg.compile) torch.compile of it.

    The compiled wrapper shares the model's parameters and serves only the training forward:
    checkpoints, clipping, validation and export use the model itself, so saved keys never carry
    torch.compile's `_orig_mod.` prefix and eval mode never triggers a second compile.
    """
    if not cfg.compile:
        return model
    if accelerator.device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "clang++")):
        section = type(cfg).__name__.removesuffix("Config").lower()
        raise ValueError(f"config error: {section}.compile=True: torch.compile on a CPU generates C++ and needs a "
                         "compiler (g++ or clang++, or $CXX): install one, or set compile=false")
    return torch.compile(model)


def attention_for_compile(model: torch.nn.Module, cfg: TrainConfig, accelerator: Accelerator) -> str | None:
    """Compiled on a CPU in bf16, a LLaMA/Mixtral model trains with gqa_eager_attention (matmuls and a softmax
    that inductor fuses; SDPA's CPU kernel is opaque to it); in fp32 SDPA stays, as fast or faster there.
    Measurements: the module's docstring. Returns the implementation to restore once training ends
    (None: nothing changed)."""
    hf = accelerator.unwrap_model(model)
    config = getattr(hf, "config", None)
    if (not cfg.compile or accelerator.device.type != "cpu" or accelerator.mixed_precision != "bf16"
            or not hasattr(hf, "set_attn_implementation") or getattr(config, "model_type", None) not in MODEL_TYPES):
        return None
    previous = config._attn_implementation
    hf.set_attn_implementation(register())
    log.info("NOTE: compile on a CPU: %s attention while training (%s restored afterwards)", NAME, previous)
    return previous
