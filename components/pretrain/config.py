from __future__ import annotations

from dataclasses import dataclass, field

from components.config import check, log_only
from components.model.config import ModelConfig
from components.train.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainConfig):
    """Pretraining on the tokenizer's shards (next-token prediction), from scratch or from model.init_from."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lr: float = 3e-3
    max_steps: int = 320  # 0 with model.init_from: import the checkpoint unchanged
    eval_every: int = log_only(80)  # validation 4 times a stage: the report's validation curve
    warmup_steps: int = 30
    batch_size: int = 16
    spike_factor: float = 3.0  # pretraining loss never legitimately triples its running average
    max_val_tokens: int = 65536  # validation tokens scored (fixed windows)

    def may_skip_training(self) -> bool:  # `pretrain.max_steps=0`: sft/align start from the checkpoint as it is
        return self.model.init_from is not None

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.max_val_tokens > 0, "pretrain.max_val_tokens", self.max_val_tokens, "must be > 0")
