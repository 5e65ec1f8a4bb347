"""Hydra multiruns on one artifact cache: jobs running at the same time in joblib's processes build each
shared stage once (the per-key lock), and every sweep ends with a summary (markdown, plot, Prefect artifact)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from components.train.launch import free_port
from flows.sweep import ARTIFACT_KEY, PLOT, SUMMARY, read_jobs, summary_markdown, swept_keys

REPO = Path(__file__).resolve().parents[1]
# The smoke experiment, smaller still: the sweep's cost is its processes, not its steps.
TINY = [
    "experiment=smoke",
    "pretrain.max_steps=6", "pretrain.warmup_steps=1",
    "sft.max_steps=3", "sft.warmup_steps=1", "sft.num_examples=40", "sft.num_val_examples=8",
    "align.max_steps=2", "align.warmup_steps=1", "align.num_pairs=16", "align.num_val_pairs=8",
]


def _env(tmp_path: Path, api_url: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _sweep(tmp_path: Path, *overrides: str, api_url: str | None = None, timeout: int = 420):
    command = [sys.executable, "-m", "flows.pipeline", "-m", *overrides,
               f"run.artifacts_dir={tmp_path / 'artifacts'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path, api_url), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@pytest.fixture
def prefect_server(tmp_path):
    """One real Prefect server on a free loopback port, its own PREFECT_HOME; stopped (only it) at the end."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=_env(tmp_path, None), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("the Prefect server did not answer in 180 s")
        yield api_url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and the workers it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()


def _artifact(api_url: str, key: str) -> dict:
    response = httpx.post(f"{api_url}/artifacts/filter", json={"artifacts": {"key": {"any_": [key]}}}, timeout=10)
    response.raise_for_status()
    found = response.json()
    assert found, f"no artifact {key}"
    return found[0]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_parallel_sweep_builds_shared_stages_once_and_writes_a_summary(tmp_path, prefect_server):
    betas = ["0.05", "0.1", "0.5"]
    _sweep(tmp_path, "hydra/launcher=parallel", "hydra.launcher.n_jobs=3", *TINY, "run.until=align",
           f"align.beta={','.join(betas)}", api_url=prefect_server)
    jobs = read_jobs(tmp_path / "sweep")
    assert [job["status"] for job in jobs] == ["completed"] * 3
    assert sorted(next(o for o in job["overrides"] if o.startswith("align.beta=")) for job in jobs) == \
        sorted(f"align.beta={b}" for b in betas)

    built = {stage: sum(row["status"] == "built" for job in jobs for row in job["rows"] if row["stage"] == stage)
             for stage in ("data", "tokenizer", "pretrain", "sft", "align")}
    assert built == {"data": 1, "tokenizer": 1, "pretrain": 1, "sft": 1, "align": 3}, built
    for stage in ("data", "tokenizer", "pretrain", "sft"):  # one artifact each, and every job used that one
        assert len([p for p in (tmp_path / "artifacts" / stage).iterdir() if not p.name.startswith(".")]) == 1
        assert len({row["path"] for job in jobs for row in job["rows"] if row["stage"] == stage}) == 1
    assert len({row["path"] for job in jobs for row in job["rows"] if row["stage"] == "align"}) == 3
    # really at the same time: every job started before any job finished
    assert max(job["started"] for job in jobs) < min(job["finished"] for job in jobs)
    assert len({job["pid"] for job in jobs}) == 3  # each job in its own process

    summary = (tmp_path / "sweep" / SUMMARY).read_text()
    assert "swept: align.beta" in summary and "align val_preference_accuracy" in summary
    for beta in betas:
        assert f"align.beta={beta}" in summary
    assert (tmp_path / "sweep" / PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    artifact = _artifact(prefect_server, ARTIFACT_KEY)
    assert artifact["type"] == "markdown" and "align.beta=0.5" in artifact["data"]


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_optuna_sweeper_runs_trials_on_the_shared_cache(tmp_path):
    """Two optuna trials with the basic launcher and no API URL (the sweep starts its own temporary server):
    the tokenizer is built once, each trial's objective is its headline metric."""
    _sweep(tmp_path, "hydra/sweeper=optuna_align", "hydra.sweeper.n_trials=2", *TINY, "run.until=tokenizer",
           "align.beta=choice(0.1,0.5)")
    jobs = read_jobs(tmp_path / "sweep")
    assert len(jobs) == 2 and all(job["status"] == "completed" for job in jobs)
    assert [row["status"] for row in jobs[0]["rows"]] == ["built", "built"]
    assert [row["status"] for row in jobs[1]["rows"]] != ["built", "built"]  # cached or reused
    results = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_value" in results
    assert "tokenizer bytes_per_token" in (tmp_path / "sweep" / SUMMARY).read_text()


def test_summary_rows_and_swept_keys_from_job_records(tmp_path):
    """The summary from records alone: a failed job is a row too, its error listed; swept keys are those that vary."""
    jobs = [
        {"num": 0, "overrides": ["experiment=smoke", "align.beta=0.1"], "status": "completed", "error": None,
         "rows": [{"stage": "data", "status": "built", "path": str(tmp_path / "missing")}]},
        {"num": 1, "overrides": ["experiment=smoke", "align.beta=0.5"], "status": "failed",
         "error": "RuntimeError('align diverged')", "rows": []},
    ]
    assert swept_keys(jobs) == ["align.beta"]
    markdown = summary_markdown(jobs, plot=None)
    lines = markdown.splitlines()
    assert lines[2] == "| job | overrides | status | data | headline | key metrics |"
    assert lines[4].startswith("| 0 | experiment=smoke align.beta=0.1 | completed | built |")
    assert lines[5].startswith("| 1 | experiment=smoke align.beta=0.5 | failed | - |")
    assert "- job 1 failed: RuntimeError('align diverged')" in markdown


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_a_failed_job_lets_the_others_run_and_the_summary_lists_it(tmp_path):
    """One job's value is impossible: Hydra records that job as failed and runs the next, the summary has a row
    for each (the failure naming the key), and the sweep exits non-zero at its end."""
    command = [sys.executable, "-m", "flows.pipeline", "-m", "experiment=smoke", "run.until=data",
               "data.validation_fraction=0.7,0.2", f"run.artifacts_dir={tmp_path / 'artifacts'}",
               f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    result = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path, None), capture_output=True, text=True,
                            timeout=400)
    assert result.returncode != 0
    jobs = read_jobs(tmp_path / "sweep")
    assert [job["status"] for job in jobs] == ["failed", "completed"], result.stderr[-3000:]
    assert "data.validation_fraction" in jobs[0]["error"]
    assert [row["status"] for row in jobs[1]["rows"]] == ["built"]
    summary = (tmp_path / "sweep" / SUMMARY).read_text()
    rows = {line.split(" | ")[0]: line for line in summary.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")}
    assert "data.validation_fraction=0.7" in rows["| 0"] and " | failed | - |" in rows["| 0"]
    assert "data.validation_fraction=0.2" in rows["| 1"] and " | completed | built |" in rows["| 1"]
    assert "- job 0 failed: " in summary and "must be in (0, 0.5)" in summary
