"""Chat examples -> token ids with labels on assistant tokens only (shared by sft, align and eval),
and the text a template ends an assistant turn with."""
from __future__ import annotations

from components.chat.named_templates import template_text
from components.train.losses import IGNORE

END = "<|end|>"

def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The conversation with `system_prompt` as its first turn, unless it has a system turn of its own."""
    if not system_prompt or (messages and messages[0]["role"] == "system"):
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]


def use_template(tokenizer, name: str) -> None:
    """Give the tokenizer the named template, or the one in the Jinja file `name` (project: keep its own);
    it is saved with the model, so align and eval render what sft trained on."""
    text = template_text(name)
    if text is not None:
        tokenizer.chat_template = text


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
