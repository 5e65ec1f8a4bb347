"""Eval on the user's own held-out data: the examples and pairs the sft and align stages held out of
sft.sources / align.sources (their artifacts' heldout.jsonl), scored for every model."""
from __future__ import annotations

from pathlib import Path

import torch

from components.chat.batches import pad_batch
from components.chat.heldout import read_heldout
from components.chat.template import encode_chat
from components.eval.metrics import preference_accuracy, wilson_interval
from components.train.device import model_device, to_device
from components.train.losses import IGNORE, lm_loss


def heldout_sets(inputs: dict) -> tuple[list[dict], list[dict]]:
    """(sft's held-out examples, align's held-out pairs) from the upstream artifacts; [] where none."""
    return read_heldout(inputs.get("sft")), read_heldout(inputs.get("align"))


@torch.no_grad()
def assistant_nll(model, tokenizer, examples: list[dict], batch_size: int) -> tuple[float | None, int]:
    """(mean NLL per assistant token, examples scored) under the model's own chat template: what sft's
    val_loss_sources measures. Examples longer than the model's context are left out (not scorable)."""
    context = model.config.max_position_embeddings
    rows = [row for row in (encode_chat(tokenizer, ex["messages"]) for ex in examples) if len(row[0]) <= context]
    total, targets = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = to_device(pad_batch(rows[i : i + batch_size], tokenizer.pad_token_id), model_device(model))
        loss, _ = lm_loss(model, batch)  # summed over the assistant's tokens (labels elsewhere IGNORE)
        total += float(loss)
        targets += int((batch["labels"][:, 1:] != IGNORE).sum())
    return (total / targets if targets else None), len(rows)


def fitting_pairs(tokenizer, pairs: list[dict], context: int) -> list[dict]:
    """The pairs whose longer conversation fits the model's context."""
    def length(pair: dict, side: str) -> int:
        return len(encode_chat(tokenizer, pair["prompt"] + [{"role": "assistant", "content": pair[side]}])[0])
    return [p for p in pairs if max(length(p, "chosen"), length(p, "rejected")) <= context]


def score_sources(model, tokenizer, examples: list[dict], pairs: list[dict], batch_size: int) -> dict:
    """metrics.json's `<model>.sources`: sft_loss (mean assistant-token NLL) and preference_accuracy (chosen
    more likely than rejected) on the held-out share of the user's sources, each with its n; {} without sources."""
    out: dict = {}
    if examples:
        out["sft_loss"], out["sft_n"] = assistant_nll(model, tokenizer, examples, batch_size)
        out["sft_heldout"] = len(examples)
    if pairs:
        scorable = fitting_pairs(tokenizer, pairs, model.config.max_position_embeddings)
        acc = preference_accuracy(model, tokenizer, scorable, batch_size) if scorable else None
        out.update(preference_accuracy=acc, preference_n=len(scorable), preference_heldout=len(pairs),
                   preference_accuracy_ci95=wilson_interval(acc, len(scorable)) if scorable else None)
    return out

