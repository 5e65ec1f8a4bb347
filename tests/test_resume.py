"""Exact resume after SIGKILL, for each training stage: the curve after resume is the
uninterrupted run's (fp32 on CPU, <= 1e-6), with no data replayed or skipped; and a resumed
run keeps its history: every step's row in log.jsonl, counters and time summed over the restarts."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from components.align.config import AlignConfig
from components.context import StageContext
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.sft.config import SFTConfig
from components.train.config import TrainConfig
from components.train.launch import write_request
from components.train.loop import train
from components.train.worker import main as run_worker
from tests.test_spike_guard import regression_batch, squared_error
from tests.tiny import make_tokenizer_artifact

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, ffn_hidden=128, context_length=64)
COMMON = dict(max_steps=16, warmup_steps=2, save_every=3, keep_checkpoints=2, log_every=1, mixed_precision="no")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tokenizer artifact and a tiny pretrained model (the input of sft and align)."""
    tok = make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))
    pre = tmp_path_factory.mktemp("pretrain")
    run_worker(str(write_request(PretrainConfig(model=TINY, **{**COMMON, "max_steps": 4}),
                                 {"tokenizer": tok}, StageContext.local(pre, stage="pretrain"))))
    return {"tokenizer": tok, "pretrain": pre, "sft": pre}


CASES = {
    "pretrain": (lambda: PretrainConfig(model=TINY, batch_size=8, lr=1e-2, **COMMON), ("tokenizer",)),
    "sft": (lambda: SFTConfig(batch_size=8, lr=1e-3, num_examples=200, num_val_examples=16, **COMMON), ("pretrain", "tokenizer")),
    "align": (lambda: AlignConfig(batch_size=8, lr=1e-3, num_pairs=100, num_val_pairs=16, **COMMON), ("sft", "tokenizer")),
}


def _rows(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    lines = path.read_text().split("\n")[:-1] if path.exists() else []  # complete lines only: it is being written
    return [json.loads(line) for line in lines]


def _start(request: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "components.train.worker", str(request)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(CASES))
def test_sigkill_then_rerun_continues_the_same_curve(stage, base, tmp_path):
    make_cfg, needs = CASES[stage]
    inputs = {k: base[k] for k in needs}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _finish(_start(write_request(make_cfg(), inputs, StageContext.local(straight, stage=stage))))  # in a process too: same threads

    proc = _start(write_request(make_cfg(), inputs, StageContext.local(killed, stage=stage)))
    deadline = time.time() + 300
    while len(_rows(killed)) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {out[-2000:]}"
    done_before = len(_rows(killed))
    assert 8 <= done_before < 16 and not (killed / "model").exists()

    out = _finish(_start(write_request(make_cfg(), inputs, StageContext.local(killed, stage=stage))))  # the same command again
    assert "resumed from step" in out
    a, b = _rows(straight), _rows(killed)
    assert [r["step"] for r in b] == list(range(1, 17))  # each step once: nothing replayed, nothing lost
    assert max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)) <= 1e-6
    assert (killed / "checkpoints").is_dir()  # kept: artifacts.build() removes them once the artifact is renamed in place


# --- history across a restart, in process (train() on an out_dir holding a checkpoint and a log) ---

LINEAR = dict(lr=0.3, weight_decay=0.0, warmup_steps=1, max_steps=30, batch_size=8, mixed_precision="no",
              log_every=1, save_every=5, keep_checkpoints=2)


def _train_linear(out: Path, crash_at: int | None = None, seconds_per_batch: float = 0.0) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)

    def batch_fn(step: int, micro: int) -> dict:
        if step == crash_at:
            raise KeyboardInterrupt("killed")
        time.sleep(seconds_per_batch)  # a slow first attempt, so its time is visible in the total
        return regression_batch(step, set(), set())

    return train(model, TrainConfig(**LINEAR), batch_fn, squared_error, out)


def test_resumed_run_keeps_every_row_and_sums_counters_and_time(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    expected = _train_linear(straight)
    with pytest.raises(KeyboardInterrupt):
        _train_linear(resumed, crash_at=12, seconds_per_batch=0.1)  # dies in step 13; last checkpoint: step 10
    assert [r["step"] for r in _rows(resumed)] == list(range(1, 13))
    with open(resumed / "log.jsonl", "a") as f:
        f.write('{"step": 13, "lo')  # killed while writing a row
    saved = json.loads((resumed / "checkpoints" / "step_00000010" / "state.json").read_text())["train"]
    assert saved["step"] == 10 and saved["train_seconds"] >= 1.0  # ten batches of 0.1 s

    metrics = _train_linear(resumed)
    rows = _rows(resumed)
    assert [r["step"] for r in rows] == list(range(1, 31))  # steps 11-12 redone once, the half row gone
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(rows, _rows(straight))) <= 1e-6
    assert [r["tokens"] for r in rows] == [r["tokens"] for r in _rows(straight)]
    assert metrics["steps"] == 30 and metrics["tokens_trained"] == expected["tokens_trained"]
    assert metrics["train_seconds"] >= saved["train_seconds"]  # the first attempt's time is in the total
    assert metrics["tokens_per_second"] == pytest.approx(metrics["tokens_trained"] / metrics["train_seconds"], rel=1e-2)


def test_checkpoint_without_the_loop_state_is_named(tmp_path):
    old = tmp_path / "checkpoints" / "step_00000005"
    old.mkdir(parents=True)
    (old / "state.json").write_text(json.dumps({"step": 5, "tokens": 40}))  # the format before the guard was saved
    with pytest.raises(ValueError, match=r"step_00000005/state\.json has no \['train', 'guard'\]"):
        _train_linear(tmp_path)
