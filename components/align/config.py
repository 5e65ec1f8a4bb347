from __future__ import annotations

from dataclasses import dataclass

from components.config import check, check_choice
from components.train.config import TrainConfig


@dataclass(kw_only=True)
class AlignConfig(TrainConfig):
    """DPO against the frozen sft model; its log-probs are computed once, before training."""

    beta: float = 0.1  # strength of the KL anchor to the reference
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo | hinge
    rpo_alpha: float = 1.0  # weight of the chosen answers' NLL added to the loss (RPO); 0: pure preference loss
    lr: float = 5e-5
    max_steps: int = 150
    warmup_steps: int = 10
    batch_size: int = 16  # pairs per micro-batch
    num_pairs: int = 1500  # generated training pairs (components/tasks)
    num_val_pairs: int = 200
    # generated: each task's plausible wrong answer; on_policy: where the sft model's own greedy
    # answer is wrong, that answer (its actual mistake, the most informative negative)
    rejected: str = "on_policy"
    rejected_max_new_tokens: int = 24  # greedy decoding budget for on_policy answers

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.beta > 0, "align.beta", self.beta, "must be > 0")
        check_choice("align.loss", self.loss, ("sigmoid", "ipo", "hinge"))
        check(self.rpo_alpha >= 0, "align.rpo_alpha", self.rpo_alpha, "must be >= 0")
        check_choice("align.rejected", self.rejected, ("generated", "on_policy"))
        check(self.rejected_max_new_tokens > 0, "align.rejected_max_new_tokens", self.rejected_max_new_tokens, "must be > 0")
        check(self.num_pairs > 0, "align.num_pairs", self.num_pairs, "must be > 0")
