"""Answers to chat prompts, generated with the model and cut where the template ends a turn."""
from __future__ import annotations

import torch

from components.chat.template import end_of_turn
from components.train.device import model_device


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
