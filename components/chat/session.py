"""A chat with a trained model through its own chat template: streamed tokens, decoding flags, history.

The conversation is rendered by the model's template (components/chat/template.py renders what sft
trained on), answers stop where the exported generation config says (the end of a turn), and a
decoding strategy is transformers GenerationConfig kwargs, as in eval (components/chat/generate.py).
Commands in the loop: /reset clears the history (the system prompt stays), /quit (or end of input) leaves.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Callable, Iterable

import torch

from components.chat.generate import cut_answer, generation_config
from components.chat.template import end_of_turn, with_system_prompt
from components.train import adapters
from components.train.device import default_device, model_device

Write = Callable[[str], None]
RESET, QUIT = "/reset", ("/quit", "/exit")


def decoding_kwargs(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                    num_beams: int = 1, repetition_penalty: float | None = None) -> dict:
    """The command line's decoding flags as GenerationConfig kwargs: temperature 0 is greedy, above 0 samples."""
    kwargs: dict = {"num_beams": num_beams}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature)
        kwargs.update({k: v for k, v in (("top_k", top_k), ("top_p", top_p)) if v is not None})
    elif top_k is not None or top_p is not None:
        raise ValueError("--top-k/--top-p act only when sampling: give --temperature > 0 too")
    if repetition_penalty is not None:
        kwargs["repetition_penalty"] = repetition_penalty
    return kwargs


def load_model(model_dir: Path):
    """(model, tokenizer) of an exported model directory, on the GPU when there is one."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        raise ValueError(f"{model_dir}: its tokenizer has no chat template to render a conversation with")
    model = adapters.load_model(model_dir).to(default_device()).eval()  # with its adapter, where not merged
    return model, tokenizer


class Chat:
    """One conversation: the history, and the next answer to it, streamed to `write` as it is decoded."""

    def __init__(self, model, tokenizer, decoding: dict, max_new_tokens: int, system: str | None = None,
                 seed: int = 0):
        self.model, self.tokenizer, self.system = model, tokenizer, system
        self.config = generation_config(model, tokenizer, max_new_tokens, **decoding)
        self.end = end_of_turn(tokenizer)
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.history: list[dict] = []
        torch.manual_seed(seed)  # sampled answers are reproducible for a given conversation

    def reset(self) -> None:
        self.history = []

    def _prompt_ids(self, write: Write) -> torch.Tensor:
        """The conversation rendered by the template; the oldest exchanges dropped while it overflows the context."""
        while True:
            messages = with_system_prompt(self.history, self.system)
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            fits = not self.context or ids.shape[1] + self.config.max_new_tokens <= self.context
            if fits or len(self.history) < 3:
                return ids.to(model_device(self.model))
            self.history = self.history[2:]
            write(f"(the oldest exchange was dropped: the model's context is {self.context} tokens)\n")

    @torch.no_grad()
    def reply(self, text: str, write: Write) -> str:
        """The answer to `text` (written as it is decoded), added to the history with it."""
        self.history.append({"role": "user", "content": text})
        ids = self._prompt_ids(write)
        mask = torch.ones_like(ids)
        if (self.config.num_beams or 1) > 1:  # transformers streams no beam search: the answer comes whole
            out = adapters.generate(self.model, ids, mask, generation_config=self.config)
            answer = self._visible(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False))
            write(answer)
        else:
            answer = self._stream(ids, mask, write)
        write("\n")
        self.history.append({"role": "assistant", "content": answer})
        return answer

    def _stream(self, ids: torch.Tensor, mask: torch.Tensor, write: Write) -> str:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False)
        failure: list[BaseException] = []

        def decode() -> None:
            try:
                adapters.generate(self.model, ids, mask, generation_config=self.config, streamer=streamer)
            except BaseException as err:  # re-raised below, in the caller's thread
                failure.append(err)
                streamer.end()

        worker = threading.Thread(target=decode, daemon=True)
        worker.start()
        text, shown = "", 0
        for piece in streamer:
            text += piece
            # until the turn has ended, the tail that may be the start of the end-of-turn text is held back
            visible = self._visible(text if self.end in text else text[: max(0, len(text) - len(self.end))])
            if len(visible) > shown:
                write(visible[shown:])
                shown = len(visible)
        worker.join()
        if failure:
            raise failure[0]
        answer = self._visible(text)
        if len(answer) > shown:
            write(answer[shown:])
        return answer

    def _visible(self, text: str) -> str:
        return cut_answer(self.tokenizer, text, self.end)


def converse(chat: Chat, lines: Iterable[str], write: Write, interactive: bool) -> None:
    """Answer each line of input; /reset clears the history, /quit or the end of input stops."""
    if interactive:
        write("chat: /reset clears the history, /quit leaves\n> ")
    for line in lines:
        text = line.strip()
        if text in QUIT:
            break
        if text == RESET:
            chat.reset()
            write("(history cleared)\n")
        elif text:
            chat.reply(text, write)
        if interactive:
            write("> ")


def stdout_writer(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
