from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from components.chat.formats import PREFERENCE_FORMATS
from components.chat.sources import ChatSource, parse_sources
from components.config import check, check_choice, input_files, log_only
from components.train.adapter_config import AdapterConfig
from components.train.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class AlignConfig(TrainConfig, AdapterConfig):
    """DPO against the frozen sft model; its log-probs are computed once, before training."""

    beta: float = 0.1  # strength of the KL anchor to the reference
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo (per-token log-ratios, as TRL) | hinge
    rpo_alpha: float = 1.0  # weight of the chosen answers' NLL added to the loss (RPO); 0: pure preference loss
    lr: float = 5e-5
    max_steps: int = 400
    eval_every: int = log_only(100)  # validation 4 times a stage: the report's validation curve
    warmup_steps: int = 10
    batch_size: int = 16  # pairs per micro-batch
    # preference files (.json list, .jsonl(.gz), .parquet, .csv; paths or globs; their content is in the cache
    # key) or mappings {path, format, name, weight, cap, prompt_key, chosen_key, rejected_key, system_key,
    # messages_key} (components/chat/sources.py); empty: pairs generated from the tasks (components/tasks)
    sources: list[Any] = input_files()
    format: str = "auto"  # the sources' format, or auto: detected per record (components/chat/formats.py)
    strict: bool = False  # true: the first malformed record fails the run; false: quarantined and counted
    num_pairs: int = 1500  # training pairs: generated, or at most this many from the sources (seeded draw)
    # prompt tokens kept per pair (TRL's max_prompt_length): a longer prompt loses its oldest tokens
    # (the template's first token kept); null: no cap (a pair over the context is left out)
    max_prompt_length: int | None = None
    num_val_pairs: int = 200  # held-out pairs: generated, or taken from the sources by a hash of the prompt
    # auto: generated for generated pairs, dataset with sources | generated: each task's plausible wrong
    # answer | on_policy: where the sft model's own greedy answer is wrong, that answer (its actual
    # mistake; on the default it scored below generated on held-out pairs, 0.86-0.87 vs 0.90) |
    # dataset: the sources' own rejected answers
    rejected: str = "auto"
    rejected_max_new_tokens: int = 24  # greedy decoding budget for on_policy answers
    # chosen and rejected in one row, their shared prompt computed once (a 4D attention mask keeps the
    # branches apart; sdpa or eager attention): the log-probs of two rows per pair to 1e-5 (or 1e-6 relative) in fp32, so
    # log only; false: two padded rows per pair
    prefix_sharing: bool = log_only(True)
    # with prefix_sharing: pairs packed into rows of up to this many tokens, no attention across pairs
    # (a longer pair gets a row alone); 0: one pair per row
    pack_tokens: int = log_only(128)
    # adapter, lora_*, adalora_target_rank, ia3_targets, num_virtual_tokens: the PEFT method (adapter_config.py);
    # the reference stays the sft model as it came in (its log-probs are computed before the adapter is added)
    # weight of the mean next-token loss on pretraining text (windows of the tokenizer's train shard, every
    # token trained) added to the DPO loss, so align keeps the language model (components/train/replay.py); 0: off
    replay: float = 1.0
    replay_tokens: int = 256  # replay next-token targets per micro-batch (windows up to the model's context)

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.beta > 0, "align.beta", self.beta, "must be > 0")
        check_choice("align.loss", self.loss, ("sigmoid", "ipo", "hinge"))
        check(self.rpo_alpha >= 0, "align.rpo_alpha", self.rpo_alpha, "must be >= 0")
        check_choice("align.format", self.format, ("auto", *PREFERENCE_FORMATS))
        self.chat_sources  # parsed and checked now (a pattern matching nothing, a bad key): named before planning
        check(self.max_prompt_length is None or self.max_prompt_length > 1, "align.max_prompt_length",
              self.max_prompt_length, "must be > 1, or null: no cap")
        check_choice("align.rejected", self.rejected, ("auto", "generated", "on_policy", "dataset"))
        # on_policy needs checkable answers (a model answer differing from a task's is wrong); a
        # dataset's open-ended answers have none, and its judged rejected answers are the signal
        check(not self.sources or self.rejected in ("auto", "dataset"), "align.rejected", self.rejected,
              "with align.sources the sources' own rejected answers are used: set auto or dataset")
        check(bool(self.sources) or self.rejected != "dataset", "align.rejected", self.rejected,
              "dataset needs align.sources; generated pairs take generated or on_policy")
        check(self.format == "auto" or bool(self.sources), "align.format", self.format,
              "only applies to align.sources (empty: generated pairs)")
        check(self.rejected_max_new_tokens > 0, "align.rejected_max_new_tokens", self.rejected_max_new_tokens, "must be > 0")
        check(self.num_pairs > 0, "align.num_pairs", self.num_pairs, "must be > 0")
        check(self.num_val_pairs > 0, "align.num_val_pairs", self.num_val_pairs, "must be > 0")
        self.check_adapter("align", "align.prefix_sharing" if self.prefix_sharing else None)
        check(self.pack_tokens >= 0, "align.pack_tokens", self.pack_tokens, "must be >= 0 (0: one pair per row)")
        check(self.replay >= 0, "align.replay", self.replay, "must be >= 0: the weight of the replay loss (0: off)")
        check(self.replay_tokens > 0, "align.replay_tokens", self.replay_tokens, "must be > 0 (align.replay=0 turns replay off)")

    @functools.cached_property
    def chat_sources(self) -> tuple[ChatSource, ...]:
        return tuple(parse_sources(self.sources, "align", self.format))

    @property
    def rejected_from(self) -> str:
        """Where the rejected answers come from, auto resolved."""
        if self.rejected == "auto":
            return "dataset" if self.sources else "generated"
        return self.rejected
