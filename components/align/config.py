from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from components.align.preference_config import PreferenceDataConfig
from components.config import check, check_choice, log_only
from components.train.adapter_config import AdapterConfig
from components.train.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class AlignConfig(TrainConfig, AdapterConfig, PreferenceDataConfig):
    """DPO against the frozen sft model; its log-probs are computed once, before training."""

    section: ClassVar[str] = "align"
    # on_policy needs checkable answers (a model answer differing from a task's is wrong)
    rejected_choices: ClassVar[tuple[str, ...]] = ("auto", "generated", "on_policy", "dataset")

    beta: float = 0.1  # strength of the KL anchor to the reference
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo (per-token log-ratios, as TRL) | hinge
    rpo_alpha: float = 1.0  # weight of the chosen answers' NLL added to the loss (RPO); 0: pure preference loss
    lr: float = 5e-5
    max_steps: int = 300
    eval_every: int = log_only(100)  # validation 3 times a stage: the report's validation curve
    warmup_steps: int = 10
    batch_size: int = 16  # pairs per micro-batch
    # sources, format, strict, num_pairs, max_prompt_length, num_val_pairs, rejected: the pairs
    # (preference_config.py); rejected also takes on_policy: where the sft model's own greedy answer is wrong,
    # that answer (its actual mistake; on the default it scored below generated on held-out pairs, 0.86-0.87 vs 0.90)
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
        self.check_preference_data()
        check(self.rejected_max_new_tokens > 0, "align.rejected_max_new_tokens", self.rejected_max_new_tokens, "must be > 0")
        self.check_adapter("align", "align.prefix_sharing" if self.prefix_sharing else None)
        check(self.pack_tokens >= 0, "align.pack_tokens", self.pack_tokens, "must be >= 0 (0: one pair per row)")
        check(self.replay >= 0, "align.replay", self.replay, "must be >= 0: the weight of the replay loss (0: off)")
        check(self.replay_tokens > 0, "align.replay_tokens", self.replay_tokens, "must be > 0 (align.replay=0 turns replay off)")
