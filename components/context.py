"""The StageContext: what a stage knows about where and how it runs, handed to it explicitly.

`components.artifacts.build` makes one for each build (stage, key, the temporary output
directory); `components.train.launch` carries it to every process `accelerate launch`
starts, and `components.train.worker` rebuilds it there with that process's rank. Nothing
about a stage travels through environment variables or directory names.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("single", "ddp", "fsdp")  # as launcher.strategy (components/train/config.py)


@dataclass(frozen=True, kw_only=True)
class StageContext:
    stage: str
    key: str
    out_dir: Path  # where the stage writes its files (the artifact's temporary sibling while it builds)
    strategy: str = "single"  # single (this process) | ddp | fsdp: how the training loop wraps the model
    rank: int = 0  # this process among world_size (accelerate's process_index)
    world_size: int = 1
    # what it is part of, for trackers only (never in a key): the pipeline run, and its inputs' keys (lineage)
    run_group: str = ""
    upstream: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.strategy not in STRATEGIES:
            raise ValueError(f"StageContext.strategy={self.strategy!r}: choose one of {list(STRATEGIES)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"StageContext: rank {self.rank} is outside a world of {self.world_size} processes")

    @property
    def is_main(self) -> bool:
        """The one process that writes shared files (quarantine, caches, logs) and reports to wandb."""
        return self.rank == 0

    @classmethod
    def local(cls, out_dir: Path | str, stage: str = "local", key: str | None = None) -> StageContext:
        """For library use and tests: one process writing into out_dir (key: the directory's name)."""
        return cls(stage=stage, key=key or Path(out_dir).name, out_dir=Path(out_dir))

    def in_process(self, rank: int, world_size: int) -> StageContext:
        """This context as seen by one of the processes a launcher started."""
        return dataclasses.replace(self, rank=rank, world_size=world_size)

    def to_dict(self) -> dict:
        """What travels to a launched process (its rank and world size are its own)."""
        return {"stage": self.stage, "key": self.key, "out_dir": str(self.out_dir), "strategy": self.strategy,
                "run_group": self.run_group, "upstream": dict(self.upstream)}
