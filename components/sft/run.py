"""Supervised fine-tuning on chat examples, loss on assistant tokens only.

Examples come from the generated tasks, or from `sft.sources` in any instruction format
components/chat/formats.py reads. A bad record raises (sft.strict) or goes to quarantine.jsonl with its
reason; an example longer than the model's context is quarantined too; all are counted
in the metrics. Optionally packed (components/chat/batches.py) and/or trained through a PEFT method (adapters.py).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.chat.batches import epoch_indices, pack, packed_batch, pad_batch
from components.chat.heldout import write_heldout
from components.chat.sources import held_out, read_source, select
from components.chat.template import encode_chat, use_template, with_system_prompt
from components.context import StageContext
from components.evidence import count_kinds, top_reasons
from components.sft.config import SFTConfig
from components.tasks import sft_examples
from components.train import adapters
from components.train.budget import count_parameters
from components.train.data import load_shard
from components.train.device import model_device, to_device
from components.train.epochs import with_epochs
from components.train.losses import IGNORE, lm_loss
from components.train.loop import train
from components.train.replay import check_replay_tokens, with_replay_loss, with_replay_share

log = logging.getLogger(__name__)
Row = tuple[list[int], list[int]]


SOURCE_VAL_SHARE = 0.1  # at most this share of the sources' examples is held out for val_loss_sources


def load_examples(cfg: SFTConfig) -> tuple[list[tuple], list[dict], dict, dict, list[tuple]]:
    """([(example, where, source)], quarantined, records read per file, per-source counts, held out): the
    sources, or the generated tasks. From the sources: up to num_examples (at most a tenth) held out by
    a hash of the prompt, then at most num_examples by a seeded draw across them (weight, cap)."""
    if not cfg.sources:
        generated = sft_examples("train", cfg.num_examples, cfg.seed)
        return [(ex, f"generated[{i}]") for i, ex in enumerate(generated)], [], {"generated": len(generated)}, {}, []
    items, quarantined, per_file, per_source = [], [], {}, {}
    for source in cfg.chat_sources:
        kept, bad, counts = read_source(source, "sft", cfg.strict)
        items += [(ex, where, source.name) for ex, where in kept]
        quarantined += [{**q, "stage": "read"} for q in bad]
        per_file.update(counts.pop("files"))
        per_source[source.name] = counts
    held = held_out([json.dumps(ex["messages"][:-1]) for ex, _, _ in items],
                    min(cfg.num_val_examples, int(SOURCE_VAL_SHARE * len(items))))
    pools = [[i for i, item in enumerate(items) if item[2] == s.name and i not in held] for s in cfg.chat_sources]
    for source in cfg.chat_sources:
        per_source[source.name]["heldout"] = sum(1 for i in held if items[i][2] == source.name)
    chosen = select(pools, list(cfg.chat_sources), cfg.num_examples, cfg.seed)
    return [items[i] for i in chosen], quarantined, per_file, per_source, [items[i] for i in sorted(held)]


def fit_length(ids: list[int], labels: list[int], max_len: int, mode: str) -> Row | None:
    """The example cut to max_len tokens by `mode` (keep_start | keep_end: the first token, the
    template's BOS, stays), or None when it must be left out: mode drop, or no trained token left."""
    if len(ids) <= max_len:
        return ids, labels
    if mode == "keep_start":
        ids, labels = ids[:max_len], labels[:max_len]
    elif mode == "keep_end":
        ids, labels = ids[:1] + ids[len(ids) - max_len + 1:], labels[:1] + labels[len(labels) - max_len + 1:]
    else:
        return None
    return (ids, labels) if any(label != IGNORE for label in labels[1:]) else None


def encode_examples(tokenizer, examples: list[tuple], max_len: int, mode: str = "drop",
                    system_prompt: str | None = None) -> tuple[list[Row], list[dict]]:
    """(rows, too long): examples over max_len tokens are cut by `mode`, or quarantined with their length;
    one with no trainable token is an error (the loss would silently skip it)."""
    rows, too_long = [], []
    for ex, where, *source in examples:
        try:
            ids, labels = encode_chat(tokenizer, with_system_prompt(ex["messages"], system_prompt))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        if all(label == IGNORE for label in labels):
            raise ValueError(f"{where}: no assistant token to train on after the chat template "
                             f"(roles: {[m['role'] for m in ex['messages']]})")
        row = fit_length(ids, labels, max_len, mode)
        if row is None:
            too_long.append({"where": where, "stage": "encode", "rule": "too_long", "source": (source or [None])[0],
                             "reason": f"{len(ids)} tokens, longer than sft.max_length / the model's context of "
                                       f"{max_len} (sft.truncation_mode={mode})"})
            continue
        rows.append(row)
    return rows, too_long


def warn_if_mostly_too_long(n_too_long: int, n_examples: int, max_len: int, what: str, setting: str) -> None:
    if n_examples and n_too_long / n_examples > 0.2:
        log.warning("%s: %d of %d (%.0f%%) left out as longer than %d tokens: raise %s (or the model's context), "
                    "or set a truncation mode", what, n_too_long, n_examples, 100 * n_too_long / n_examples,
                    max_len, setting)


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


def training_rows(cfg: SFTConfig, tokenizer, max_len: int, ctx: StageContext) -> tuple[list[Row], list[Row], list[dict], dict]:
    """(training rows, the sources' held-out rows, quarantine rows (written), counts for the manifest)."""
    examples, quarantined, per_file, per_source, source_val = load_examples(cfg)
    train_rows, too_long = encode_examples(tokenizer, examples, max_len, cfg.truncation_mode, cfg.system_prompt)
    source_val_rows, val_too_long = encode_examples(tokenizer, source_val, max_len, cfg.truncation_mode, cfg.system_prompt)
    for name, counts in per_source.items():
        counts["too_long"] = sum(1 for q in too_long + val_too_long if q["source"] == name)
        counts["used"] = sum(1 for ex in examples if ex[2] == name) - sum(1 for q in too_long if q["source"] == name)
    too_long += val_too_long
    quarantined += too_long
    write_quarantine(ctx, quarantined)
    if ctx.is_main:  # what val_loss_sources scored, for the eval stage to score every model on
        scored = [ex for ex in source_val if ex[1] not in {q["where"] for q in val_too_long}]
        write_heldout(ctx.out_dir, [{"messages": with_system_prompt(ex["messages"], cfg.system_prompt), "where": where,
                                     "source": source} for ex, where, source in scored])
    if not train_rows:  # the failed build's files (this quarantine) are set aside where its error says
        raise ValueError(f"sft: no usable training example in {cfg.sources or 'the generated tasks'}: "
                         f"{len(quarantined)} quarantined ({top_reasons(count_kinds(quarantined))}); see quarantine.jsonl")
    if quarantined:
        log.warning("sft: %d records quarantined (%d unreadable, %d longer than %d tokens; %s): see quarantine.jsonl "
                    "in the artifact", len(quarantined), len(quarantined) - len(too_long), len(too_long), max_len,
                    top_reasons(count_kinds(quarantined)))
    warn_if_mostly_too_long(len(too_long), len(examples) + len(source_val), max_len, "sft: examples", "sft.max_length")
    return train_rows, source_val_rows, quarantined, {
        "records_read": per_file, "sources": per_source, "heldout_source_examples": len(source_val_rows),
        "quarantined": len(quarantined), "quarantined_unreadable": len(quarantined) - len(too_long),
        "quarantined_too_long": len(too_long)}


def mix_replay(cfg: SFTConfig, inputs: dict[str, Path], batch_fn, max_len: int, vocab_size: int) -> tuple:
    """(batch_fn, loss_fn): with sft.replay, windows of the tokenizer's train shard make that share of every
    batch's targets (components/train/replay.py); without it, the chat batches and lm_loss unchanged."""
    if not cfg.replay:
        return batch_fn, lm_loss
    if "tokenizer" not in inputs:
        raise ValueError(f"sft.replay={cfg.replay} mixes pretraining text into sft: it needs the tokenizer "
                         "artifact's train shard (input 'tokenizer'); set sft.replay=0 to train without it")
    tokens = load_shard(Path(inputs["tokenizer"]), "train")
    check_replay_tokens(tokens, vocab_size, "sft.replay")
    log.info("sft: replay: %.0f%% of each batch's targets from the %d-token pretraining shard", 100 * cfg.replay,
             len(tokens))
    return with_replay_share(batch_fn, tokens, cfg.replay, max_len, cfg.seed), with_replay_loss(lm_loss)


def run(cfg: SFTConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    src = Path(inputs["pretrain"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    use_template(tokenizer, cfg.chat_template)
    torch.manual_seed(cfg.seed)
    model = adapters.load_base(src, cfg)  # float32; 4-bit for qlora
    max_len = min(model.config.max_position_embeddings, cfg.max_length or model.config.max_position_embeddings)
    train_rows, source_val_rows, quarantined, counts = training_rows(cfg, tokenizer, max_len, ctx)
    heldout = [(ex, "heldout") for ex in sft_examples("heldout", cfg.num_val_examples, cfg.seed)]
    val_rows, _ = encode_examples(tokenizer, heldout, max_len, cfg.truncation_mode, cfg.system_prompt)
    if not val_rows:
        raise ValueError(f"sft: none of the {len(heldout)} held-out examples fits {max_len} tokens: raise sft.max_length "
                         "or set sft.truncation_mode=keep_end")
    val_batches = {"val_loss": pad_batch(val_rows, tokenizer.pad_token_id)}
    if source_val_rows:  # the user's own held-out examples, scored apart from the generated tasks
        val_batches["val_loss_sources"] = pad_batch(source_val_rows, tokenizer.pad_token_id)

    batch_fn, bins = make_batch_fn(train_rows, cfg, max_len, tokenizer.pad_token_id)
    batch_fn, loss_fn = mix_replay(cfg, inputs, batch_fn, max_len, model.config.vocab_size)
    cfg, epochs = with_epochs(cfg, len(bins), "packed sequences" if cfg.packing else "examples")
    model = adapters.add_adapter(model, cfg, "sft", cfg.max_steps)  # adalora schedules its pruning by the steps
    n_params, n_trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    fill = nonpad_fraction(train_rows, bins, cfg)
    log.info("sft: %d training examples in %d sequences (%.1f%% real tokens), %d steps of %d; "
             "%d of %d parameters trainable (adapter %s)", len(train_rows), len(bins), 100 * fill, cfg.max_steps,
             cfg.batch_size * cfg.grad_accum, n_trainable, n_params, cfg.adapter)

    def evaluate(model: torch.nn.Module) -> dict:
        out = {}
        for name, batch in val_batches.items():
            loss, _ = lm_loss(model, to_device(batch, model_device(model)))  # labels: the assistant's tokens only
            out[name] = float(loss) / int((batch["labels"] != IGNORE).sum())
        return out

    metrics = train(model, cfg, batch_fn, loss_fn, out_dir, evaluate, export=(tokenizer, out_dir / "model"), ctx=ctx)
    return {**metrics, "train_examples": len(train_rows), "train_sequences": len(bins),
            "nonpad_fraction": round(fill, 4), **epochs, **counts, "params": n_params, "trainable_params": n_trainable}
