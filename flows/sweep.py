"""A Hydra multirun's summary: one row per job, a plot of the headline metric against each swept value.

Registered in conf/config.yaml under `hydra.callbacks`. A launcher may run each job in another
process (joblib's loky workers run `on_job_end` there, hydra.core.utils.run_job), so nothing is
kept in memory between hooks: every job writes `job.json` into its own folder, and the parent's
`on_multirun_end` reads them all from the sweep folder and writes `summary.md` and `summary.png`
there, then shows the summary as a Prefect artifact when an API is reachable.

A multirun with no PREFECT_API_URL gets one temporary Prefect server, started here before the
launcher starts its workers (which inherit the URL) and stopped at the end: without it every job
process would start its own temporary server on the same database.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from components.artifacts import read_manifest
from components.train.launch import free_port

log = logging.getLogger("sweep")

JOB_RECORD = "job.json"
SUMMARY = "summary.md"
PLOT = "summary.png"
ARTIFACT_KEY = "sweep-summary"
HEADLINE = ("eval", "aligned/task_accuracy")  # the sweep's headline when eval ran; else the last stage's key metric
# The temporary Prefect server this multirun started, if any: kept out of the callback, which the
# launcher pickles to its workers (a process handle does not pickle).
_shared_server: list[Any] = []


class SweepSummary(Callback):
    def __init__(self) -> None:
        self._started: float | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from flows.pipeline import configure_prefect  # sets Prefect's quiet settings before prefect is imported

        configure_prefect(_artifacts_root(config))
        if not os.environ.get("PREFECT_API_URL") and not config.run.dry_run:
            _shared_server.append(start_shared_server())

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        failed = job_return.status != JobStatus.COMPLETED
        rows = job_return.return_value if not failed and isinstance(job_return.return_value, list) else []
        record = {
            "num": int(config.hydra.job.num),
            "overrides": list(job_return.overrides or []),
            "status": "failed" if failed else "completed",
            "error": repr(job_return._return_value) if failed else None,
            "pid": os.getpid(),
            "started": self._started,
            "finished": time.time(),
            "rows": rows,
        }
        _write_atomic(Path(config.hydra.runtime.output_dir) / JOB_RECORD, json.dumps(record, indent=1, default=str))
        try:  # the summary so far: a failed job makes Hydra end the sweep without on_multirun_end
            write_summary(read_jobs(Path(str(config.hydra.sweep.dir))), Path(str(config.hydra.sweep.dir)))
        except Exception as err:  # a display: never fail the job for it
            log.warning("sweep summary not updated after job %s: %s", record["num"], err)
        if not failed and "optuna" in str(config.hydra.sweeper.get("_target_", "")):
            job_return.return_value = objective(record)  # the optuna sweeper optimises float(return value)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            jobs = read_jobs(sweep_dir)
            if jobs:
                markdown = write_summary(jobs, sweep_dir)
                log.info("sweep summary: %s\n%s", sweep_dir / SUMMARY, markdown)
                publish_summary(markdown, sweep_dir)
        finally:
            stop_shared_server()


def _artifacts_root(config: DictConfig) -> Path:
    from flows.plan import artifacts_root

    return artifacts_root(config.run)


def start_shared_server() -> Any:
    """One temporary Prefect server on a free loopback port for every job of this multirun."""
    from components.lifeline import ensure_watchdog

    ensure_watchdog()  # if this process is killed, the server goes too
    port = free_port()
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"  # before prefect is imported: it reads it
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer(port=port)
    server.start()  # stops at exit too (atexit)
    log.info("a temporary Prefect server for this sweep's jobs: %s", server.api_url)
    return server


def stop_shared_server() -> None:
    """Stop the server this multirun started, after this process's queued events and logs reached it."""
    if not _shared_server:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=10, at_exit=False)
    while _shared_server:
        _shared_server.pop().stop()


def _write_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # jobs in parallel processes write the summary too
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)


def read_jobs(sweep_dir: Path) -> list[dict]:
    """Every job's record under the sweep folder, by job number."""
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob(f"*/{JOB_RECORD}")]
    return sorted(jobs, key=lambda job: job["num"])


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    pairs = (o.lstrip("+~").split("=", 1) for o in overrides if "=" in o)
    return {key: value for key, value in pairs}


def swept_keys(jobs: list[dict]) -> list[str]:
    """The override keys whose value differs between jobs, in the order the first job gives them."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for key, value in parse_overrides(job["overrides"]).items():
            values.setdefault(key, set()).add(value)
    missing = {key for key in values if any(key not in parse_overrides(job["overrides"]) for job in jobs)}
    return [key for key, seen in values.items() if len(seen) > 1 or key in missing]


def stage_metrics(row: dict) -> dict:
    """The stage's metrics from its manifest; none when the artifact is gone since (the summary still lists it)."""
    try:
        return read_manifest(Path(row["path"])).get("metrics", {})
    except (KeyError, FileNotFoundError, ValueError):
        return {}


def headline(job: dict) -> tuple[str, float] | None:
    """(name, value) of the job's headline metric: eval's aligned/task_accuracy, else the last stage's key metric."""
    from flows.dag import KEY_METRICS

    by_stage = {row["stage"]: row for row in job["rows"]}
    stage, name = HEADLINE
    if stage in by_stage and isinstance(stage_metrics(by_stage[stage]).get(name), (int, float)):
        return f"{stage} {name}", float(stage_metrics(by_stage[stage])[name])
    if not job["rows"]:
        return None
    last = job["rows"][-1]
    metrics = stage_metrics(last)
    for name in KEY_METRICS.get(last["stage"], ()):
        if isinstance(metrics.get(name), (int, float)):
            return f"{last['stage']} {name}", float(metrics[name])
    return None


def objective(job: dict) -> float:
    """The number an optimising sweeper (optuna) sees for a job: its headline metric; NaN (a failed trial) without one."""
    value = headline(job)
    return value[1] if value else float("nan")


def summary_markdown(jobs: list[dict], plot: str | None) -> str:
    from flows.dag import key_metric

    keys = swept_keys(jobs)
    stages = list(dict.fromkeys(row["stage"] for job in jobs for row in job["rows"]))
    names = Counter(h[0] for h in map(headline, jobs) if h)
    head = names.most_common(1)[0][0] if names else "headline"
    lines = [f"# Sweep summary ({len(jobs)} jobs; swept: {', '.join(keys) or 'nothing'})", ""]
    header = ["job", "overrides", "status", *stages, head, "key metrics"]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for job in jobs:
        by_stage = {row["stage"]: row for row in job["rows"]}
        value = headline(job)
        metrics = "; ".join(f"{r['stage']} {key_metric(r['stage'], {'metrics': stage_metrics(r)})}" for r in job["rows"])
        cells = [str(job["num"]), " ".join(job["overrides"]) or "-", job["status"]]
        cells += [by_stage[s]["status"] if s in by_stage else "-" for s in stages]
        cells += [f"{value[1]:.4g}" if value and value[0] == head else "-", metrics or "-"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    failed = [job for job in jobs if job["status"] == "failed"]
    lines += [""] + [f"- job {job['num']} failed: {job['error']}" for job in failed]
    if plot:
        lines += ["", f"![{head} against the swept values]({plot})"]
    return "\n".join(lines).rstrip() + "\n"


def plot_headline(jobs: list[dict], path: Path) -> bool:
    """One panel per swept key: the headline metric against the key's value; False when nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(job, h) for job in jobs if (h := headline(job))]
    if not points:
        return False
    keys = swept_keys(jobs) or ["job"]
    figure, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.5), squeeze=False)
    for axis, key in zip(axes[0], keys):
        labels = [parse_overrides(job["overrides"]).get(key, str(job["num"])) for job, _ in points]
        try:
            xs = [float(label) for label in labels]
        except ValueError:  # categorical values: one position each, labelled
            xs = list(range(len(labels)))
            axis.set_xticks(xs, labels)
        order = sorted(range(len(xs)), key=xs.__getitem__)
        axis.plot([xs[i] for i in order], [points[i][1][1] for i in order], "o-")
        axis.set_xlabel(key)
        axis.set_ylabel(points[0][1][0])
        axis.grid(alpha=0.3)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
    return True


def write_summary(jobs: list[dict], sweep_dir: Path) -> str:
    plotted = plot_headline(jobs, sweep_dir / PLOT)
    markdown = summary_markdown(jobs, PLOT if plotted else None)
    _write_atomic(sweep_dir / SUMMARY, markdown)
    return markdown


def publish_summary(markdown: str, sweep_dir: Path) -> bool:
    """The summary as a Prefect markdown artifact, when an API answers; never fails the sweep."""
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        log.info("no PREFECT_API_URL: the sweep summary is only in %s", sweep_dir / SUMMARY)
        return False
    try:
        import httpx

        httpx.get(f"{url.rstrip('/')}/health", timeout=5).raise_for_status()
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import ArtifactCreate

        with get_client(sync_client=True) as client:  # no flow run: the sweep is many runs, possibly in other processes
            client.create_artifact(ArtifactCreate(key=ARTIFACT_KEY, type="markdown", data=markdown,
                                                  description=f"sweep {sweep_dir}"))
        return True
    except Exception as err:  # the summary is on disk already; a missing artifact is not worth failing for
        log.warning("the sweep summary was not sent to Prefect (%s): it is in %s", err, sweep_dir / SUMMARY)
        return False
