"""Supervised fine-tuning on chat examples, loss on assistant tokens only."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.sft.config import SFTConfig
from components.tasks import sft_examples
from components.train.chat import encode_chat, epoch_indices, pad_batch
from components.train.losses import IGNORE, lm_loss
from components.train.loop import train

log = logging.getLogger(__name__)


def read_messages(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: invalid JSON ({err})") from err
        if not isinstance(row.get("messages"), list):
            raise ValueError(f"{path}:{n}: field 'messages' missing or not a list")
        rows.append(row)
    return rows


def encode_all(tokenizer, examples: list[dict], max_len: int) -> list[tuple[list[int], list[int]]]:
    encoded = [encode_chat(tokenizer, ex["messages"]) for ex in examples]
    kept = [(ids, labs) for ids, labs in encoded if len(ids) <= max_len and any(l != IGNORE for l in labs)]
    if len(kept) < len(encoded):
        log.warning("sft: skipped %d of %d examples (longer than %d tokens or nothing to train)",
                    len(encoded) - len(kept), len(encoded), max_len)
    if not kept:
        raise ValueError("sft: no usable training example")
    return kept


def masked_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    return lm_loss(model, batch)  # labels mask all but the assistant's tokens; MoE adds its router loss


def run(cfg: SFTConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    src = Path(inputs["pretrain"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    max_len = model.config.max_position_embeddings
    examples = read_messages(Path(cfg.data_path)) if cfg.data_path else sft_examples("train", cfg.num_examples, cfg.seed)
    train_rows = encode_all(tokenizer, examples, max_len)
    val_batch = pad_batch(encode_all(tokenizer, sft_examples("heldout", cfg.num_val_examples, cfg.seed), max_len),
                          tokenizer.pad_token_id)
    log.info("sft: %d training examples, %d steps of %d", len(train_rows), cfg.max_steps, cfg.batch_size * cfg.grad_accum)

    def batch_fn(step: int, micro: int) -> dict:
        idx = epoch_indices(len(train_rows), cfg.batch_size, cfg.seed, step * cfg.grad_accum + micro)
        batch = pad_batch([train_rows[i] for i in idx], tokenizer.pad_token_id)
        batch["n_targets"] = int((batch["labels"] != IGNORE).sum())
        batch["n_tokens"] = int(batch["attention_mask"].sum())
        return batch

    def evaluate(model: torch.nn.Module) -> dict:
        loss, _ = masked_loss(model, val_batch)
        return {"val_loss": float(loss) / int((val_batch["labels"] != IGNORE).sum())}

    metrics = train(model, cfg, batch_fn, masked_loss, out_dir, evaluate, export=(tokenizer, out_dir / "model"))
    return {**metrics, "train_examples": len(train_rows)}
