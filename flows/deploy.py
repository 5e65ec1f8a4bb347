"""`python -m flows.deploy serve|register|server|stop`: the pipeline as Prefect deployments.

serve     a local Prefect server (SQLite, 127.0.0.1:$PREFECT_PORT, default 4200) unless
          PREFECT_API_URL names one already, a process work pool, every deployment in
          conf/deploy/*.yaml, and a worker that runs their flow runs with this venv's python
          in the repo. Afterwards: `prefect deployment run llm-pipeline/smoke --watch`.
register  only the deployments (the server and pool must exist).
server    only the server (what `make pipeline` needs).
stop      stops exactly what serve/server started: the processes named in the pid files
          under $PREFECT_HOME, each checked to be the process we started (its start time)
          before it is signalled; never a process found by name.

A deployment file (conf/deploy/<name>.yaml) holds: name, description, overrides (Hydra
override strings: the flow's one parameter), at most one of cron / interval (seconds), and
paused. A deployment's runs compose their config inside the run (flows/compose.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from components.config import check_known_keys
from flows.pipeline import _QUIET_PREFECT

REPO = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO / "conf" / "deploy"
POOL = "llm-pipeline-pool"
ENTRYPOINT = "flows/dag.py:pipeline_flow"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
log = logging.getLogger("deploy")


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    description: str = ""
    overrides: list[str] = field(default_factory=list)
    cron: str | None = None
    interval: float | None = None  # seconds
    paused: bool = False


def read_deployment(path: Path) -> DeploymentSpec:
    """One conf/deploy/*.yaml; a bad file fails naming the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    fields = list(DeploymentSpec.__dataclass_fields__)
    try:
        check_known_keys(list(raw), fields, "")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    if not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ValueError(f"{path}: field 'name' must be a non-empty string")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ValueError(f"{path}: field 'overrides' must be a list of Hydra override strings, got {overrides!r}")
    if raw.get("cron") is not None and raw.get("interval") is not None:
        raise ValueError(f"{path}: give 'cron' or 'interval', not both")
    if raw.get("interval") is not None and not (isinstance(raw["interval"], (int, float)) and raw["interval"] > 0):
        raise ValueError(f"{path}: field 'interval' must be a positive number of seconds, got {raw['interval']!r}")
    if not isinstance(raw.get("paused", False), bool):
        raise ValueError(f"{path}: field 'paused' must be true or false, got {raw['paused']!r}")
    return DeploymentSpec(**{**raw, "overrides": overrides})


def read_deployments(folder: Path = DEPLOY_DIR) -> list[DeploymentSpec]:
    specs = [read_deployment(path) for path in sorted(folder.glob("*.yaml"))]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"{folder}: deployment names repeat: {sorted(names)}")
    return specs


def flow_run_env() -> dict[str, str]:
    """What a worker's flow run needs besides the worker's own environment: the repo importable,
    and Prefect and the libraries quiet and offline as in `make pipeline`."""
    return {**_QUIET_PREFECT, "PYTHONPATH": str(REPO)}


def check_overrides(specs: list[DeploymentSpec]) -> None:
    """Each deployment's overrides compose into a valid config: a bad key or value fails here, before
    anything is registered, not in every scheduled run."""
    from omegaconf.errors import OmegaConfBaseException

    from flows.compose import compose_pipeline_config

    for spec in specs:
        try:
            compose_pipeline_config(spec.overrides)
        except (ValueError, OmegaConfBaseException) as err:
            raise ValueError(f"deployment {spec.name!r}: overrides {spec.overrides}: {err}") from None


def register_deployments(specs: list[DeploymentSpec], pool: str = POOL) -> list[str]:
    """Create or update each deployment of the flow `llm-pipeline` in `pool`; returns their ids."""
    from flows.dag import pipeline_flow

    check_overrides(specs)

    source = pipeline_flow.from_source(source=str(REPO), entrypoint=ENTRYPOINT)  # a local dir: the worker runs it in place
    ids = []
    for spec in specs:
        ids.append(str(source.deploy(
            name=spec.name, description=spec.description or None, work_pool_name=pool,
            parameters={"overrides": list(spec.overrides)}, cron=spec.cron, interval=spec.interval,
            paused=spec.paused, job_variables={"env": flow_run_env()}, build=False, push=False,
            ignore_warnings=True, print_next_steps=False,
        )))
    return ids


# --- processes started here, and only those --------------------------------------------------------

def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")


def pid_file(role: str, port: int) -> Path:
    return prefect_home() / f"serve-{role}-{port}.pid"


def start_process(role: str, port: int, argv: list[str], env: dict[str, str]) -> psutil.Process:
    """Start `argv` in its own session, logging to $PREFECT_HOME/<role>-<port>.log; its pid and
    start time go to the pid file, so `stop` signals this process and no other."""
    home = prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    with open(home / f"{role}-{port}.log", "ab") as log_file:
        child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    process = psutil.Process(child.pid)
    record = {"pid": child.pid, "create_time": process.create_time(), "argv": argv}
    tmp = pid_file(role, port).with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, pid_file(role, port))
    return process


def started_process(role: str, port: int) -> psutil.Process | None:
    """The process a pid file names, if it is still the one we started (same pid and start time)."""
    path = pid_file(role, port)
    try:
        record = json.loads(path.read_text())
        process = psutil.Process(record["pid"])
        if abs(process.create_time() - record["create_time"]) < 0.01 and process.status() != psutil.STATUS_ZOMBIE:
            return process
    except (OSError, ValueError, KeyError, psutil.Error):
        pass
    return None


def stop_process(process: psutil.Process, first: signal.Signals, timeout: float = STOP_TIMEOUT_S) -> None:
    """Signal `process` (a worker ignores one SIGINT: it gets a second), wait, then SIGKILL it and
    the processes it started that outlived it."""
    try:
        family = [process, *process.children(recursive=True)]
        process.send_signal(first)
        if first == signal.SIGINT:
            time.sleep(1.0)
            process.send_signal(signal.SIGINT)
    except psutil.NoSuchProcess:
        family = [process]
    gone, alive = psutil.wait_procs(family, timeout=timeout)
    for leftover in alive:
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def stop_started(port: int) -> list[str]:
    """Stop the worker, then the server, that serve/server started on `port`; returns what was stopped."""
    stopped = []
    for role, first in (("worker", signal.SIGINT), ("server", signal.SIGTERM)):
        process = started_process(role, port)
        if process is not None:
            stop_process(process, first)
            stopped.append(f"{role} (pid {process.pid})")
        pid_file(role, port).unlink(missing_ok=True)
    return stopped


# --- server, pool, worker --------------------------------------------------------------------------

def api_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_healthy(url: str, process: psutil.Process | None, log_path: Path, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return
        if process is not None and not process.is_running():
            break
        time.sleep(0.5)
    raise RuntimeError(f"the Prefect server at {url} did not answer within {timeout:.0f} s: see {log_path}")


def ensure_server(port: int) -> str:
    """The API URL: PREFECT_API_URL when set (a server someone else runs), else our local server
    on 127.0.0.1:<port>, started unless one answers there already."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"].rstrip("/")
    url = api_url(port)
    if healthy(url):
        return url
    env = {**os.environ, **_QUIET_PREFECT, "PREFECT_HOME": str(prefect_home()), "PREFECT_SERVER_API_HOST": "127.0.0.1",
           "PREFECT_SERVER_API_PORT": str(port)}
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = start_process("server", port, argv, env)
    log.info("starting the Prefect server (UI: http://127.0.0.1:%d), log in %s/server-%d.log", port, prefect_home(), port)
    wait_healthy(url, process, prefect_home() / f"server-{port}.log")
    return url


def ensure_pool(url: str, pool: str = POOL) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            pass


def ensure_worker(url: str, port: int, pool: str = POOL) -> psutil.Process:
    """A process worker for `pool`, run with this venv's python in the repo (started once per port)."""
    process = started_process("worker", port)
    if process is not None:
        return process
    env = {**os.environ, **flow_run_env(), "PREFECT_API_URL": url, "PREFECT_HOME": str(prefect_home())}
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
            "--name", f"llm-pipeline-worker-{port}"]
    return start_process("worker", port, argv, env)


def serve(port: int, deploy_dir: Path = DEPLOY_DIR) -> str:
    url = ensure_server(port)
    os.environ["PREFECT_API_URL"] = url  # for register_deployments' client (prefect reads it at import)
    ensure_pool(url)
    specs = read_deployments(deploy_dir)
    register_deployments(specs)
    worker = ensure_worker(url, port)
    names = ", ".join(f"llm-pipeline/{s.name}" for s in specs)
    log.info("serving: API %s, pool %s, worker pid %d, deployments %s\nUI: %s   try: PREFECT_API_URL=%s %s/prefect "
             "deployment run llm-pipeline/smoke --watch", url, POOL, worker.pid, names, url.removesuffix("/api"), url,
             Path(sys.executable).parent)
    return url


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["serve", "register", "server", "stop"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", "4200")))
    parser.add_argument("--deploy-dir", type=Path, default=DEPLOY_DIR, help="the deployment files (*.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        if args.command == "serve":
            serve(args.port, args.deploy_dir)
        elif args.command == "server":
            log.info("Prefect server: %s", ensure_server(args.port))
        elif args.command == "register":
            os.environ.setdefault("PREFECT_API_URL", api_url(args.port))
            ensure_pool(os.environ["PREFECT_API_URL"])
            specs = read_deployments(args.deploy_dir)
            register_deployments(specs)
            log.info("registered: %s", ", ".join(f"llm-pipeline/{spec.name}" for spec in specs))
        else:
            stopped = stop_started(args.port)
            if stopped:
                log.info("stopped %s", ", ".join(stopped))
            else:
                log.info("nothing started by serve on port %d runs", args.port)
    except (ValueError, RuntimeError) as err:
        log.error("error: %s", err)
        sys.exit(2)


if __name__ == "__main__":
    main()
