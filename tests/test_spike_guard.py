"""The training loop's loss-spike guard: skip non-finite or spiking updates, roll back, give up;
its running average survives a resume."""
from __future__ import annotations

import json
import math

import pytest
import torch

from components.train.config import TrainConfig
from components.train.guard import ACCEPT, ROLL_BACK, SKIP, SpikeGuard
from components.train.loop import MAX_ROLLBACKS, train

W_TRUE = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def regression_batch(index: int, poisoned: set[int], nan: set[int]) -> dict:
    g = torch.Generator().manual_seed(index)
    x = torch.randn(8, 4, generator=g)
    y = x @ W_TRUE
    if index in poisoned:  # a corrupt batch: targets far off, as after a data bug
        y = y * 1000.0
    return {"x": x, "y": y, "nan": index in nan, "n_targets": 8}


def squared_error(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    loss = ((model(batch["x"]) - batch["y"]) ** 2).sum()
    if batch["nan"]:
        loss = loss * float("nan")
    return loss, {}


def run(tmp_path, *, poisoned=(), nan=(), spike_factor=3.0, max_steps=30, crash_at=None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    cfg = TrainConfig(lr=0.3, weight_decay=0.0, warmup_steps=1, max_steps=max_steps, batch_size=8, grad_accum=1,
                      mixed_precision="no", log_every=100, save_every=5, keep_checkpoints=2,
                      spike_factor=spike_factor, max_spikes_in_a_row=3)
    seen: list[int] = []  # data index of every batch drawn
    weights: list[torch.Tensor] = []  # the weights when it was drawn

    def batch_fn(step: int, micro: int) -> dict:
        if step == crash_at:  # the process dies while drawing this batch
            raise KeyboardInterrupt("killed")
        seen.append(step)
        weights.append(model.weight.detach().clone())
        return regression_batch(step, set(poisoned), set(nan))

    metrics = train(model, cfg, batch_fn, squared_error, tmp_path)
    rows = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()]
    return model, metrics, rows, seen, weights


def test_non_finite_loss_skips_the_update_and_training_goes_on(tmp_path):
    model, metrics, rows, _, _ = run(tmp_path, nan={4}, spike_factor=0.0)  # NaN is caught even with the guard off
    assert metrics["skipped_steps"] == 1 and metrics["rollbacks"] == 0
    assert metrics["steps"] == 30
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert 5 not in [r["step"] for r in rows]  # the skipped step left no row
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_single_spike_is_skipped_not_learned(tmp_path):
    _, metrics, rows, seen, weights = run(tmp_path, poisoned={20})
    assert metrics["skipped_steps"] == 1 and metrics["rollbacks"] == 0
    at = seen.index(20)
    assert torch.equal(weights[at], weights[at + 1])  # no update from the poisoned batch
    assert not torch.equal(weights[at - 1], weights[at])  # the clean one before it did update
    # control: with the guard off the same batch is learned from
    _, metrics, _, seen, weights = run(tmp_path / "off", poisoned={20}, spike_factor=0.0)
    assert metrics["skipped_steps"] == 0
    assert not torch.equal(weights[seen.index(20)], weights[seen.index(20) + 1])


def test_spikes_in_a_row_roll_back_and_skip_the_bad_data(tmp_path):
    model, metrics, rows, seen, _ = run(tmp_path, poisoned={12, 13, 14}, max_steps=60)
    assert metrics["rollbacks"] == 1 and metrics["skipped_steps"] == 3
    assert metrics["steps"] == 60
    # back at step 10's checkpoint, the data resumes after the poisoned window, not inside it
    after_rollback = seen[seen.index(14) + 1:]
    assert after_rollback[0] == 15 and not {12, 13, 14} & set(after_rollback)
    assert [r["step"] for r in rows] == list(range(1, 61))  # rows after the checkpoint were redone, once
    assert torch.allclose(model.weight.detach().T, W_TRUE, atol=0.2)  # and it still converged


def test_endless_spikes_fail_with_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match=f"after {MAX_ROLLBACKS} rollbacks"):
        run(tmp_path, poisoned=set(range(12, 200)), max_steps=60)


def test_guard_skips_then_asks_for_a_rollback_and_round_trips_its_state():
    guard = SpikeGuard(factor=2.0, max_in_a_row=2, warmup=2)
    assert [guard.observe(x) for x in (1.0, 1.0, 1.5)] == [ACCEPT] * 3  # 1.5 < 2 x average
    assert guard.observe(9.0) == SKIP and guard.observe(float("nan")) == ROLL_BACK
    assert guard.loss_avg == pytest.approx(0.9 * 1.0 + 0.1 * 1.5)  # spikes never enter the average
    copy = SpikeGuard(factor=2.0, max_in_a_row=2, warmup=2)
    copy.load_state_dict(json.loads(json.dumps(guard.state_dict())))  # as a checkpoint's state.json holds it
    assert copy == guard
    with pytest.raises(ValueError, match="loss_avg"):
        copy.load_state_dict({"accepted": 3})


def _ema(losses: list[float]) -> float:
    avg = None
    for loss in losses:
        avg = loss if avg is None else 0.9 * avg + 0.1 * loss
    return avg


def test_resumed_guard_compares_against_the_uninterrupted_average(tmp_path):
    """Resumed at step 10, the guard's average is the one an uninterrupted run has there (saved in
    the checkpoint), so a poisoned batch in the very first step after the resume is caught, as in
    the uninterrupted run; a guard rebuilt from nothing would need 10 steps to trust its average."""
    _, straight, straight_rows, _, _ = run(tmp_path / "straight", poisoned={10})
    assert straight["skipped_steps"] == 1
    resumed_dir = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(resumed_dir, poisoned={10}, crash_at=10)  # dies in step 11, after step 10's checkpoint
    saved = json.loads((resumed_dir / "checkpoints" / "step_00000010" / "state.json").read_text())["guard"]
    assert saved["accepted"] == 10
    assert saved["loss_avg"] == pytest.approx(_ema([r["loss"] for r in straight_rows[:10]]), rel=1e-12)

    _, metrics, rows, seen, weights = run(resumed_dir, poisoned={10})
    assert metrics["skipped_steps"] == 1 and metrics["steps"] == 30
    at = seen.index(10)  # the first batch the resumed loop draws
    assert torch.equal(weights[at], weights[at + 1])  # no update from the poisoned batch
    assert [r["step"] for r in rows] == [r["step"] for r in straight_rows]  # 1..30 without step 11
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(rows, straight_rows)) <= 1e-6
