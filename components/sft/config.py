from __future__ import annotations

from dataclasses import dataclass

from components.config import check
from components.train.config import TrainConfig


@dataclass(kw_only=True)
class SFTConfig(TrainConfig):
    """Instruction tuning of the pretrained model: chat template, loss on assistant tokens only."""

    lr: float = 2e-3
    max_steps: int = 1000
    warmup_steps: int = 50
    batch_size: int = 32
    num_examples: int = 20000  # generated training examples (components/tasks)
    num_val_examples: int = 200  # generated held-out examples for validation loss
    data_path: str | None = None  # optional jsonl of {"messages": [...]} used instead of generated tasks

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_examples > 0, "sft.num_examples", self.num_examples, "must be > 0")
        check(self.num_val_examples > 0, "sft.num_val_examples", self.num_val_examples, "must be > 0")
