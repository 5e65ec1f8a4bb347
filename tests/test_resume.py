"""Exact resume after SIGKILL, for each training stage: the curve after resume is the
uninterrupted run's (fp32 on CPU, <= 1e-6), with no data replayed or skipped."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.align.config import AlignConfig
from components.context import StageContext
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.sft.config import SFTConfig
from components.train.launch import write_request
from components.train.worker import main as run_worker
from tests.tiny import make_tokenizer_artifact

pytestmark = pytest.mark.slow
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
    "sft": (lambda: SFTConfig(batch_size=8, lr=1e-3, num_examples=200, num_val_examples=16, **COMMON), ("pretrain",)),
    "align": (lambda: AlignConfig(batch_size=8, lr=1e-3, num_pairs=100, num_val_pairs=16, **COMMON), ("sft",)),
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
    assert not (killed / "checkpoints").exists()  # cleaned up once finished
