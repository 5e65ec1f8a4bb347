"""Answers to chat prompts, generated through transformers' GenerationConfig and cut where the template
ends a turn.

Where an answer stops comes from the model's own generation config, the one an export writes
(components/model/export.py: eos = the template's end of turn and eos), so plain `model.generate`
and this code stop at the same token. A decoding strategy is GenerationConfig kwargs on top of it.
"""
from __future__ import annotations

import logging

import torch

from components.chat.template import end_of_turn
from components.train import adapters
from components.train.device import model_device

log = logging.getLogger(__name__)


def generation_config(model, tokenizer, max_new_tokens: int, **decoding):
    """A GenerationConfig of `decoding` (its kwargs; none: greedy) and the answer budget, stopping and padding
    as the model's own generation config says. Only those ids are taken from the model: a checkpoint's own
    sampling defaults (many ship do_sample=true) would make a strategy mean something else per model."""
    from transformers import GenerationConfig

    own = model.generation_config
    pad = own.pad_token_id if own.pad_token_id is not None else tokenizer.pad_token_id
    config = GenerationConfig(eos_token_id=own.eos_token_id, pad_token_id=pad, bos_token_id=own.bos_token_id)
    unknown = config.update(max_new_tokens=max_new_tokens, **decoding)
    if unknown:
        raise ValueError(f"not GenerationConfig fields: {sorted(unknown)}")
    stops = own.eos_token_id if isinstance(own.eos_token_id, list) else [own.eos_token_id]
    end = tokenizer.encode(end_of_turn(tokenizer), add_special_tokens=False)
    if len(end) == 1 and end[0] not in stops:  # same answers (cut below), but decoded to max_new_tokens
        log.warning("NOTE: the model's generation_config does not stop at %r (eos_token_id=%s): answers are cut "
                    "there, but every one runs to max_new_tokens; export it with components.model.export",
                    end_of_turn(tokenizer), own.eos_token_id)
    return config


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int,
             num_return_sequences: int = 1, seed: int | None = None, **decoding) -> list[str]:
    """Answers to chat prompts (left-padded batches), cut at the template's end of turn: for each prompt
    its num_return_sequences answers in a row. With `seed`, each batch is seeded by (seed, its index), so a
    sampled answer depends on the seed and the batch it is drawn in, not on what ran before."""
    tokenizer.padding_side = "left"
    end = end_of_turn(tokenizer)
    config = generation_config(model, tokenizer, max_new_tokens, num_return_sequences=num_return_sequences, **decoding)
    answers = []
    for batch_index, i in enumerate(range(0, len(prompts), batch_size)):
        texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[i : i + batch_size]]
        # the template's text, tokenised as sft/align tokenise it (encode_chat): same prompt ids
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt",
                        return_token_type_ids=False).to(model_device(model))
        if seed is not None:
            torch.manual_seed(seed * 1_000_003 + batch_index)
        out = adapters.generate(model, enc["input_ids"], enc["attention_mask"], generation_config=config)
        for row in out[:, enc["input_ids"].shape[1] :].cpu():
            answers.append(cut_answer(tokenizer, tokenizer.decode(row, skip_special_tokens=False), end))
    return answers


def cut_answer(tokenizer, text: str, end: str) -> str:
    """The decoded text up to the end of the turn, without padding and eos."""
    return text.split(end)[0].replace(tokenizer.pad_token or "\0", "").replace(tokenizer.eos_token or "\0", "").strip()
