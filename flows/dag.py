"""The Prefect flow: one task per stage, cached by the stage's content key.

Prefect's cache record says "this key was built"; the manifest on disk says "and it
is still there". A task is read from Prefect's cache only while its artifact is
complete; otherwise `refresh_cache` makes it run again and rebuild.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from components.artifacts import build, is_complete, read_manifest
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


@task(cache_key_fn=_cache_key, persist_result=True)
def run_stage(stage: str, key: str, cfg: Any, inputs: dict[str, str], root: str, launcher: Any = None) -> dict:
    runner = STAGES[stage].runner(launcher)
    path, built = build(Path(root), stage, key, cfg, {k: Path(v) for k, v in inputs.items()}, runner)
    return {"path": str(path), "built": built}


def key_metric(stage: str, manifest: dict) -> str:
    metrics = manifest.get("metrics", {})
    for name in KEY_METRICS.get(stage, ()):
        if name in metrics:
            value = metrics[name]
            return f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
    return ""


@flow(name="llm-pipeline", validate_parameters=False)
def pipeline_flow(plan: list[Step], root: str, launcher: Any = None) -> list[dict]:
    logger = get_run_logger()
    paths: dict[str, str] = {}
    rows = []
    for step in plan:
        started = time.time()
        refresh = not is_complete(step.path(Path(root)))
        state = run_stage.with_options(refresh_cache=refresh, task_run_name=f"{step.stage}-{step.key}")(
            stage=step.stage,
            key=step.key,
            cfg=step.cfg,
            inputs={role: paths[src] for role, src in step.sources.items()},
            root=root,
            launcher=launcher,
            return_state=True,
        )
        result = state.result()  # re-raises the stage's error, failing the flow
        paths[step.stage] = str(step.path(Path(root)))  # not the cached path: the root may have moved
        status = "cached" if state.name == "Cached" else ("built" if result["built"] else "reused")
        manifest = read_manifest(Path(paths[step.stage]))
        row = {
            "stage": step.stage,
            "status": status,
            "seconds": round(time.time() - started, 1),
            "metric": key_metric(step.stage, manifest),
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
