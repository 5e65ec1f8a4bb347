"""Chat examples -> token ids with labels on assistant tokens only (shared by sft and align)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from components.train.device import model_device
from components.train.losses import IGNORE

END = "<|end|>"


def encode_chat(tokenizer, messages: list[dict], last_turn_only: bool = False) -> tuple[list[int], list[int]]:
    """Ids of the rendered conversation, and labels that keep only each assistant turn as the
    template renders it after its generation prompt: the content and the template's own
    end-of-turn text (`<|end|>` here, `<|im_end|>\\n` in ChatML, `<|eot_id|>` in Llama 3, ...).
    With last_turn_only, only the final assistant turn (a DPO response).

    The trained spans are found on the rendered text (the template's own output), and
    tokens are mapped to them through offsets, so the mask cannot drift from the template.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        start, end = len(prefix), len(through)
        # templates that rewrite earlier turns (e.g. drop reasoning) cannot be masked by prefix
        if not (text.startswith(through) and through.startswith(prefix)
                and through[start:].lstrip().startswith(message["content"].strip()[:64])):
            raise ValueError(f"chat template does not render assistant turn {i} right after its prompt")
        spans.append((start, end))
    if last_turn_only:
        spans = spans[-1:]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        tok if b > a and any(s <= a and b <= e for s, e in spans) else IGNORE
        for tok, (a, b) in zip(ids, enc["offset_mapping"])
    ]
    return ids, labels


def end_of_turn(tokenizer) -> str:
    """The text the template closes an assistant turn with (what generation stops at)."""
    probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ANSWER"}]
    tail = tokenizer.apply_chat_template(probe, tokenize=False).split("ANSWER", 1)[-1].strip()
    return tail or tokenizer.eos_token


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict:
    """Right-padded input_ids, attention_mask and labels (IGNORE on padding)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, labs) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(labs)] = torch.tensor(labs)
        mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@functools.lru_cache(maxsize=4)
def _epoch_order(n_items: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_items)


def epoch_indices(n_items: int, batch_size: int, seed: int, position: int) -> list[int]:
    """Items of the batch at `position` (global micro-batch index), shuffled per epoch."""
    out = []
    for j in range(position * batch_size, (position + 1) * batch_size):
        epoch, offset = divmod(j, n_items)
        out.append(int(_epoch_order(n_items, seed, epoch)[offset]))
    return out


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int, **sampling) -> list[str]:
    """Answers to chat prompts (left-padded batches), cut at the template's end of turn."""
    tokenizer.padding_side = "left"
    end = end_of_turn(tokenizer)
    end_ids = tokenizer.encode(end, add_special_tokens=False)
    end_ids = sorted({tokenizer.eos_token_id, *(end_ids if len(end_ids) == 1 else [])})  # one token, or eos
    answers = []
    for i in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[i : i + batch_size]]
        # the template's text, tokenised as sft/align tokenise it (encode_chat): same prompt ids
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt",
                        return_token_type_ids=False).to(model_device(model))
        out = model.generate(**enc, max_new_tokens=max_new_tokens, eos_token_id=end_ids,
                             pad_token_id=tokenizer.pad_token_id, do_sample=bool(sampling), **sampling)
        for row in out[:, enc["input_ids"].shape[1] :].cpu():
            answers.append(tokenizer.decode(row, skip_special_tokens=False).split(end)[0]
                           .replace(tokenizer.pad_token, "").replace(tokenizer.eos_token, "").strip())
    return answers
