"""Extend: continue pretraining the pretrain model at a longer context with its RoPE scaled.

Measured on the same validation tokens: perplexity at the pretrain context before, and at the
long context three ways: the model as it was (positions it never saw), with the scaling but no
training (what interpolation alone gives), and after training (what this stage is for).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from components.context import StageContext
from components.extend.config import ExtendConfig
from components.model.build import load_checkpoint
from components.model.config import ModelConfig
from components.train.device import default_device
from components.train.data import fixed_windows, load_shard
from components.train.losses import mean_token_nll
from components.train.next_token import train_next_token

log = logging.getLogger(__name__)


def scaled_model_config(cfg: ExtendConfig, source: Path, original: int) -> ModelConfig:
    factor = cfg.rope_factor or cfg.context_length / original
    return ModelConfig(init_from=str(source), context_length=cfg.context_length, rope_scaling=cfg.rope_scaling,
                       rope_factor=factor, rope_original_context=original)


def perplexity(model: torch.nn.Module, shards: Path, context: int, max_tokens: int, batch_size: int) -> float:
    windows = fixed_windows(load_shard(shards, "validation"), context, max_tokens)
    model.eval()
    with torch.no_grad():
        return math.exp(mean_token_nll(model, windows, batch_size))


def run(cfg: ExtendConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    source = Path(inputs["pretrain"]) / "model"
    shards = Path(inputs["tokenizer"])
    source_config = AutoConfig.from_pretrained(source)
    if source_config.model_type == "alibi_llama":  # ALiBi has no rotary embedding to scale
        raise ValueError(f"config error: extend.rope_scaling={cfg.rope_scaling}: the pretrain model ({source}) uses "
                         "pretrain.model.position=alibi, which has no RoPE to scale: drop the extend stage")
    original = source_config.max_position_embeddings
    if cfg.context_length <= original:
        raise ValueError(f"config error: extend.context_length={cfg.context_length}: must be longer than the "
                         f"pretrain model's {original} positions ({source})")
    tokenizer = AutoTokenizer.from_pretrained(source)

    def ppl(model: torch.nn.Module, context: int) -> float:
        return perplexity(model, shards, context, cfg.max_val_tokens, cfg.batch_size)

    as_trained = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).to(default_device())
    before = {"val_ppl_short_before": ppl(as_trained, original), "val_ppl_long_unscaled": ppl(as_trained, cfg.context_length)}
    del as_trained
    model = load_checkpoint(scaled_model_config(cfg, source, original), tokenizer)
    before["val_ppl_long_scaled_untrained"] = ppl(model.to(default_device()), cfg.context_length)
    log.info("extend: %d -> %d tokens, RoPE %s x%.3g; before training: %s", original, cfg.context_length,
             cfg.rope_scaling, cfg.context_length / original, {k: round(v, 2) for k, v in before.items()})
    metrics = train_next_token(model, tokenizer, cfg, cfg.context_length, cfg.max_val_tokens, shards, ctx)
    exported = AutoModelForCausalLM.from_pretrained(out_dir / "model", dtype=torch.float32).to(default_device())  # as sft will load it
    after = {"val_ppl_long": ppl(exported, cfg.context_length), "val_ppl_short": ppl(exported, original)}
    log.info("extend: after %d steps: %s", metrics["steps"], {k: round(v, 2) for k, v in after.items()})
    return {**metrics, **before, **after, "context_before": original, "context_after": cfg.context_length}
