"""Reward model (DeepSpeed-Chat step 2): the sft model with a scalar head, trained on preference pairs.

The pairs are align's, read by align's functions (generated from the tasks, or reward.sources in the
shapes align.sources takes), split into training and held-out pairs the same way. Training goes through
the one loop (components/train/loop.py) with the pairwise loss; the export is a Hugging Face
sequence-classification model (num_labels=1) that AutoModelForSequenceClassification loads and that
scores as it did here. The manifest holds held-out pair accuracy, mean margin, mean chosen / rejected reward.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.align.batches import pairs_batch
from components.align.run import preference_data
from components.chat.batches import epoch_indices
from components.chat.heldout import write_heldout
from components.context import StageContext
from components.evidence import count_kinds, top_reasons
from components.reward.config import RewardConfig
from components.reward.model import all_rewards, pair_metrics, pair_rewards, scalar_head_model
from components.train import adapters
from components.train.budget import count_parameters
from components.train.epochs import with_epochs
from components.train.losses import pairwise_reward_loss
from components.train.loop import make_accelerator, train

log = logging.getLogger(__name__)


def reward_objective(cfg: RewardConfig):
    """The training loop's loss_fn: one forward over a pair batch's chosen and rejected rows, the pairwise loss."""
    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        rewards = pair_rewards(model, batch)
        losses = pairwise_reward_loss(rewards[:, 0], rewards[:, 1], cfg.margin, cfg.center_coef)
        detached = rewards.detach()
        return losses.sum(), {"pair_accuracy": float((detached[:, 0] > detached[:, 1]).float().mean()),
                              "reward_margin": float((detached[:, 0] - detached[:, 1]).mean())}

    return loss_fn


def run(cfg: RewardConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    src = Path(inputs["sft"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    pad = tokenizer.pad_token_id
    model = scalar_head_model(src, pad, cfg.seed)
    accelerator = make_accelerator(cfg, model, ctx.strategy)
    model.to(accelerator.device)  # the untrained scores are read before prepare
    train_pairs, val_pairs, quarantine, counts, heldout, val_groups = preference_data(cfg, model, tokenizer)
    if ctx.is_main:  # before any failure: kept with the failed build's files
        with open(out_dir / "quarantine.jsonl", "w") as f:  # every pair left out, with its reason
            f.writelines(json.dumps(row) + "\n" for row in quarantine)
        write_heldout(out_dir, heldout)  # the sources' held-out pairs
    if not train_pairs or not val_pairs:
        raise ValueError(f"reward: no usable {'training' if not train_pairs else 'held-out'} pair in "
                         f"{cfg.sources or 'the generated pairs'}: {len(quarantine)} left out "
                         f"({top_reasons(count_kinds(quarantine))}); see quarantine.jsonl")
    log.info("reward: %s", counts)
    cfg, epochs = with_epochs(cfg, len(train_pairs), "pairs")
    before = pair_metrics(all_rewards(model, val_pairs, pad, cfg.batch_size, accelerator), "untrained_val_")
    model = adapters.add_adapter(model, cfg, "reward", cfg.max_steps)  # the score head trains in full beside it
    n_params, n_trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    log.info("reward: %d of %d parameters trainable (adapter %s)", n_trainable, n_params, cfg.adapter)

    def batch_fn(step: int, micro: int) -> dict:
        return pairs_batch(train_pairs, epoch_indices(len(train_pairs), cfg.batch_size, cfg.seed,
                                                      step * cfg.grad_accum + micro), pad)

    def evaluate(model: torch.nn.Module) -> dict:
        return pair_metrics(all_rewards(model, val_pairs, pad, cfg.batch_size), groups=val_groups)  # in the loop's autocast

    metrics = train(model, cfg, batch_fn, reward_objective(cfg), out_dir, evaluate, accelerator=accelerator,
                    export=(tokenizer, out_dir / "model"), ctx=ctx)
    return {**metrics, **epochs, **counts, "trainable_params": n_trainable,
            "untrained_val_pair_accuracy": before["untrained_val_pair_accuracy"]}
