"""The loss-spike guard: skip an update whose loss is non-finite or far above the running average.

A spike's update is dropped (its data is not retried); several in a row ask for a rollback to
the last checkpoint. The guard's state (running average, counters) is saved in every
checkpoint, so a resumed run compares against the same average an uninterrupted one has at
that step, instead of being blind for its first `warmup` steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

ACCEPT, SKIP, ROLL_BACK = "accept", "skip", "roll back"


@dataclass
class SpikeGuard:
    factor: float = 0.0  # a loss above factor x the running average is a spike (0: only NaN/inf are)
    max_in_a_row: int = 5  # spikes in a row that ask for a rollback
    warmup: int = 10  # accepted steps before the running average is trusted
    loss_avg: float | None = None  # exponential moving average of the accepted losses
    accepted: int = 0
    in_a_row: int = 0
    skipped: int = 0
    rollbacks: int = 0

    STATE = ("loss_avg", "accepted", "in_a_row", "skipped", "rollbacks")  # what a checkpoint carries; the rest is config

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        warm = self.loss_avg is not None and self.accepted >= self.warmup
        return bool(self.factor) and warm and loss > self.factor * self.loss_avg

    def observe(self, loss: float) -> str:
        """ACCEPT (the average learns the loss), SKIP the update, or ROLL_BACK after max_in_a_row spikes."""
        if self.is_spike(loss):
            self.skipped += 1
            self.in_a_row += 1
            return ROLL_BACK if self.in_a_row >= self.max_in_a_row else SKIP
        self.in_a_row, self.accepted = 0, self.accepted + 1
        self.loss_avg = loss if self.loss_avg is None else 0.9 * self.loss_avg + 0.1 * loss
        return ACCEPT

    def rolled_back(self) -> None:
        """Back at a checkpoint: the spikes in a row are behind; the counters and average stay (the
        average only ever learned accepted losses)."""
        self.rollbacks += 1
        self.in_a_row = 0

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.STATE}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.STATE) - set(state))
        if missing:
            raise ValueError(f"spike guard state {sorted(state)} lacks {missing}")
        for name in self.STATE:
            setattr(self, name, state[name])
