"""Supervised fine-tuning on chat examples, loss on assistant tokens only.

Examples come from the generated tasks, or from `sft.sources` in any instruction format
components/chat/formats.py reads. A bad record raises (sft.strict) or goes to quarantine.jsonl with its
reason; an example longer than the model's context is quarantined too; all are counted
in the metrics. Optionally packed (components/chat/batches.py) and/or trained through LoRA (lora.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.config import resolved_input
from components.chat.batches import epoch_indices, pack, packed_batch, pad_batch
from components.chat.formats import read_located, sft_record
from components.chat.template import encode_chat
from components.context import StageContext
from components.evidence import count_kinds, top_reasons
from components.sft.config import SFTConfig
from components.tasks import sft_examples
from components.train import lora
from components.train.budget import count_parameters
from components.train.device import model_device, to_device
from components.train.losses import IGNORE, lm_loss
from components.train.loop import train

log = logging.getLogger(__name__)
Row = tuple[list[int], list[int]]


def load_examples(cfg: SFTConfig) -> tuple[list[tuple[dict, str]], list[dict], dict]:
    """([(example, where)], quarantined, records read per file): the sources, or the generated tasks."""
    if not cfg.sources:
        generated = sft_examples("train", cfg.num_examples, cfg.seed)
        return [(ex, f"generated[{i}]") for i, ex in enumerate(generated)], [], {"generated": len(generated)}
    examples, quarantined, per_file = [], [], {}
    for path in resolved_input(cfg, "sources", "sft.sources"):  # the files the key hashed
        kept, bad = read_located(path, lambda rec, where: sft_record(rec, where, cfg.format), cfg.strict)
        examples += kept
        quarantined += [{**q, "stage": "read"} for q in bad]
        per_file[str(path)] = len(kept) + len(bad)
    return examples, quarantined, per_file


def encode_examples(tokenizer, examples: list[tuple[dict, str]], max_len: int) -> tuple[list[Row], list[dict]]:
    """(rows, quarantined): examples longer than the context are quarantined with their length;
    one with no trainable token is an error (the loss would silently skip it)."""
    rows, too_long = [], []
    for ex, where in examples:
        try:
            ids, labels = encode_chat(tokenizer, ex["messages"])
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if all(label == IGNORE for label in labels):
            raise ValueError(f"{where}: no assistant token to train on after the chat template "
                             f"(roles: {[m['role'] for m in ex['messages']]})")
        if len(ids) > max_len:
            too_long.append({"where": where, "stage": "encode",
                             "reason": f"{len(ids)} tokens, longer than the model's context of {max_len}"})
            continue
        rows.append((ids, labels))
    return rows, too_long


def write_quarantine(ctx: StageContext, quarantined: list[dict]) -> None:
    if ctx.is_main:  # every rank reads the same data; one writes
        with open(ctx.out_dir / "quarantine.jsonl", "w") as f:
            f.writelines(json.dumps(q) + "\n" for q in quarantined)


def make_batch_fn(rows: list[Row], cfg: SFTConfig, max_len: int, pad_id: int):
    """batch_fn(step, micro) for the loop, and the number of sequences it samples from.

    Unpacked: batch_size examples, right-padded. Packed: batch_size sequences of up to
    max_len tokens, each holding several whole examples (packed once; shuffled per epoch).
    """
    bins = pack([len(ids) for ids, _ in rows], max_len) if cfg.packing else [[i] for i in range(len(rows))]

    def batch_fn(step: int, micro: int) -> dict:
        idx = epoch_indices(len(bins), cfg.batch_size, cfg.seed, step * cfg.grad_accum + micro)
        if cfg.packing:
            batch = packed_batch([[rows[i] for i in bins[b]] for b in idx], pad_id)
        else:
            batch = pad_batch([rows[b] for b in idx], pad_id)
            batch["n_tokens"] = int(batch["attention_mask"].sum())
        batch["n_targets"] = int((batch["labels"] != IGNORE).sum())  # >= 1: encode_examples refuses examples with none
        return batch

    return batch_fn, bins


def nonpad_fraction(rows: list[Row], bins: list[list[int]], cfg: SFTConfig) -> float:
    """Share of the token positions the run computes on that hold real tokens (rows padded per batch)."""
    real = total = 0
    for position in range(cfg.max_steps * cfg.grad_accum):
        lengths = [sum(len(rows[i][0]) for i in bins[b]) for b in epoch_indices(len(bins), cfg.batch_size, cfg.seed, position)]
        real, total = real + sum(lengths), total + max(lengths) * len(lengths)
    return real / total


def run(cfg: SFTConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    src = Path(inputs["pretrain"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    max_len = model.config.max_position_embeddings

    examples, quarantined, per_file = load_examples(cfg)
    write_quarantine(ctx, quarantined)  # now: kept with the failed build's files if encoding raises
    train_rows, too_long = encode_examples(tokenizer, examples, max_len)
    quarantined += too_long
    write_quarantine(ctx, quarantined)
    if not train_rows:  # the failed build's files (this quarantine) are set aside where its error says
        raise ValueError(f"sft: no usable training example in {cfg.sources or 'the generated tasks'}: "
                         f"{len(quarantined)} quarantined ({top_reasons(count_kinds(quarantined))}); see quarantine.jsonl")
    if quarantined:
        log.warning("sft: %d records quarantined (%d unreadable, %d longer than %d tokens; %s): see quarantine.jsonl "
                    "in the artifact", len(quarantined), len(quarantined) - len(too_long), len(too_long), max_len,
                    top_reasons(count_kinds(quarantined)))
    val_rows, _ = encode_examples(tokenizer, [(ex, "heldout") for ex in sft_examples("heldout", cfg.num_val_examples, cfg.seed)], max_len)
    val_batch = pad_batch(val_rows, tokenizer.pad_token_id)

    if cfg.adapter == "lora":
        model = lora.add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets, "sft.lora_targets")
    n_params, n_trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    batch_fn, bins = make_batch_fn(train_rows, cfg, max_len, tokenizer.pad_token_id)
    fill = nonpad_fraction(train_rows, bins, cfg)
    log.info("sft: %d training examples in %d sequences (%.1f%% real tokens), %d steps of %d; "
             "%d of %d parameters trainable (adapter %s)", len(train_rows), len(bins), 100 * fill, cfg.max_steps,
             cfg.batch_size * cfg.grad_accum, n_trainable, n_params, cfg.adapter)

    def evaluate(model: torch.nn.Module) -> dict:
        loss, _ = lm_loss(model, to_device(val_batch, model_device(model)))  # labels: the assistant's tokens only
        return {"val_loss": float(loss) / int((val_batch["labels"] != IGNORE).sum())}

    metrics = train(model, cfg, batch_fn, lm_loss, out_dir, evaluate, export=(tokenizer, out_dir / "model"), ctx=ctx)
    return {**metrics, "train_examples": len(train_rows), "train_sequences": len(bins),
            "nonpad_fraction": round(fill, 4), "records_read": per_file, "quarantined": len(quarantined),
            "quarantined_unreadable": len(quarantined) - len(too_long), "quarantined_too_long": len(too_long),
            "params": n_params, "trainable_params": n_trainable}
