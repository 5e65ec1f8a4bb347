from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from components.chat.formats import PREFERENCE_FORMATS
from components.chat.sources import ChatSource, parse_sources
from components.config import check, check_choice, input_files, log_only
from components.train.adapter_config import MERGING, AdapterConfig
from components.train.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class RewardConfig(TrainConfig, AdapterConfig):
    """A reward model (InstructGPT / DeepSpeed-Chat step 2): the sft model with a scalar head, trained on
    preference pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected - margin). The pairs are
    align's: generated from the tasks, or read from preference files by align's readers."""

    enabled: bool = False  # true: train the reward model (eval then scores every model's answers with it)
    lr: float = 5e-4  # a new head on a small model: 1e-4 did not fit even the training pairs on the smoke model
    max_steps: int = 300
    eval_every: int = log_only(100)  # validation 3 times a stage: the report's validation curve
    warmup_steps: int = 20
    batch_size: int = 16  # pairs per micro-batch
    margin: float = 0.0  # subtracted from r_chosen - r_rejected inside the loss (TRL's margin, one for every pair)
    # weight of the mean squared summed reward (r_chosen + r_rejected)^2 added to the loss: keeps rewards centred
    # on 0 (TRL's center_rewards_coefficient, Eisenstein et al. 2023); 0: off
    center_coef: float = 0.0
    # preference files, in the shapes align.sources takes (.json list, .jsonl(.gz), .parquet, .csv; paths or
    # globs; their content is in the cache key) or mappings {path, format, name, weight, cap, prompt_key,
    # chosen_key, rejected_key, system_key, messages_key}; empty: pairs generated from the tasks (components/tasks)
    sources: list[Any] = input_files()
    format: str = "auto"  # the sources' format, or auto: detected per record (components/chat/formats.py)
    strict: bool = False  # true: the first malformed record fails the run; false: quarantined and counted
    num_pairs: int = 1500  # training pairs: generated, or at most this many from the sources (seeded draw)
    # prompt tokens kept per pair (TRL's max_prompt_length): a longer prompt loses its oldest tokens
    # (the template's first token kept); null: no cap (a pair over the context is left out)
    max_prompt_length: int | None = None
    num_val_pairs: int = 200  # held-out pairs: generated, or taken from the sources by a hash of the prompt
    # auto: generated for generated pairs, dataset with sources | generated: each task's plausible wrong
    # answer | dataset: the sources' own rejected answers
    rejected: str = "auto"
    # adapter, lora_*, adalora_target_rank, ia3_targets: the PEFT method (adapter_config.py); the new score head
    # trains in full beside it. Only the merging ones: the reward model is exported as one plain classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_adapter("reward")
        check(self.adapter in ("none", *MERGING), "reward.adapter", self.adapter,
              f"the reward model is exported merged (one plain sequence classifier that eval and ppo load): "
              f"choose none or one of {', '.join(MERGING)}")
        check(self.margin >= 0, "reward.margin", self.margin, "must be >= 0 (0: the plain pairwise loss)")
        check(self.center_coef >= 0, "reward.center_coef", self.center_coef, "must be >= 0 (0: off)")
        check_choice("reward.format", self.format, ("auto", *PREFERENCE_FORMATS))
        self.chat_sources  # parsed and checked now (a pattern matching nothing, a bad key): named before planning
        check(self.max_prompt_length is None or self.max_prompt_length > 1, "reward.max_prompt_length",
              self.max_prompt_length, "must be > 1, or null: no cap")
        check_choice("reward.rejected", self.rejected, ("auto", "generated", "dataset"))
        check(not self.sources or self.rejected in ("auto", "dataset"), "reward.rejected", self.rejected,
              "with reward.sources the sources' own rejected answers are used: set auto or dataset")
        check(bool(self.sources) or self.rejected != "dataset", "reward.rejected", self.rejected,
              "dataset needs reward.sources; generated pairs take generated")
        check(self.format == "auto" or bool(self.sources), "reward.format", self.format,
              "only applies to reward.sources (empty: generated pairs)")
        check(self.num_pairs > 0, "reward.num_pairs", self.num_pairs, "must be > 0")
        check(self.num_val_pairs > 0, "reward.num_val_pairs", self.num_val_pairs, "must be > 0")

    @functools.cached_property
    def chat_sources(self) -> tuple[ChatSource, ...]:
        return tuple(parse_sources(self.sources, "reward", self.format))

    @property
    def rejected_from(self) -> str:
        """Where the rejected answers come from, auto resolved (as align's)."""
        if self.rejected == "auto":
            return "dataset" if self.sources else "generated"
        return self.rejected
