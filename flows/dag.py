"""The Prefect flow: one task per stage, cached by the stage's content key.

Prefect's cache record says "this key was built"; the manifest on disk says "and it
is still there". A task is read from Prefect's cache only while its artifact is
complete; otherwise `refresh_cache` makes it run again and rebuild.

Each stage is submitted once, waiting for the stages that fill its inputs, so branches
of the plan that do not read each other run at the same time (Prefect's thread pool).
Stages not marked `concurrent` in the stage table (training, eval: torch's RNG and
Accelerate's state belong to the process; a launcher's port and devices too) take
turns through one lock.

The flow `llm-pipeline` takes one parameter, `overrides` (Hydra override strings), and
composes its config inside the run (flows/compose.py): a run from the UI, a deployment,
a schedule or `make pipeline` is the same computation with the same keys. Training
stages report progress as Prefect progress artifacts, read from the step log their
build writes (so it works when `accelerate launch` runs the training elsewhere).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf.errors import OmegaConfBaseException
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, as_completed

from components.artifacts import build, follow, is_complete, read_manifest
from components.eval.html import inline_images
from components.lifeline import ensure_watchdog
from components.stages import STAGES
from flows.compose import compose_pipeline_config
from flows.plan import Step, artifacts_root, describe, make_plan

PROGRESS_POLL_SECONDS = 2.0

# The headline figure of each stage, shown in the run summary (first one present).
KEY_METRICS = {
    "data": ("train_docs", "docs_out"),
    "tokenizer": ("bytes_per_token",),
    "pretrain": ("val_ppl", "val_loss"),
    "extend": ("val_ppl", "val_loss"),
    "sft": ("val_loss", "final_loss"),
    "align": ("val_preference_accuracy", "val_reward_accuracy"),
    "reward": ("val_pair_accuracy", "val_reward_margin"),
    "rl": ("val_task_accuracy", "reward_mean_last"),
    "eval": ("aligned/task_accuracy", "sft/task_accuracy"),
}


def _cache_key(context: Any, parameters: dict) -> str:
    return f"{parameters['stage']}-{parameters['key']}"


_ONE_AT_A_TIME = threading.Lock()  # held by a stage that is not `concurrent` while it runs


@task(cache_key_fn=_cache_key, persist_result=True)
def run_stage(stage: str, key: str, cfg: Any, inputs: dict[str, str], root: str, launcher: Any = None,
              run_group: str = "") -> dict:
    spec = STAGES[stage]
    with contextlib.nullcontext() if spec.concurrent else _ONE_AT_A_TIME, training_progress(stage, key, cfg, root):
        if launcher is not None and launcher.machine_rank > 0:  # multi-node: machine 0 builds, this one joins launches
            join = spec.runner(launcher) if spec.trains and launcher.strategy != "single" else None
            path, _ = follow(Path(root), stage, key, cfg, {k: Path(v) for k, v in inputs.items()}, join,
                             launcher.follow_timeout_s)
            return {"path": str(path), "built": False}
        path, built = build(Path(root), stage, key, cfg, {k: Path(v) for k, v in inputs.items()}, spec.runner(launcher),
                            run_group=run_group)
    return {"path": str(path), "built": built}


def last_step(log_path: Path) -> int | None:
    """The step of the last complete row of a training step log (log.jsonl), or None."""
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(max(0, log_path.stat().st_size - 4096))
            lines = log_file.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):  # a half-written last line, or the cut first one
            continue
    return None


@contextlib.contextmanager
def training_progress(stage: str, key: str, cfg: Any, root: str):
    """A progress artifact for a training stage (its config has max_steps), fed by a thread that
    reads the step log in the stage's partial build directory until the stage returns."""
    max_steps = getattr(cfg, "max_steps", None)
    if not isinstance(max_steps, int) or max_steps <= 0:
        yield
        return
    log_path = Path(root) / stage / f".{key}.partial" / "log.jsonl"  # components/artifacts.build's partial dir
    artifact_id = create_progress_artifact(0.0, key=f"{stage}-progress", description=f"{stage} steps of {max_steps}")
    stop = threading.Event()

    def watch() -> None:
        shown = 0.0
        while not stop.wait(PROGRESS_POLL_SECONDS):
            step = last_step(log_path)
            progress = min(100.0, 100.0 * (step or 0) / max_steps)
            if progress > shown:
                try:
                    update_progress_artifact(artifact_id, progress, description=f"{stage}: step {step} of {max_steps}")
                except Exception as err:  # a display: the API being away must not touch the training
                    get_run_logger().warning("%s progress not updated: %s", stage, err)
                    return
                shown = progress

    watcher = threading.Thread(target=contextvars.copy_context().run, args=(watch,), daemon=True,
                               name=f"{stage}-progress")  # the task's context: its API client settings
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(timeout=30)
    update_progress_artifact(artifact_id, 100.0, description=f"{stage}: done ({max_steps} steps)")


def key_metric(stage: str, manifest: dict) -> str:
    metrics = manifest.get("metrics", {})
    for name in KEY_METRICS.get(stage, ()):
        if name in metrics:
            value = metrics[name]
            return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
    return ""


def run_group_name() -> str:
    """The wandb group of every stage this flow run builds: one pipeline run, one group."""
    context = FlowRunContext.get()
    return f"{context.flow.name}-{context.flow_run.name}-{str(context.flow_run.id)[:8]}"


def submit_stages(plan: list[Step], root: str, launcher: Any, paths: dict[str, str]) -> dict[str, PrefectFuture]:
    """One task run per step, started once the steps filling its inputs are done."""
    futures: dict[str, PrefectFuture] = {}
    group = run_group_name()
    results = Path(root) / ".prefect-results"  # cache records beside the artifacts, in every process that runs this
    for step in plan:  # in topological order: every input's future exists already
        refresh = not is_complete(step.path(Path(root)))
        task_run = run_stage.with_options(refresh_cache=refresh, task_run_name=f"{step.stage}-{step.key}",
                                          result_storage=results)
        futures[step.stage] = task_run.submit(
            stage=step.stage,
            key=step.key,
            cfg=step.cfg,
            inputs={role: paths[src] for role, src in step.sources.items()},
            root=root,
            launcher=launcher,
            run_group=group,  # not in the task's cache key (_cache_key): stage and key only
            wait_for=[futures[src] for src in dict.fromkeys(step.sources.values())],
        )
    return futures


class OverrideError(ValueError):
    """The flow's overrides do not compose into a valid config (the message names the key)."""


@flow(name="llm-pipeline")
def pipeline_flow(overrides: list[str] = []) -> list[dict]:  # noqa: B006 (Prefect shows the default; never mutated)
    """The pipeline for Hydra `overrides` (e.g. ["experiment=smoke", "sft.lr=3e-4"]): composed,
    validated and planned here, so a bad override fails the run at once naming the key."""
    logger = get_run_logger()
    try:
        cfg = compose_pipeline_config(overrides)
        plan = make_plan(cfg)  # keys read the data sources' files: a missing one fails here
    except (ValueError, FileNotFoundError, OmegaConfBaseException) as err:
        logger.error("bad overrides %s: %s", list(overrides), err)
        raise OverrideError(f"overrides {list(overrides)}: {err}") from None
    root = artifacts_root(cfg.run)
    if cfg.run.dry_run:
        logger.info("plan (artifacts under %s):\n%s", root, describe(plan, root))
        return []
    root.mkdir(parents=True, exist_ok=True)
    ensure_watchdog()  # a worker's run cancelled or killed: its datatrove and training processes go too
    return run_plan(plan, str(root), cfg.launcher)


@flow(name="llm-pipeline-plan", validate_parameters=False)
def plan_flow(plan: list[Step], root: str, launcher: Any = None) -> list[dict]:
    """For library callers holding a composed config in this process (no overrides to hand over,
    e.g. a stage registered in code): the same stages, the same keys, under its own flow name."""
    return run_plan(plan, root, launcher)


def run_plan(plan: list[Step], root: str, launcher: Any = None) -> list[dict]:
    """Inside a flow: run every step, then the run summary and the eval report as artifacts."""
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
            "seconds": max(0.0, round(finished[futures[step.stage].task_run_id] - ready, 1)),  # since its inputs were ready (clock jitter: never -0.0)
            "metric": key_metric(step.stage, read_manifest(Path(paths[step.stage]))),
            "path": paths[step.stage],
        }
        logger.info("%-9s %-6s %6.1fs  %s", row["stage"], row["status"], row["seconds"], row["metric"])
        rows.append(row)
    create_markdown_artifact(key="pipeline-summary", markdown=summary_markdown(rows), description="stages of this run")
    report = Path(paths.get("eval", "")) / "report.md"
    if "eval" in paths and report.is_file():
        # images inlined: the UI has no access to the PNGs beside report.md
        create_markdown_artifact(key="eval-report", markdown=inline_images(report.read_text(), report.parent),
                                 description=str(report.with_suffix(".html")))
    return rows


def summary_markdown(rows: list[dict]) -> str:
    lines = ["| stage | status | seconds | key metric | artifact |", "|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['metric']} | {r['path']} |" for r in rows]
    return "\n".join(lines)
