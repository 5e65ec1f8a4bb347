"""Deployments with real parts: `python -m flows.deploy serve` starts a Prefect server on a free
loopback port (its own PREFECT_HOME), a process work pool, a worker and a deployment from a
deployment file; its cron schedule makes scheduled runs; a run triggered with overrides completes
and its artifacts read back through the API; a bad override fails the run naming the key; `stop`
ends exactly what serve started. Also: the composed config is the CLI's (same keys), the test
session's flow runs stay out of the repo's .prefect db, and SIGTERM ends the pipeline CLI with
its temporary server and every process it started."""
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from components.eval.html import inline_images
from components.train.launch import free_port
from flows.compose import compose_pipeline_config
from flows.deploy import DeploymentSpec, check_overrides, read_deployment, read_deployments
from flows.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def clean_env(prefect_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
    return {**env, "PREFECT_HOME": str(prefect_home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}


def test_the_repo_deployment_files_read_and_a_bad_one_names_file_and_field(tmp_path):
    specs = {spec.name: spec for spec in read_deployments()}
    assert specs["default"].overrides == [] and specs["default"].cron and specs["default"].paused
    assert specs["smoke"].overrides == ["experiment=smoke"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncorn: '* * * * *'\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: .*corn.*cron"):
        read_deployment(bad)
    bad.write_text("name: x\noverrides: experiment=smoke\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: field 'overrides' must be a list"):
        read_deployment(bad)
    bad.write_text("name: x\ncron: '0 3 * * *'\ninterval: 60\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: give 'cron' or 'interval', not both"):
        read_deployment(bad)
    bad.write_text("name: ok\n")
    assert read_deployment(bad) == DeploymentSpec(name="ok")


def test_a_deployment_with_a_bad_override_fails_before_anything_is_registered():
    check_overrides(read_deployments())  # the repo's own deployments compose
    with pytest.raises(ValueError, match=r"deployment 'typo': .*sft\.lrr"):
        check_overrides([DeploymentSpec(name="typo", overrides=["experiment=smoke", "sft.lrr=1"])])
    with pytest.raises(ValueError, match=r"deployment 'bad-value': .*data\.validation_fraction"):
        check_overrides([DeploymentSpec(name="bad-value", overrides=["data.validation_fraction=0.7"])])


def test_the_flow_composes_the_same_config_and_keys_as_the_cli(tmp_path):
    """The CLI composes through @hydra.main; the flow through the compose API: same plan, same keys."""
    overrides = ["experiment=smoke", "sft.lr=3e-4", f"run.artifacts_dir={tmp_path}"]
    out = subprocess.run([PY, "-m", "flows.pipeline", "run.dry_run=true", *overrides], cwd=REPO, text=True,
                         capture_output=True, timeout=180, env=clean_env(tmp_path / "home"))
    assert out.returncode == 0, out.stderr
    plan = make_plan(compose_pipeline_config(overrides))
    for step in plan:
        assert f"{step.stage:<10} {step.key}" in out.stdout + out.stderr
    with pytest.raises(ValueError, match="lrr"):
        compose_pipeline_config(["sft.lrr=1"])


def test_a_test_session_flow_run_stays_out_of_the_repo_prefect_db():
    from prefect import flow
    from prefect.context import get_run_context

    home = Path(os.environ["PREFECT_HOME"])
    assert not home.resolve().is_relative_to(REPO) and "PREFECT_API_URL" not in os.environ

    @flow(name="isolation-probe")
    def probe() -> str:
        return str(get_run_context().flow_run.id)

    run_id = probe()
    ours = sqlite3.connect(home / "prefect.db")
    assert ours.execute("select count(*) from flow_run where id = ?", (run_id,)).fetchone() == (1,)
    repo_db = REPO / ".prefect" / "prefect.db"
    if repo_db.exists():
        theirs = sqlite3.connect(f"file:{repo_db}?mode=ro", uri=True)
        assert theirs.execute("select count(*) from flow_run where id = ?", (run_id,)).fetchone() == (0,)


def descendants(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_stops_the_pipeline_its_temporary_server_and_every_process_it_started(tmp_path):
    env = clean_env(tmp_path / "home")
    cli = subprocess.Popen([PY, "-m", "flows.pipeline", "experiment=smoke", f"run.artifacts_dir={tmp_path / 'a'}"],
                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process = psutil.Process(cli.pid)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and cli.poll() is None:
            if any("uvicorn" in " ".join(p.cmdline()) for p in descendants(process) if p.is_running()):
                break
            time.sleep(0.5)
        family = descendants(process)
        assert any("uvicorn" in " ".join(p.cmdline()) for p in family), "no temporary server started"
        time.sleep(3)  # the server answering, the flow under way
        family = descendants(process)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) != 0
        gone, alive = psutil.wait_procs(family, timeout=45)
        assert alive == [], f"left running after SIGTERM: {[(p.pid, p.cmdline()) for p in alive]}"
        assert "stopping the pipeline" in cli.stderr.read()
    finally:
        for leftover in [process, *descendants(process)] if cli.poll() is None else []:
            leftover.kill()
        cli.wait(timeout=10)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # .ci/run installs Debian's


def the_prefect_ui_shows_the_reports_images_and_tables(port: int, env: dict, tmp_path: Path) -> None:
    """The eval-report artifact as the pipeline makes it (report.md, its PNGs inlined: flows/dag.py), opened on
    the server's own UI page in headless Chromium: the rendered page holds the table and the image, not alt text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = tmp_path / "report"
    report.mkdir()
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([3.0, 2.0, 1.5])
    fig.savefig(report / "loss_curves.png")
    plt.close(fig)
    (report / "report.md").write_text("# Report\n\n| model | task accuracy |\n|---|---|\n| sft | 0.490 |\n\n"
                                      "![loss curves](loss_curves.png)\n")
    code = ("import sys; from prefect.artifacts import create_markdown_artifact; "
            "print(create_markdown_artifact(key='eval-report', markdown=sys.stdin.read()))")
    made = subprocess.run([PY, "-c", code], input=inline_images((report / "report.md").read_text(), report), cwd=REPO,
                          env={**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}, capture_output=True, text=True,
                          timeout=120)
    assert made.returncode == 0, made.stderr
    page = f"http://127.0.0.1:{port}/artifacts/artifact/{made.stdout.split()[-1]}"
    image = re.compile(r'<img[^>]+src="data:image/png;base64,')
    for _ in range(4):  # on a loaded machine the dump can come before the artifact's body has rendered (seen in CI)
        dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=30000",
                              "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
        if image.search(dom):
            break
    assert image.search(dom), dom[-2000:]  # the picture, not its alt text
    assert "<table" in dom and "0.490" in dom


async def wait_final(client, run_id, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = await client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return run
        await asyncio.sleep(2)
    raise AssertionError(f"flow run {run_id} not finished after {timeout} s: {run.state}")


async def exercise_deployment(url: str, root: Path) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, \
        FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        async with get_client() as client:
            deployment = await client.read_deployment_by_name("llm-pipeline/probe")
            assert deployment.parameters == {"overrides": ["experiment=smoke", f"run.artifacts_dir={root}",
                                                           "run.until=pretrain"]}
            scheduled = []
            for _ in range(90):  # the scheduler service runs every few seconds (its loop setting below)
                scheduled = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
                if any(r.deployment_id == deployment.id for r in scheduled):
                    break
                await asyncio.sleep(1)
            assert any(r.deployment_id == deployment.id and r.expected_start_time.minute == 0 for r in scheduled)
            overrides = [*deployment.parameters["overrides"], "pretrain.max_steps=6"]
            good = await client.create_flow_run_from_deployment(deployment.id, parameters={"overrides": overrides})
            bad = await client.create_flow_run_from_deployment(deployment.id,
                                                               parameters={"overrides": ["sft.lrr=1"]})
            bad_run = await wait_final(client, bad.id, 150)
            good_run = await wait_final(client, good.id, 200)
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[good.id])))
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[good.id])))
            return {"good": good_run, "bad": bad_run, "artifacts": artifacts, "tasks": tasks}


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_serve_schedules_runs_and_stops_only_what_it_started(tmp_path):
    port, home, root = free_port(), tmp_path / "home", tmp_path / "artifacts"
    deploy_dir = tmp_path / "deploy"
    deploy_dir.mkdir()
    (deploy_dir / "probe.yaml").write_text(json.dumps({
        "name": "probe", "overrides": ["experiment=smoke", f"run.artifacts_dir={root}", "run.until=pretrain"],
        "cron": "0 0 * * *", "paused": False}))  # daily: scheduled runs to see, none due while the test runs
    env = clean_env(home, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2")
    bystander = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"])  # not ours to stop: a pid file lies
    try:
        out = subprocess.run([PY, "-m", "flows.deploy", "serve", "--port", str(port), "--deploy-dir", str(deploy_dir)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stdout + out.stderr
        pids = {role: json.loads((home / f"serve-{role}-{port}.pid").read_text())["pid"] for role in ("server", "worker")}
        result = asyncio.run(exercise_deployment(f"http://127.0.0.1:{port}/api", root))
        assert result["good"].state.is_completed(), result["good"].state
        assert result["bad"].state.is_failed() and "sft.lrr" in result["bad"].state.message
        by_key = {a.key: a for a in result["artifacts"]}
        assert "| pretrain | built |" in by_key["pipeline-summary"].data
        assert float(by_key["pretrain-progress"].data) == 100.0
        assert {t.name.split("-")[0] for t in result["tasks"]} == {"data", "tokenizer", "pretrain"}
        assert all(t.state.is_completed() for t in result["tasks"])
        assert (root / "pretrain").is_dir()
        if CHROMIUM:
            the_prefect_ui_shows_the_reports_images_and_tables(port, env, tmp_path)

        (home / "serve-worker-1.pid").write_text(json.dumps({"pid": bystander.pid, "create_time": 1.0}))
        assert "nothing started" in subprocess.run([PY, "-m", "flows.deploy", "stop", "--port", "1"], cwd=REPO,
                                                   env=env, capture_output=True, text=True, timeout=60).stdout
        assert bystander.poll() is None  # a pid file naming another process's pid: left alone
    finally:
        stop = subprocess.run([PY, "-m", "flows.deploy", "stop", "--port", str(port)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        bystander.kill()
        bystander.wait(timeout=10)
    assert "worker" in stop.stdout and "server" in stop.stdout, stop.stdout + stop.stderr
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids.values())
    assert not (home / f"serve-server-{port}.pid").exists()
