"""DPO: the sft model is both the starting policy and the frozen reference (align.adapter: a PEFT method,
added after the reference log-probs are taken).

The reference log-probs of every pair are computed once, before the first update
(when policy == reference), and cached in the artifact: no second model in memory.
Pairs are generated from the tasks, or read from preference files (align.sources).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.align.batches import Encoded, pair_logps, pairs_batch, shared_pairs_batch
from components.align.config import AlignConfig
from components.chat.batches import epoch_indices
from components.chat.heldout import write_heldout
from components.chat.sources import read_source, select
from components.chat.generate import generate
from components.chat.template import encode_chat
from components.context import StageContext
from components.evidence import count_kinds, top_reasons
from components.tasks import preference_pairs
from components.config import check
from components.train import adapters
from components.train.data import load_shard
from components.train.device import model_device, to_device
from components.train.epochs import with_epochs
from components.train.losses import IGNORE, dpo_loss
from components.train.loop import make_accelerator, train
from components.train.replay import check_replay_tokens, with_replay_loss, with_replay_weight

log = logging.getLogger(__name__)


def encode_pair(tokenizer, pair: dict) -> tuple[Encoded, Encoded]:
    """Chosen and rejected conversations; labels on the final answer only (earlier turns are prompt)."""
    prompt = pair["prompt"]
    chosen = encode_chat(tokenizer, prompt + [{"role": "assistant", "content": pair["chosen"]}], last_turn_only=True)
    rejected = encode_chat(tokenizer, prompt + [{"role": "assistant", "content": pair["rejected"]}], last_turn_only=True)
    return chosen, rejected


def make_batch(cfg: AlignConfig, encoded: list, idx: list[int], pad_id: int, groups: int = 1,
               ref: torch.Tensor | None = None) -> dict:
    """The pairs idx in the configured layout (prefix-shared and packed, or two rows per pair; batches.py),
    with their reference log-probs if given; groups: the ranks the loop shards it over."""
    if cfg.prefix_sharing:
        return shared_pairs_batch(encoded, idx, pad_id, cfg.pack_tokens, groups, ref)
    return pairs_batch(encoded, idx, pad_id, ref)


@torch.no_grad()
def all_logps(model: torch.nn.Module, encoded: list, pad_id: int, cfg: AlignConfig, accelerator) -> torch.Tensor:
    """[n_pairs, 2] log-probs (chosen, rejected) of the responses, cfg.batch_size pairs per forward.

    Batches are formed in length order (less padding: real data varies by 10x in length);
    neither padding nor packing changes a pair's log-probs (tested), so neither does the order.
    """
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: max(len(seq[0]) for seq in encoded[i]))
    out = torch.empty(len(encoded), 2)
    where = model_device(model)
    for i in range(0, len(order), cfg.batch_size):
        idx = torch.tensor(order[i : i + cfg.batch_size])
        batch = make_batch(cfg, encoded, idx.tolist(), pad_id)
        with accelerator.autocast():
            logps = pair_logps(model, to_device(batch, where)).cpu()
        slots = batch["pair_index"] >= 0
        out[idx[batch["pair_index"][slots]]] = logps[slots]
    return out


def with_own_mistakes(model, tokenizer, pairs: list[dict], cfg: AlignConfig) -> tuple[list[dict], int]:
    """Pairs whose rejected answer is the model's own greedy answer wherever that one is wrong.

    Every rank decodes all prompts (greedy, so identically): no exchange needed.
    """
    model.eval()
    answers = generate(model, tokenizer, [p["prompt"] for p in pairs], cfg.rejected_max_new_tokens,
                       batch_size=4 * cfg.batch_size)
    out, replaced = [], 0
    for pair, answer in zip(pairs, answers):
        if answer and answer.strip() != pair["chosen"].strip():
            pair, replaced = {**pair, "rejected": answer}, replaced + 1
        out.append(pair)
    log.info("align: %d of %d rejected answers are the sft model's own mistakes", replaced, len(pairs))
    return out, replaced


def section(cfg) -> str:
    """The config section of a stage reading preference pairs: align, or reward (whose config has the same
    data fields and reads the pairs through these functions), for messages naming its keys."""
    return type(cfg).__name__.removesuffix("Config").lower()


def read_sources(cfg: AlignConfig) -> tuple[list[dict], list[dict], dict]:
    """(pairs, each with its "where" and "source", quarantined rows, per-source counts) from <section>.sources."""
    pairs, quarantined, per_source, name = [], [], {}, section(cfg)
    for source in cfg.chat_sources:
        kept, bad, counts = read_source(source, name, cfg.strict)
        pairs += [{**pair, "where": where, "source": source.name} for pair, where in kept]
        quarantined += bad
        counts.pop("files")
        per_source[source.name] = counts
        log.info("%s: %s: %d pairs, %d quarantined", name, source.name, len(kept), len(bad))
    return pairs, quarantined, per_source


def cap_prompt(enc: Encoded, max_prompt: int | None) -> Encoded:
    """The sequence with its prompt (the unlabelled tokens before the answer) cut to max_prompt tokens,
    the oldest removed and the first (the template's BOS) kept: TRL's max_prompt_length, keep_end."""
    ids, labels = enc
    prompt = next((i for i, lab in enumerate(labels) if lab != IGNORE), len(ids))
    cut = prompt - max_prompt if max_prompt else 0
    if cut <= 0:
        return enc
    return ids[:1] + ids[1 + cut:], labels[:1] + labels[1 + cut:]


def encode_fitting(tokenizer, pairs: list[dict], max_len: int, max_prompt: int | None = None,
                   section: str = "align") -> tuple[list[dict], list, list[dict]]:
    """(pairs that fit the model's context, their encodings, the others as quarantine rows)."""
    kept, encoded, too_long = [], [], []
    for i, pair in enumerate(pairs):
        enc = tuple(cap_prompt(seq, max_prompt) for seq in encode_pair(tokenizer, pair))
        longest = max(len(ids) for ids, _ in enc)
        if longest > max_len:
            too_long.append({"where": pair.get("where", f"generated pair {i}"), "rule": "too_long",
                             "source": pair.get("source"),
                             "reason": f"too long: {longest} tokens > the model's context of {max_len}"
                                       + ("" if max_prompt else f" ({section}.max_prompt_length can cut the prompt)")})
        else:
            kept.append(pair)
            encoded.append(enc)
    return kept, encoded, too_long


def prompt_hash(prompt: list[dict]) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True).encode()).hexdigest()


def split_heldout(pairs: list[dict], n_val: int, section: str = "align") -> tuple[list[int], list[int]]:
    """(train, held-out) indices: whole prompts in hash order until n_val pairs are held out.

    A hash, not the file order: the split does not move when files are reordered or grow, and
    pairs sharing a prompt stay on one side (no prompt seen in training is scored as held out).
    """
    by_prompt: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_prompt.setdefault(prompt_hash(pair["prompt"]), []).append(i)
    held: set[int] = set()
    for h in sorted(by_prompt):
        if len(held) >= n_val:
            break
        held.update(by_prompt[h])
    train_idx = [i for i in range(len(pairs)) if i not in held]
    if not train_idx:
        raise ValueError(f"config error: {section}.num_val_pairs={n_val} holds out all {len(pairs)} usable pairs "
                         f"of {section}.sources: lower it")
    return train_idx, sorted(held)


def preference_data(cfg: AlignConfig, model, tokenizer) -> tuple[list, list, list[dict], dict, list[dict], list[str]]:
    """(train encodings, held-out encodings, quarantine rows, counts for the manifest, the sources'
    held-out pairs as records: none for generated pairs, each held-out pair's group: its source's name, or
    its task for generated pairs)."""
    max_len, name = model.config.max_position_embeddings, section(cfg)
    counts, heldout = {"rejected_from": cfg.rejected_from}, []
    if cfg.sources:
        pairs, quarantined, per_source = read_sources(cfg)
        pairs, encoded, too_long = encode_fitting(tokenizer, pairs, max_len, cfg.max_prompt_length, name)
        train_idx, val_idx = split_heldout(pairs, cfg.num_val_pairs, name) if pairs else ([], [])  # none: run() says why
        names = [s.name for s in cfg.chat_sources]
        pools = [[i for i in train_idx if pairs[i]["source"] == source] for source in names]
        chosen = select(pools, list(cfg.chat_sources), cfg.num_pairs, cfg.seed)  # not the first N in file order
        train_enc, val_enc = [encoded[i] for i in chosen], [encoded[i] for i in val_idx]
        heldout = [{k: pairs[i][k] for k in ("prompt", "chosen", "rejected", "where", "source")} for i in val_idx]
        val_groups = [pairs[i]["source"] for i in val_idx]
        for source in names:
            per_source[source].update(too_long=sum(q["source"] == source for q in too_long),
                                      heldout=sum(pairs[i]["source"] == source for i in val_idx),
                                      used=sum(pairs[i]["source"] == source for i in chosen))
        counts.update(source_pairs=len(pairs) + len(too_long), quarantined_pairs=len(quarantined),
                      unused_pairs=len(train_idx) - len(chosen), sources=per_source)
        n_considered = len(pairs) + len(too_long)
        if n_considered and len(too_long) / n_considered > 0.2:
            log.warning("%s: %d of %d pairs (%.0f%%) left out as longer than %d tokens: set %s.max_prompt_length "
                        "or use a model with a longer context", name, len(too_long), n_considered,
                        100 * len(too_long) / n_considered, max_len, name)
    else:
        quarantined, counts["on_policy_rejected"] = [], 0
        train_raw = preference_pairs("train", cfg.num_pairs, cfg.seed)
        if cfg.rejected_from == "on_policy":
            train_raw, counts["on_policy_rejected"] = with_own_mistakes(model, tokenizer, train_raw, cfg)
        _, train_enc, too_long = encode_fitting(tokenizer, train_raw, max_len, cfg.max_prompt_length, name)
        val_kept, val_enc, val_too_long = encode_fitting(tokenizer, preference_pairs("heldout", cfg.num_val_pairs, cfg.seed),
                                                         max_len, cfg.max_prompt_length, name)
        val_groups = [p["task"] for p in val_kept]
        too_long += val_too_long
    if too_long:
        log.warning("%s: %d pairs longer than the model's context (%d tokens) left out: see quarantine.jsonl",
                    name, len(too_long), max_len)
    if quarantined:
        log.warning("%s: %d malformed source records quarantined (first: %s)", name, len(quarantined),
                    quarantined[0]["reason"])
    counts.update(train_pairs=len(train_enc), val_pairs=len(val_enc), too_long_pairs=len(too_long))
    return train_enc, val_enc, quarantined + too_long, counts, heldout, val_groups


def dpo_objective(cfg: AlignConfig):
    """The training loop's loss_fn: one policy forward per pair batch, against its cached reference log-probs."""
    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        slots = batch["pair_index"] >= 0  # every pair of pairs_batch; the filled slots of a packed batch
        logps, ref, n_tokens = pair_logps(model, batch)[slots], batch["ref"][slots], batch["n_response"][slots]
        losses, chosen_r, rejected_r = dpo_loss(logps[:, 0], logps[:, 1], ref[:, 0], ref[:, 1],
                                                cfg.beta, cfg.loss, n_tokens[:, 0], n_tokens[:, 1])
        if cfg.rpo_alpha:  # keep the correct answers likely while separating them from the wrong ones
            losses = losses - cfg.rpo_alpha * logps[:, 0] / n_tokens[:, 0].clamp(min=1)
        return losses.sum(), {"reward_accuracy": float((chosen_r > rejected_r).float().mean()),
                              "reward_margin": float((chosen_r - rejected_r).mean())}

    return loss_fn


def load_policy(cfg: AlignConfig, src: Path) -> torch.nn.Module:
    """The sft model to start from (4-bit for align.adapter=qlora). An sft adapter that does not merge
    (prefix, prompt, ptuning, qlora) comes with its base and trains further, the base frozen."""
    model = adapters.load_trainable(src, cfg, "align")
    check(not (adapters.lora.is_adapted(model) and model.active_peft_config.is_prompt_learning and cfg.prefix_sharing),
          "align.prefix_sharing", True, f"the sft model's {adapters.method_of(model)} adapter puts learned tokens before each row, which prefix-shared pairs would "
          "share: set align.prefix_sharing=false")
    return model


def replay_text(cfg: AlignConfig, inputs: dict[str, Path], vocab_size: int):
    """The tokenizer's train shard for align.replay (None when off), checked before any work."""
    if not cfg.replay:
        return None
    if "tokenizer" not in inputs:
        raise ValueError(f"align.replay={cfg.replay} adds a language-model loss on pretraining text: it needs the "
                         "tokenizer artifact's train shard (input 'tokenizer'); set align.replay=0 to train without it")
    tokens = load_shard(Path(inputs["tokenizer"]), "train")
    check_replay_tokens(tokens, vocab_size, "align.replay")
    return tokens


def mix_replay(cfg: AlignConfig, tokens, batch_fn, objective, max_len: int) -> tuple:
    """(batch_fn, loss_fn): with align.replay, align.replay_tokens of pretraining text in every batch, their mean
    next-token loss added with that weight (components/train/replay.py); without, the DPO batches as they were."""
    if tokens is None:
        return batch_fn, objective
    return (with_replay_weight(batch_fn, tokens, cfg.replay, cfg.replay_tokens, max_len, cfg.seed),
            with_replay_loss(objective))


def run(cfg: AlignConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    src = Path(inputs["sft"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(cfg.seed)
    model = load_policy(cfg, src)
    pad = tokenizer.pad_token_id
    replay = replay_text(cfg, inputs, model.config.vocab_size)
    accelerator = make_accelerator(cfg, model, ctx.strategy)
    if cfg.adapter != "qlora":  # a 4-bit model was placed on its GPU as it loaded
        model.to(accelerator.device)  # the reference pass (and on-policy answers) run before prepare
    train_pairs, val_pairs, quarantine, counts, heldout, _ = preference_data(cfg, model, tokenizer)
    if ctx.is_main:  # before any failure: kept with the failed build's files
        with open(out_dir / "quarantine.jsonl", "w") as f:  # every pair left out, with its reason
            f.writelines(json.dumps(row) + "\n" for row in quarantine)
        write_heldout(out_dir, heldout)  # the sources' held-out pairs: eval scores every model on them
    if not train_pairs or not val_pairs:
        raise ValueError(f"align: no usable {'training' if not train_pairs else 'held-out'} pair in "
                         f"{cfg.sources or 'the generated pairs'}: {len(quarantine)} left out "
                         f"({top_reasons(count_kinds(quarantine))}); see quarantine.jsonl")
    log.info("align: %s", counts)
    cfg, epochs = with_epochs(cfg, len(train_pairs), "pairs")
    ref_train = all_logps(model, train_pairs, pad, cfg, accelerator)
    ref_val = all_logps(model, val_pairs, pad, cfg, accelerator)
    if ctx.is_main:
        torch.save({"train": ref_train, "heldout": ref_val}, out_dir / "ref_logps.pt")
    log.info("align: reference log-probs of %d + %d pairs cached", len(train_pairs), len(val_pairs))
    model = adapters.add_adapter(model, cfg, "align", cfg.max_steps)  # after the reference: it stays the sft model

    def batch_fn(step: int, micro: int) -> dict:
        idx = epoch_indices(len(train_pairs), cfg.batch_size, cfg.seed, step * cfg.grad_accum + micro)
        return make_batch(cfg, train_pairs, idx, pad, accelerator.num_processes, ref_train[idx])

    def evaluate(model: torch.nn.Module) -> dict:
        logps = all_logps(model, val_pairs, pad, cfg, accelerator)
        rewards = cfg.beta * (logps - ref_val)
        return {
            "val_reward_accuracy": float((rewards[:, 0] > rewards[:, 1]).float().mean()),
            "val_reward_margin": float((rewards[:, 0] - rewards[:, 1]).mean()),
            "val_preference_accuracy": float((logps[:, 0] > logps[:, 1]).float().mean()),
        }

    batch_fn, loss_fn = mix_replay(cfg, replay, batch_fn, dpo_objective(cfg), model.config.max_position_embeddings)
    metrics = train(model, cfg, batch_fn, loss_fn, out_dir, evaluate, accelerator=accelerator,
                    export=(tokenizer, out_dir / "model"), ctx=ctx)
    before = float((ref_val[:, 0] > ref_val[:, 1]).float().mean())
    return {**metrics, **epochs, **counts, "val_preference_accuracy_before": before}
