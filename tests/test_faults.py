"""Faults a user meets: SIGKILL (the OOM killer), damaged artifacts, a stage that raises.

Each test reproduces the fault as it happened (issue 11) and shows it handled: a killed run
never blocks the next, a resumed build keeps its history, a damaged artifact is rebuilt
with its damaged file named, and a failing stage's reason comes first and last.
"""
import contextlib
import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import lifeline
from components.artifacts import build, damage, is_complete, key_lock, read_manifest

REPO = Path(__file__).resolve().parents[1]
PYTHON_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


@dataclass(kw_only=True)
class Toy:
    lr: float = 1e-3


def _write(cfg, inputs, ctx) -> dict:
    out = ctx.out_dir
    (out / "weights.txt").write_text(str(cfg.lr))
    (out / "model").mkdir()
    (out / "model" / "model.safetensors").write_bytes(b"\x00" * 4096)
    return {}


# --- locks: owner named, not inherited by forked children, a dead owner's lock taken over ---


def _hold_then_fork_and_sleep(lock: str, ready: str) -> None:
    """Take the lock, fork a child that sleeps (as a datatrove worker would), then sleep."""
    with key_lock(Path(lock), "toy k"):
        child = os.fork()
        if child == 0:
            time.sleep(120)
            os._exit(0)
        Path(ready).write_text(str(child))
        time.sleep(120)


def test_a_killed_owner_never_blocks_the_next_run_though_its_fork_lives(tmp_path, caplog):
    lock, ready = tmp_path / ".k.lock", tmp_path / "ready"
    owner = mp.get_context("spawn").Process(target=_hold_then_fork_and_sleep, args=(str(lock), str(ready)))
    owner.start()
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.05)
        grandchild = int(ready.read_text())
        assert json.loads(lock.read_text())["pid"] == owner.pid  # the lock file names its owner

        got = threading.Event()

        def take() -> None:
            with key_lock(lock, "toy k"):
                got.set()

        caplog.set_level(logging.WARNING, logger="components.artifacts")
        threading.Thread(target=take, daemon=True).start()
        time.sleep(1.0)
        assert not got.is_set()
        waiting = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert waiting and f"pid {owner.pid} on" in waiting[0] and str(lock) in waiting[0]  # said at once

        os.kill(owner.pid, signal.SIGKILL)  # the OOM killer: the forked child survives
        owner.join(10)
        assert lifeline._stat(grandchild) is not None
        assert got.wait(10), "the lock of a killed owner was not released"
        taken = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
        assert taken and f"pid {owner.pid}" in taken[0]
    finally:
        owner.kill()
        if ready.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ready.read_text()), signal.SIGKILL)


# --- damaged artifacts: verified against the manifest, moved aside, rebuilt, the file named ---


def test_a_truncated_manifest_is_rebuilt_naming_the_file(tmp_path, caplog):
    path, _ = build(tmp_path, "toy", "k", Toy(), {}, _write)
    manifest = path / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])
    assert not is_complete(path) and str(manifest) in damage(path)
    with pytest.raises(ValueError, match=r"manifest\.json: damaged manifest"):
        read_manifest(path)  # the error names the file, not a bare JSONDecodeError
    caplog.set_level(logging.WARNING, logger="components.artifacts")
    again, built = build(tmp_path, "toy", "k", Toy(), {}, _write)
    assert built and again == path and is_complete(path)
    assert any(str(manifest) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    (aside,) = (tmp_path / "toy").glob(".k.damaged-*")  # the evidence is kept
    assert len((aside / "manifest.json").read_text()) == 40


@pytest.mark.parametrize("harm", ["delete", "truncate", "flip a byte"])
def test_a_listed_file_deleted_or_changed_is_rebuilt_naming_it(tmp_path, caplog, harm):
    path, _ = build(tmp_path, "toy", "k", Toy(), {}, _write)
    weights, small = path / "model" / "model.safetensors", path / "weights.txt"
    victim = small if harm == "flip a byte" else weights
    if harm == "delete":
        victim.unlink()
    elif harm == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        victim.write_text("0.002")  # same size, other content: caught by its sha256
    assert str(victim) in damage(path)
    caplog.set_level(logging.WARNING, logger="components.artifacts")
    _, built = build(tmp_path, "toy", "k", Toy(), {}, _write)
    assert built and is_complete(path) and weights.stat().st_size == 4096
    assert any(str(victim) in r.getMessage() for r in caplog.records)


def test_manifest_lists_sizes_and_hashes_small_files_only(tmp_path, monkeypatch):
    import components.artifacts as artifacts

    monkeypatch.setattr(artifacts, "HASH_LIMIT", 1000)
    path, _ = build(tmp_path, "toy", "k", Toy(), {}, _write)
    files = read_manifest(path)["files"]
    assert files["model/model.safetensors"] == {"size": 4096}  # large: by size
    assert files["weights.txt"]["size"] == 5 and len(files["weights.txt"]["sha256"]) == 64


# --- resume keeps history; checkpoints survive until the artifact is in place ---


def test_a_kill_between_manifest_and_rename_keeps_the_checkpoints(tmp_path, monkeypatch):
    import components.artifacts as artifacts

    def trained(cfg, inputs, ctx):
        out = ctx.out_dir
        (out / "checkpoints" / "step_00000016").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "step_00000016" / "state.pt").write_text("state")
        (out / "log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 17)))
        return _write(cfg, inputs, ctx)

    def killed_here(src, dst):
        raise KeyboardInterrupt  # the signal lands after the manifest is written, before the rename

    monkeypatch.setattr(artifacts.os, "rename", killed_here)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, "toy", "k", Toy(), {}, trained)
    monkeypatch.undo()
    partial = tmp_path / "toy" / ".k.partial"
    assert (partial / "checkpoints" / "step_00000016" / "state.pt").is_file()  # a rerun resumes, not restarts
    seen = {}

    def resumed(cfg, inputs, ctx):
        seen["kept"] = sorted(p.name for p in ctx.out_dir.iterdir())
        return trained(cfg, inputs, ctx)

    path, built = build(tmp_path, "toy", "k", Toy(), {}, resumed)
    assert built and seen["kept"] == ["checkpoints", "log.jsonl"]  # the resume state, not the half artifact
    assert not (path / "checkpoints").exists() and is_complete(path)


STEPS, KILL_AFTER = 40, 30  # the first part long beside the resumed part's fixed costs (validation, export)


def _train_in_child(root: Path, tok: Path) -> subprocess.Popen:
    code = (
        "import logging, sys; from pathlib import Path\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from components.artifacts import build\n"
        "from components.pretrain.config import PretrainConfig\n"
        "from components.pretrain.run import run\n"
        "from tests.test_resume import TINY, COMMON\n"
        f"STEPS = {STEPS}\n"
        "cfg = PretrainConfig(model=TINY, batch_size=8, lr=1e-2, **{**COMMON, 'max_steps': STEPS})\n"
        "build(Path(sys.argv[1]), 'pretrain', 'k', cfg, {'tokenizer': Path(sys.argv[2])}, run)\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, str(root), str(tok)], cwd=REPO, env=PYTHON_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _steps(log: Path) -> list[int]:
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module")
def killed_and_resumed_pretrain(tmp_path_factory):
    """A real pretrain build, SIGKILLed after a checkpoint (save_every=3), then the same build again."""
    from tests.tiny import make_tokenizer_artifact

    tok = make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))
    root = tmp_path_factory.mktemp("artifacts")
    log = root / "pretrain" / ".k.partial" / "log.jsonl"
    proc = _train_in_child(root, tok)
    deadline = time.time() + 300
    while not _steps(log) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    first_row = time.time()
    while len(_steps(log)) < KILL_AFTER and proc.poll() is None and time.time() < deadline:  # checkpoints every 3
        time.sleep(0.005)
    trained_before_kill = time.time() - first_row
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {out[-2000:]}"
    before = len(_steps(log))
    assert KILL_AFTER <= before < STEPS
    again = _train_in_child(root, tok)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    return root / "pretrain" / "k", before, out, trained_before_kill


@pytest.mark.slow
def test_a_resumed_build_keeps_every_step_of_its_history(killed_and_resumed_pretrain):
    path, before, out, _ = killed_and_resumed_pretrain
    assert "resumed from step" in out
    assert _steps(path / "log.jsonl") == list(range(1, STEPS + 1))  # one row per step: nothing lost, nothing twice
    assert not (path / "checkpoints").exists() and is_complete(path)
    assert "log.jsonl" in read_manifest(path)["files"]


@pytest.mark.slow
def test_a_resumed_build_reports_the_training_time_of_both_parts(killed_and_resumed_pretrain):
    path, _, out, trained_before_kill = killed_and_resumed_pretrain
    rows = [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
    metrics = read_manifest(path)["metrics"]
    assert metrics["tokens_trained"] == rows[-1]["tokens"]
    resumed = int(out.split("resumed from step")[1].split()[0])
    # log_every=1: each row's tokens/s covers that one step, so these add up to the resumed part's step time
    after = sum((b["tokens"] - a["tokens"]) / b["tokens_per_s"] for a, b in zip(rows[resumed - 1:], rows[resumed:]))
    assert metrics["train_seconds"] >= 0.99 * (trained_before_kill + after)  # both parts, not only the resumed one


# --- the real pipeline: a killed main process, damaged artifacts through the flow, a failing stage ---


def _cli(root: Path, *overrides: str, **popen) -> subprocess.Popen:
    args = [sys.executable, "-m", "flows.pipeline", "experiment=smoke", f"run.artifacts_dir={root}", *overrides]
    return subprocess.Popen(args, cwd=REPO, env=PYTHON_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def _session(sid: int) -> list[int]:
    """The living processes of a session (the pipeline was started as its leader)."""
    found = []
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            if entry.name.isdigit() and os.getsid(int(entry.name)) == sid and lifeline._stat(int(entry.name)):
                if b"\nState:\tZ" not in Path(f"/proc/{entry.name}/status").read_bytes():  # zombies hold nothing
                    found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watchdog reads /proc (Linux)")
def test_sigkill_of_the_main_process_during_data_then_rerun_finishes(tmp_path):
    root = tmp_path / "a"
    first = _cli(root, "run.until=data", start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and first.poll() is None:  # until datatrove's workers run
            if any(b"multiprocess" in Path(f"/proc/{p}/cmdline").read_bytes() for p in _session(first.pid)
                   if Path(f"/proc/{p}/cmdline").exists()):
                break
            time.sleep(0.1)
        assert first.poll() is None, "the data stage ended before it could be killed"
        assert len(_session(first.pid)) > 3  # the main process, the watchdog, Prefect's server, datatrove's
        os.kill(first.pid, signal.SIGKILL)  # the main process only, as the OOM killer does
        first.wait(timeout=60)  # not communicate(): a surviving child would hold its pipes open for ever
        deadline = time.time() + 30
        while _session(first.pid) and time.time() < deadline:
            time.sleep(0.2)
        assert _session(first.pid) == [], "a killed pipeline's children outlived it"

        rerun = _cli(root, "run.until=data")
        out, err = rerun.communicate(timeout=600)
        assert rerun.returncode == 0, (out + err)[-3000:]
        (data,) = [p for p in (root / "data").iterdir() if not p.name.startswith(".")]
        assert is_complete(data) and (data / "train").is_dir()
    finally:
        for pid in _session(first.pid):
            os.kill(pid, signal.SIGKILL)
        first.stdout.close()
        first.stderr.close()


def _config(root: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from flows.config import register, to_pipeline_config

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", f"run.artifacts_dir={root}", *overrides])
    return to_pipeline_config(cfg)


@pytest.fixture
def artifact_warnings():
    """Warnings of components.artifacts, caught at the logger itself: in a flow, Prefect's
    PREFECT_LOGGING_EXTRA_LOGGERS setting stops `components` loggers propagating to caplog."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("components.artifacts")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.slow
def test_damaged_artifacts_are_rebuilt_through_the_flow(tmp_path, artifact_warnings):
    from flows.pipeline import run_pipeline

    cfg = _config(tmp_path, "run.until=pretrain")
    paths = {r["stage"]: Path(r["path"]) for r in run_pipeline(cfg)}
    manifest = paths["pretrain"] / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])  # truncated
    rows = run_pipeline(cfg)
    assert {r["stage"]: r["status"] for r in rows} == {"data": "cached", "tokenizer": "cached", "pretrain": "built"}
    assert any(str(manifest) in r.getMessage() for r in artifact_warnings)

    weights = paths["pretrain"] / "model" / "model.safetensors"
    weights.unlink()  # the manifest kept: once "cached", and sft failed later
    artifact_warnings.clear()
    rows = run_pipeline(cfg)
    assert {r["stage"]: r["status"] for r in rows}["pretrain"] == "built" and weights.is_file()
    assert any(str(weights) in r.getMessage() for r in artifact_warnings)
    assert len(list((tmp_path / "pretrain").glob(".*.damaged-*"))) == 2  # both kept as evidence


@pytest.mark.slow
def test_a_failing_stage_prints_its_reason_first_and_last_and_one_traceback(tmp_path):
    source = tmp_path / "docs.jsonl"  # valid at plan time (it exists); the stage finds the bad line
    source.write_text("".join(json.dumps({"text": f"A sentence of plain words, number {i}."}) + "\n"
                              for i in range(20)) + "{not json\n")
    proc = _cli(tmp_path / "a", "data/source=jsonl", f"data.sources.0.path={source}", "data.strict=true",
                "run.until=data")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, (out + err)[-3000:]
    lines = err.strip().splitlines()
    assert lines[0] == lines[-1] and lines[0].startswith("pipeline failed: stage data")
    assert f"{source}, line 21" in lines[0]
    assert (out + err).count("Traceback (most recent call last)") == 1
    assert len(lines) < 100  # one traceback: through the worker, a few frames per quality block
