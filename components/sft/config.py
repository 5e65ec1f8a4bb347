from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from components.chat.formats import SFT_FORMATS
from components.chat.sources import ChatSource, parse_sources
from components.chat.named_templates import TEMPLATE_NAMES, template_problem
from components.config import check, check_choice, input_files, log_only, name_or_file
from components.train.adapter_config import AdapterConfig
from components.train.config import TrainConfig
TRUNCATION_MODES = ("drop", "keep_start", "keep_end")


@dataclass(frozen=True, kw_only=True)
class SFTConfig(TrainConfig, AdapterConfig):
    """Instruction tuning of the pretrained model: chat template, loss on assistant tokens only."""

    lr: float = 2e-3
    max_steps: int = 1000
    eval_every: int = log_only(250)  # validation 4 times a stage: the report's validation curve
    warmup_steps: int = 50
    batch_size: int = 32
    num_examples: int = 20000  # training examples: generated, or at most this many from the sources (seeded draw)
    num_val_examples: int = 200  # generated held-out examples for validation loss
    # paths / globs (.json list, .jsonl(.gz), .parquet, .csv) or mappings {path, format, name, weight, cap,
    # prompt_key, response_key, system_key, messages_key} (components/chat/sources.py); [] = the generated tasks
    sources: list[Any] = input_files()
    max_length: int | None = None  # tokens per example (null: the model's context, which also bounds it)
    truncation_mode: str = "drop"  # an example over max_length: drop (quarantined) | keep_start | keep_end
    system_prompt: str | None = None  # a system turn for every example without one of its own (null: none)
    # project (the tokenizer's own) | chatml | llama3 | zephyr | a path to a Jinja file (its content in the cache
    # key); saved with the model, so align and eval render it
    chat_template: str = name_or_file("project", TEMPLATE_NAMES)
    format: str = "auto"  # record shape of the sources: auto (detected per record) or one of SFT_FORMATS
    strict: bool = False  # true: the first bad record raises; false: quarantined (quarantine.jsonl) and counted
    packing: bool = False  # several examples per sequence, no attention across them (batch_size = packed sequences)
    # adapter, lora_*, adalora_target_rank, ia3_targets, num_virtual_tokens: the PEFT method (adapter_config.py)
    # share of each micro-batch's next-token targets that are pretraining text (windows of the tokenizer's
    # train shard up to the model's context, loss on every token) so sft keeps the language model; 0: off
    replay: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_examples > 0, "sft.num_examples", self.num_examples, "must be > 0")
        check(self.num_val_examples > 0, "sft.num_val_examples", self.num_val_examples, "must be > 0")
        check_choice("sft.format", self.format, ("auto", *SFT_FORMATS))
        self.chat_sources  # parsed and checked now: a bad entry fails naming its key, before any planning
        check(self.max_length is None or self.max_length > 1, "sft.max_length", self.max_length,
              "must be > 1, or null: the model's context")
        check_choice("sft.truncation_mode", self.truncation_mode, TRUNCATION_MODES)
        problem = template_problem(self.chat_template)
        check(problem is None, "sft.chat_template", self.chat_template, problem or "")
        check(self.system_prompt is None or self.system_prompt.strip() != "", "sft.system_prompt", self.system_prompt,
              "must be a non-empty string, or null")
        self.check_adapter("sft", "sft.packing" if self.packing else None)
        check(0 <= self.replay < 1, "sft.replay", self.replay,
              "must be in [0, 1): the share of each batch's trained tokens that are pretraining text (0: off)")

    @functools.cached_property
    def chat_sources(self) -> tuple[ChatSource, ...]:
        return tuple(parse_sources(self.sources, "sft", self.format))
