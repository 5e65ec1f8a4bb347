"""Entry point: `python -m flows.pipeline [hydra overrides]` (add `-m` for a multirun).

Composes and validates the whole config first (unknown keys and bad values fail
here, before any work), computes every stage's key, then runs the Prefect flow with
this job's overrides: the flow composes them again inside the run, as a run from the
UI or a deployment does, so every path has the same config and the same keys.
SIGTERM stops it like Ctrl-C, and its temporary Prefect server and workers go with it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from components.config import check_known_keys
from components.lifeline import ensure_watchdog
from flows.config import PipelineConfig, pipeline_config_class, register, to_pipeline_config
from flows.failure import engine_errors_in_one_line, failure_report
from flows.plan import Step, artifacts_root, describe, make_plan

log = logging.getLogger("pipeline")

_QUIET_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "components,tokenizer",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "offline",
    "WANDB_ERROR_REPORTING": "false",
    "WANDB_SILENT": "true",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}


def configure_prefect(root: Path) -> None:
    """Must run before prefect is imported: Prefect reads its settings at import."""
    for name, value in _QUIET_PREFECT.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", str(root / ".prefect-results"))


def run_pipeline(cfg: PipelineConfig, plan: list[Step] | None = None, overrides: list[str] | None = None) -> list[dict]:
    """Run (or, with run.dry_run, describe) the plan; `plan` is `make_plan(cfg)`, computed here
    only when the caller has none: the CLI computes it once, to fail before any work. With
    `overrides` (those `cfg` was composed from) the flow `llm-pipeline` runs them, composing
    inside the run; without, the in-process flow `llm-pipeline-plan` runs this plan as it is."""
    root = artifacts_root(cfg.run)
    plan = make_plan(cfg) if plan is None else plan
    if cfg.run.dry_run:
        log.info("plan (artifacts under %s):\n%s", root, describe(plan, root))
        return []
    root.mkdir(parents=True, exist_ok=True)
    configure_prefect(root)
    ensure_watchdog()  # if this process is killed, its children (datatrove, Prefect's server) go too
    for noisy in ("httpx", "matplotlib", "accelerate"):  # accelerate: a line per checkpoint file
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from flows.dag import pipeline_flow, plan_flow  # imports prefect, after its settings are in place

    rows = plan_flow(plan, str(root), cfg.launcher) if overrides is None else pipeline_flow(list(overrides))
    table = [f"{'stage':<10} {'status':<7} {'seconds':>8}  key metric"]
    table += [f"{r['stage']:<10} {r['status']:<7} {r['seconds']:>8}  {r['metric']}" for r in rows]
    if rows and rows[-1]["stage"] == "eval":
        table.append(f"report: {Path(rows[-1]['path']) / 'report.md'}")
    log.info("pipeline finished\n%s", "\n".join(table))
    return rows


def job_overrides() -> list[str]:
    """This Hydra job's overrides, as the flow composes them: the task's (a multirun job's own
    values included) and a config search path given on the command line."""
    overrides = HydraConfig.get().overrides
    return [*(o for o in overrides.hydra if o.startswith("hydra.searchpath")), *overrides.task]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> list[dict]:
    # In a multirun a failed job raises: Hydra records it and runs the others, the summary lists it
    # (flows/sweep.py), and the sweep exits non-zero at its end. A single run exits 2 (config) or 1 (a stage).
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        pipeline_cfg = to_pipeline_config(cfg)
        plan = make_plan(pipeline_cfg)  # keys read the data sources' files: a missing one fails here, in one line
    except (ValueError, FileNotFoundError, OmegaConfBaseException) as err:
        log.error("%s", err)
        if multirun:
            raise
        sys.exit(2)
    engine_errors_in_one_line()
    try:
        return run_pipeline(pipeline_cfg, plan, overrides=job_overrides())  # a multirun's job value: the sweep summary reads it
    except Exception as err:  # a stage raised: the reason, the traceback once, the reason again
        sys.stderr.write(failure_report(err))
        if multirun:
            raise
        sys.exit(1)


def check_top_level_overrides(args: list[str]) -> None:
    """A plain `foo=1` naming no section: Hydra's struct root would reject it in its own words (and
    exit 1); fail as every other unknown key does, in one line with the nearest valid names."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    valid = {f.name for f in dataclasses.fields(pipeline_config_class())}
    valid = sorted(valid | {p.name for p in conf.iterdir() if p.is_dir()} | {"hydra"})  # groups: experiment=smoke
    for arg in args:
        if arg.startswith(("-", "+", "~")) or "=" not in arg:  # flags, additions, deletions: not Hydra's struct
            continue
        top = arg.split("=", 1)[0].split("@")[0].replace("/", ".").split(".")[0]
        check_known_keys([top], valid, "")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def stop_after_interrupt(err: BaseException) -> None:
    """Ctrl-C or SIGTERM: Prefect has marked the run; stop its temporary server now (its atexit
    hook would, but interpreter exit first waits for stage threads that may run for hours), then
    leave at once. The lifeline watchdog, told no goodbye, ends what is left of our process tree
    (datatrove and training workers); partial builds stay, as after any kill."""
    sys.stderr.write(f"{err or 'interrupted'}: stopping the pipeline and the processes it started\n")
    try:
        from prefect.server.api.server import SubprocessASGIServer

        for server in list(SubprocessASGIServer._instances.values()):
            server.stop()
    except Exception as stop_err:  # the watchdog still ends the server
        sys.stderr.write(f"could not stop the temporary Prefect server: {stop_err}\n")
    logging.shutdown()
    os._exit(130)


def main() -> None:
    try:
        check_top_level_overrides(sys.argv[1:])
    except ValueError as err:
        log.error("%s", err)
        sys.exit(2)
    register()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _hydra_main()
    except KeyboardInterrupt as err:
        stop_after_interrupt(err)


if __name__ == "__main__":
    main()
