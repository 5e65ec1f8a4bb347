"""Pretrain a LLaMA-style decoder on the tokenizer's shards: from scratch, or from an HF checkpoint."""
from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer

from components.context import StageContext
from components.model.build import build_model, load_checkpoint
from components.pretrain.config import PretrainConfig
from components.train.next_token import train_next_token

log = logging.getLogger(__name__)


def run(cfg: PretrainConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    tokenizer = AutoTokenizer.from_pretrained(Path(inputs["tokenizer"]) / "hf")
    model = load_checkpoint(cfg.model, tokenizer) if cfg.model.init_from else build_model(cfg.model, tokenizer, cfg.seed)
    metrics = train_next_token(model, tokenizer, cfg, cfg.model.context_length, cfg.max_val_tokens, inputs["tokenizer"], ctx)
    if cfg.max_steps == 0:
        log.info("pretrain: %s imported unchanged, validation loss %.4f", cfg.model.init_from, metrics["val_loss"])
    return metrics
