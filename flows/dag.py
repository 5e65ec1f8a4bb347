"""The Prefect flow: one task per stage, cached by the stage's content key.

Prefect's cache record says "this key was built"; the manifest on disk says "and it
is still there". A task is read from Prefect's cache only while its artifact is
complete; otherwise `refresh_cache` makes it run again and rebuild.

Each stage is submitted once, waiting for the stages that fill its inputs, so branches
of the plan that do not read each other run at the same time (Prefect's thread pool).
Stages not marked `concurrent` in the stage table (training, eval: torch's RNG and
Accelerate's state belong to the process; a launcher's port and devices too) take
turns through one lock.
"""
from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import PrefectFuture, as_completed

from components.artifacts import build, follow, is_complete, read_manifest
from components.stages import STAGES
from flows.plan import Step

# The headline figure of each stage, shown in the run summary (first one present).
KEY_METRICS = {
    "data": ("train_docs", "docs_out"),
    "tokenizer": ("bytes_per_token",),
    "pretrain": ("val_ppl", "val_loss"),
    "extend": ("val_ppl", "val_loss"),
    "sft": ("val_loss", "final_loss"),
    "align": ("val_preference_accuracy", "val_reward_accuracy"),
    "eval": ("aligned/task_accuracy", "sft/task_accuracy"),
}


def _cache_key(context: Any, parameters: dict) -> str:
    return f"{parameters['stage']}-{parameters['key']}"


_ONE_AT_A_TIME = threading.Lock()  # held by a stage that is not `concurrent` while it runs


@task(cache_key_fn=_cache_key, persist_result=True)
def run_stage(stage: str, key: str, cfg: Any, inputs: dict[str, str], root: str, launcher: Any = None) -> dict:
    spec = STAGES[stage]
    with contextlib.nullcontext() if spec.concurrent else _ONE_AT_A_TIME:
        if launcher is not None and launcher.machine_rank > 0:  # multi-node: machine 0 builds, this one joins launches
            join = spec.runner(launcher) if spec.trains and launcher.strategy != "single" else None
            path, _ = follow(Path(root), stage, key, cfg, {k: Path(v) for k, v in inputs.items()}, join,
                             launcher.follow_timeout_s)
            return {"path": str(path), "built": False}
        path, built = build(Path(root), stage, key, cfg, {k: Path(v) for k, v in inputs.items()}, spec.runner(launcher))
    return {"path": str(path), "built": built}


def key_metric(stage: str, manifest: dict) -> str:
    metrics = manifest.get("metrics", {})
    for name in KEY_METRICS.get(stage, ()):
        if name in metrics:
            value = metrics[name]
            return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
    return ""


def submit_stages(plan: list[Step], root: str, launcher: Any, paths: dict[str, str]) -> dict[str, PrefectFuture]:
    """One task run per step, started once the steps filling its inputs are done."""
    futures: dict[str, PrefectFuture] = {}
    for step in plan:  # in topological order: every input's future exists already
        refresh = not is_complete(step.path(Path(root)))
        task_run = run_stage.with_options(refresh_cache=refresh, task_run_name=f"{step.stage}-{step.key}")
        futures[step.stage] = task_run.submit(
            stage=step.stage,
            key=step.key,
            cfg=step.cfg,
            inputs={role: paths[src] for role, src in step.sources.items()},
            root=root,
            launcher=launcher,
            wait_for=[futures[src] for src in dict.fromkeys(step.sources.values())],
        )
    return futures


@flow(name="llm-pipeline", validate_parameters=False)
def pipeline_flow(plan: list[Step], root: str, launcher: Any = None) -> list[dict]:
    logger = get_run_logger()
    paths = {step.stage: str(step.path(Path(root))) for step in plan}  # not the cached path: the root may have moved
    started = time.time()
    futures = submit_stages(plan, root, launcher, paths)
    finished = {future.task_run_id: time.time() for future in as_completed(list(futures.values()))}
    rows = []
    for step in plan:
        futures[step.stage].wait()  # done already; this makes `state` the final one, not the API's last record
        state = futures[step.stage].state
        if state.is_pending():  # NotReady: an input failed (and raised at its own row, earlier in the plan)
            continue
        result = state.result()  # re-raises the stage's error, failing the flow
        ready = max((finished[futures[src].task_run_id] for src in step.sources.values()), default=started)
        row = {
            "stage": step.stage,
            "status": "cached" if state.name == "Cached" else ("built" if result["built"] else "reused"),
            "seconds": round(finished[futures[step.stage].task_run_id] - ready, 1),  # since its inputs were ready
            "metric": key_metric(step.stage, read_manifest(Path(paths[step.stage]))),
            "path": paths[step.stage],
        }
        logger.info("%-9s %-6s %6.1fs  %s", row["stage"], row["status"], row["seconds"], row["metric"])
        rows.append(row)
    create_markdown_artifact(key="pipeline-summary", markdown=summary_markdown(rows), description="stages of this run")
    report = Path(paths.get("eval", "")) / "report.md"
    if "eval" in paths and report.is_file():
        create_markdown_artifact(key="eval-report", markdown=report.read_text(), description=str(report))
    return rows


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| stage | status | seconds | key metric | artifact |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['metric']} | {r['path']} |" for r in rows]
    return "\n".join(lines)
