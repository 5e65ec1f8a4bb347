"""DPO: the sft model is both the starting policy and the frozen reference.

The reference log-probs of every pair are computed once, before the first update
(when policy == reference), and cached in the artifact: no second model in memory.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.align.config import AlignConfig
from components.tasks import preference_pairs
from components.train.chat import encode_chat, epoch_indices, generate, pad_batch
from components.train.losses import IGNORE, dpo_loss, sequence_logps
from components.train.loop import make_accelerator, train

log = logging.getLogger(__name__)


def encode_pair(tokenizer, pair: dict) -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
    prompt = pair["prompt"]
    chosen = encode_chat(tokenizer, prompt + [{"role": "assistant", "content": pair["chosen"]}])
    rejected = encode_chat(tokenizer, prompt + [{"role": "assistant", "content": pair["rejected"]}])
    return chosen, rejected


def pairs_batch(encoded: list, idx: list[int], pad_id: int) -> dict:
    """Tensors [pairs, 2 (chosen, rejected), length]: rows are pairs, so ranks split them whole."""
    flat = pad_batch([seq for i in idx for seq in encoded[i]], pad_id)
    batch = {k: v.view(len(idx), 2, -1) for k, v in flat.items()}
    batch["n_targets"] = len(idx)
    batch["n_tokens"] = int(flat["attention_mask"].sum())
    return batch


def pair_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """[pairs, 2] summed log-probs of the chosen and rejected responses, in one forward pass."""
    ids, labels, mask = (batch[k].flatten(0, 1) for k in ("input_ids", "labels", "attention_mask"))
    return sequence_logps(model, ids, labels, mask).float().view(-1, 2)


@torch.no_grad()
def all_logps(model: torch.nn.Module, encoded: list, pad_id: int, batch_size: int, accelerator) -> torch.Tensor:
    """[n_pairs, 2] log-probs (chosen, rejected) of the responses."""
    model.eval()
    out = []
    for i in range(0, len(encoded), batch_size):
        idx = list(range(i, min(i + batch_size, len(encoded))))
        with accelerator.autocast():
            out.append(pair_logps(model, pairs_batch(encoded, idx, pad_id)))
    return torch.cat(out)


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


def run(cfg: AlignConfig, inputs: dict[str, Path], out_dir: Path) -> dict:
    src = Path(inputs["sft"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    pad = tokenizer.pad_token_id
    raw_pairs = preference_pairs("train", cfg.num_pairs, cfg.seed)
    on_policy = 0
    if cfg.rejected == "on_policy":
        raw_pairs, on_policy = with_own_mistakes(model, tokenizer, raw_pairs, cfg)
    train_pairs = [encode_pair(tokenizer, p) for p in raw_pairs]
    val_pairs = [encode_pair(tokenizer, p) for p in preference_pairs("heldout", cfg.num_val_pairs, cfg.seed)]
    accelerator = make_accelerator(cfg, model)
    ref_train = all_logps(model, train_pairs, pad, cfg.batch_size, accelerator)
    ref_val = all_logps(model, val_pairs, pad, cfg.batch_size, accelerator)
    if accelerator.is_main_process:
        torch.save({"train": ref_train, "heldout": ref_val}, out_dir / "ref_logps.pt")
    log.info("align: reference log-probs of %d + %d pairs cached", len(train_pairs), len(val_pairs))

    def batch_fn(step: int, micro: int) -> dict:
        idx = epoch_indices(len(train_pairs), cfg.batch_size, cfg.seed, step * cfg.grad_accum + micro)
        batch = pairs_batch(train_pairs, idx, pad)
        batch["ref"] = ref_train[idx]
        return batch

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logps = pair_logps(model, batch)
        losses, chosen_r, rejected_r = dpo_loss(logps[:, 0], logps[:, 1], batch["ref"][:, 0], batch["ref"][:, 1],
                                                cfg.beta, cfg.loss)
        if cfg.rpo_alpha:  # keep the correct answers likely while separating them from the wrong ones
            chosen_len = (batch["labels"][:, 0] != IGNORE).sum(-1).clamp(min=1)
            losses = losses - cfg.rpo_alpha * logps[:, 0] / chosen_len
        return losses.sum(), {"reward_accuracy": float((chosen_r > rejected_r).float().mean()),
                              "reward_margin": float((chosen_r - rejected_r).mean())}

    def evaluate(model: torch.nn.Module) -> dict:
        logps = all_logps(model, val_pairs, pad, cfg.batch_size, accelerator)
        rewards = cfg.beta * (logps - ref_val)
        return {
            "val_reward_accuracy": float((rewards[:, 0] > rewards[:, 1]).float().mean()),
            "val_reward_margin": float((rewards[:, 0] - rewards[:, 1]).mean()),
            "val_preference_accuracy": float((logps[:, 0] > logps[:, 1]).float().mean()),
        }

    metrics = train(model, cfg, batch_fn, loss_fn, out_dir, evaluate, accelerator=accelerator,
                    export=(tokenizer, out_dir / "model"))
    before = float((ref_val[:, 0] > ref_val[:, 1]).float().mean())
    return {**metrics, "train_pairs": len(train_pairs), "on_policy_rejected": on_policy,
            "val_preference_accuracy_before": before}
