"""What a training run carries across steps and restarts.

TrainState is saved in every checkpoint (with the spike guard's state), so a resumed run
continues the counters of the interrupted one: steps, tokens, data position and the time
spent training. StepLog is log.jsonl, one row per step of the model being trained: a resume
or rollback cuts it back to the step it continues from and appends, so a run interrupted
any number of times still ends with rows 1..N, the rows an uninterrupted run writes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done, skipped ones included (their data is not retried)
    tokens: int = 0  # tokens the model was trained on
    data_offset: int = 0  # batches skipped after rollbacks, so training does not replay the window that spiked
    train_seconds: float = 0.0  # wall time in the loop, summed over every process that brought the run here

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> "TrainState":
        names = {f.name for f in dataclasses.fields(cls)}
        if set(state) != names:
            raise ValueError(f"train state {sorted(state)} does not match the fields {sorted(names)}")
        return cls(**state)


class Clock:
    """Adds the loop's wall time to state.train_seconds as it goes, so the total survives a restart."""

    def __init__(self) -> None:
        self.started = self.last = time.time()
        self.first_step_seconds: float | None = None  # this process's first update: compile's one-off cost shows here

    def tick(self, state: TrainState, updated: bool = True) -> None:
        now = time.time()
        state.train_seconds += now - self.last
        self.last = now
        if updated and self.first_step_seconds is None:
            self.first_step_seconds = now - self.started


class StepLog:
    """out_dir/log.jsonl, written by the main process only (enabled=False elsewhere)."""

    def __init__(self, path: Path, step: int, enabled: bool) -> None:
        self.path, self.enabled, self.file = Path(path), enabled, None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.truncate(step)

    def truncate(self, step: int) -> None:
        """Keep the rows up to `step` (the steps the model holds), atomically; then append."""
        if not self.enabled:
            return
        self.close()
        if self.path.exists():
            kept = list(self.rows_up_to(step))
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)  # a kill mid-write leaves the old log, never half of it
        self.file = open(self.path, "a")

    def rows_up_to(self, step: int):
        lines = self.path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a kill mid-write leaves a half line at the end
                log.warning("%s:%d: not a complete JSON row, dropped (%r)", self.path, number, line[:80])
                continue
            if row["step"] <= step:
                yield line

    def write(self, row: dict) -> None:
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
