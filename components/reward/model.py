"""The reward model: the sft model's decoder with a scalar head, as a Hugging Face sequence classifier.

`AutoModelForSequenceClassification` with num_labels=1 reads the score at each row's last token that
is not padding (found through config.pad_token_id), so the exported directory scores a conversation as
training did, for anyone loading it with transformers. The head is new (seeded init); the decoder's
weights are the sft model's (its LM head is left out).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from components.align.batches import Pair, pairs_batch
from components.chat.batches import pad_batch
from components.chat.template import encode_chat
from components.train.device import model_device, to_device

log = logging.getLogger(__name__)


def scalar_head_model(model_dir: Path, pad_token_id: int, seed: int) -> torch.nn.Module:
    """The causal LM in model_dir with its LM head replaced by a seeded 1-output linear head, in float32."""
    if (Path(model_dir) / "adapter").is_dir():  # from_pretrained would read the base alone, silently
        raise ValueError(f"{model_dir} is a base model + an unmerged adapter (model/adapter): a sequence classifier "
                         "cannot start from it; train the sft stage with a merging adapter (none, lora, adalora, ia3)")
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the expected "lm_head unused, score newly initialised" report
    try:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, pad_token_id=pad_token_id,
                                                                   dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.config.use_cache = False
    return model


def pair_rewards(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """[pairs, 2] rewards (chosen, rejected) of a pairs_batch, one forward over its 2 x pairs rows, in float32."""
    ids, mask = batch["input_ids"].flatten(0, 1), batch["attention_mask"].flatten(0, 1)
    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float().view(-1, 2)


@torch.no_grad()
def all_rewards(model: torch.nn.Module, encoded: list[Pair], pad_id: int, batch_size: int, accelerator=None) -> torch.Tensor:
    """[n_pairs, 2] rewards of every pair, batch_size pairs per forward, in length order (less padding; the
    padding never changes a score: it is read at the last real token and attention ignores the pads)."""
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: max(len(seq[0]) for seq in encoded[i]))
    out = torch.empty(len(encoded), 2)
    where = model_device(model)
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        batch = to_device(pairs_batch(encoded, idx, pad_id), where)
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            out[torch.tensor(idx)] = pair_rewards(model, batch).cpu()
    return out


def pair_metrics(rewards: torch.Tensor, prefix: str = "val_", groups: list[str] | None = None) -> dict:
    """Held-out accuracy (chosen scored above rejected), mean margin and mean chosen / rejected reward; with
    groups (each pair's source or task) of more than one kind, the accuracy of each too, as
    `<prefix>pair_accuracy/<group>` (where a mixed set's figure hides a source the model does not learn)."""
    chosen, rejected = rewards[:, 0], rewards[:, 1]
    right = chosen > rejected
    out = {f"{prefix}pair_accuracy": float(right.float().mean()),
           f"{prefix}reward_margin": float((chosen - rejected).mean()),
           f"{prefix}chosen_reward": float(chosen.mean()), f"{prefix}rejected_reward": float(rejected.mean())}
    if groups is not None and len(set(groups)) > 1:
        if len(groups) != len(right):
            raise ValueError(f"pair_metrics: {len(groups)} groups for {len(right)} pairs")
        for group in sorted(set(groups)):
            mine = torch.tensor([g == group for g in groups])
            out[f"{prefix}pair_accuracy/{group}"] = float(right[mine].float().mean())
    return out


@torch.no_grad()
def score_conversations(model: torch.nn.Module, tokenizer, conversations: list[list[dict]], batch_size: int) -> list[float]:
    """The reward of each conversation (its last turn the answer judged), encoded as in training."""
    model.eval()
    rows = [encode_chat(tokenizer, conv, last_turn_only=True) for conv in conversations]
    scores, where = [], model_device(model)
    for i in range(0, len(rows), batch_size):
        batch = to_device(pad_batch(rows[i : i + batch_size], tokenizer.pad_token_id), where)
        scores += model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()[:, 0].tolist()
    return scores
