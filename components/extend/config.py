from __future__ import annotations

from dataclasses import dataclass

from components.config import check, check_choice, log_only
from components.model.config import ROPE_SCALINGS
from components.train.config import TrainConfig


@dataclass(frozen=True, kw_only=True)
class ExtendConfig(TrainConfig):
    """Context extension: continued pretraining of the pretrain model on the same shards at a longer
    context, with its RoPE scaled (position interpolation by default; Chen et al. 2023 found ~1000
    steps enough for LLaMA). Off by default; when on, sft (and eval's base model) start from its model."""

    enabled: bool = False
    context_length: int = 512  # the new training context (longer than the pretrain model's)
    rope_scaling: str = "linear"  # linear (position interpolation) | dynamic (NTK) | yarn | none (no scaling: the baseline)
    rope_factor: float = 0.0  # 0: context_length / the pretrain model's context
    lr: float = 1e-3
    max_steps: int = 200
    eval_every: int = log_only(50)  # validation 4 times a stage: the report's validation curve
    warmup_steps: int = 20
    batch_size: int = 8  # x context_length tokens per micro-batch
    spike_factor: float = 3.0
    max_val_tokens: int = 65536  # validation tokens scored at each context length

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("extend.rope_scaling", self.rope_scaling, ROPE_SCALINGS)
        check(self.context_length > 0, "extend.context_length", self.context_length, "must be > 0")
        check(self.rope_factor == 0 or self.rope_factor >= 1, "extend.rope_factor", self.rope_factor,
              "must be 0 (context_length / the model's context) or >= 1")
        check(self.max_val_tokens > 0, "extend.max_val_tokens", self.max_val_tokens, "must be > 0")
