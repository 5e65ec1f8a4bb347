"""Next-token training on a tokenizer artifact's token shards (what pretrain and extend both run)."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from components.context import StageContext
from components.train.budget import count_parameters
from components.train.config import TrainConfig
from components.train.data import fixed_windows, load_shard, random_windows
from components.train.epochs import with_epochs
from components.train.loop import train
from components.train.losses import lm_loss, mean_token_nll

log = logging.getLogger(__name__)


def train_next_token(model: torch.nn.Module, tokenizer, cfg: TrainConfig, context: int, max_val_tokens: int,
                     shards: Path, ctx: StageContext) -> dict:
    """Next-token training on the tokenizer artifact's shards in random windows of `context` tokens,
    validation perplexity on fixed windows; exports the model with its tokenizer to out_dir/model.
    Pretrain and extend (the same at a longer context) share it."""
    out_dir = ctx.out_dir
    train_tokens = load_shard(shards, "train")
    val_windows = fixed_windows(load_shard(shards, "validation"), context, max_val_tokens)
    n_params = count_parameters(model)
    # an epoch: as many random windows as the shard holds whole ones
    cfg, epochs = with_epochs(cfg, len(train_tokens) // context, f"windows of {context} tokens")
    log.info("%.2fM parameters, %d train tokens, %d steps x %d x %d tokens",
             n_params / 1e6, len(train_tokens), cfg.max_steps, cfg.batch_size * cfg.grad_accum, context)

    def batch_fn(step: int, micro: int) -> dict:
        return random_windows(train_tokens, context, cfg.batch_size, cfg.seed, step, micro)

    def evaluate(model: torch.nn.Module) -> dict:
        loss = mean_token_nll(model, val_windows, cfg.batch_size)
        return {"val_loss": loss, "val_ppl": math.exp(loss)}

    metrics = train(model, cfg, batch_fn, lm_loss, out_dir, evaluate, export=(tokenizer, out_dir / "model"), ctx=ctx)
    if cfg.max_steps == 0:  # imported unchanged: still report how well it predicts this corpus
        model.eval()
        with torch.no_grad():
            metrics.update(evaluate(model))
    return {**metrics, **epochs, "params": n_params}
