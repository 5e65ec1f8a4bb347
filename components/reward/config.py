from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from components.align.preference_config import PreferenceDataConfig
from components.config import check, log_only
from components.train.adapter_config import MERGING, AdapterConfig
from components.train.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class RewardConfig(TrainConfig, AdapterConfig, PreferenceDataConfig):
    """A reward model (InstructGPT / DeepSpeed-Chat step 2): the sft model with a scalar head, trained on
    preference pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected - margin). The pairs are
    align's: generated from the tasks, or read from preference files by align's readers."""

    section: ClassVar[str] = "reward"
    enabled: bool = True  # train the reward model (eval then scores every model's answers with it); false: no reward stage
    lr: float = 5e-4  # a new head on a small model: 1e-4 did not fit even the training pairs on the smoke model
    max_steps: int = 750  # held-out accuracy 0.60 at 250 steps, 0.735 at 750 (README, "Reward model")
    eval_every: int = log_only(125)  # validation 6 times a stage: the report's validation curve
    warmup_steps: int = 20
    batch_size: int = 16  # pairs per micro-batch
    margin: float = 0.0  # subtracted from r_chosen - r_rejected inside the loss (TRL's margin, one for every pair)
    # weight of the mean squared summed reward (r_chosen + r_rejected)^2 added to the loss: keeps rewards centred
    # on 0 (TRL's center_rewards_coefficient, Eisenstein et al. 2023); 0: off
    center_coef: float = 0.0
    # sources, format, strict, num_pairs, max_prompt_length, num_val_pairs, rejected: the pairs, read as align
    # reads them (preference_config.py)
    # adapter, lora_*, adalora_target_rank, ia3_targets: the PEFT method (adapter_config.py); the new score head
    # trains in full beside it. Only the merging ones: the reward model is exported as one plain classifier

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_adapter("reward")
        # why not the others, each tried: peft 0.21's prefix tuning of a sequence classifier looks for a
        # `past_key_values` argument, which transformers 5 renamed `cache` (it raises "Model does not support past
        # key values"); prompt / ptuning give the classifier embeddings without ids, so a padded row's score is read
        # at a pad; qlora: no 4-bit sequence classifier here
        check(self.adapter in ("none", *MERGING), "reward.adapter", self.adapter,
              f"the reward model is exported merged (one plain sequence classifier that eval and ppo load): "
              f"choose none or one of {', '.join(MERGING)} (prefix: peft 0.21 cannot prefix-tune a transformers 5 "
              "sequence classifier; prompt / ptuning: peft would read a padded row's score at a pad; qlora: no 4-bit "
              "classifier here)")
        check(self.margin >= 0, "reward.margin", self.margin, "must be >= 0 (0: the plain pairwise loss)")
        check(self.center_coef >= 0, "reward.center_coef", self.center_coef, "must be >= 0 (0: off)")
        self.check_preference_data()
