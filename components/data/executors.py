"""datatrove executors from config: local (default), Slurm or Ray, running the same passes.

The passes run one after the other and each must finish before the next starts (the
next reads what the previous wrote). Local and Ray executors block until done; a Slurm
executor submits a job array and returns, so we wait for its completion markers. No
datatrove `depends=` chaining: the order is ours, as Prefect's is between stages.
Ray's run() only warns when a task fails, and Slurm's job can end with tasks unfinished:
both are checked against datatrove's completion markers, and an unfinished task raises.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

from components.data.config import DataConfig

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def make_executor(cfg: DataConfig, pipeline: list, name: str, tasks: int, workers: int, logging_dir: Path):
    """The configured datatrove executor for one pass (constructed, not started)."""
    if cfg.executor == "local":
        from datatrove.executor import LocalPipelineExecutor

        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=str(logging_dir),
                                     skip_completed=False)
    if cfg.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        s = cfg.slurm
        return SlurmPipelineExecutor(pipeline, tasks=tasks, workers=-1, time=s.time, partition=s.partition,
                                     cpus_per_task=s.cpus_per_task, mem_per_cpu_gb=s.mem_per_cpu_gb, qos=s.qos,
                                     venv_path=s.venv_path, sbatch_args=dict(s.sbatch_args), job_name=f"data_{name}",
                                     logging_dir=str(logging_dir), skip_completed=False)
    if cfg.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        r = cfg.ray
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=-1, cpus_per_task=r.cpus_per_task,
                                   mem_per_cpu_gb=r.mem_per_cpu_gb, tasks_per_job=r.tasks_per_job,
                                   ray_remote_kwargs={"runtime_env": ray_runtime_env()},
                                   logging_dir=str(logging_dir), skip_completed=False)
    raise ValueError(f"config error: data.executor={cfg.executor!r}: choose one of local, ray, slurm")


def ray_runtime_env() -> dict:
    """Ray's workers unpickle our pipeline steps, so they import this project: its checkout on
    their PYTHONPATH (on a multi-node cluster, the same path on every node, like the artifacts)."""
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {"env_vars": {"PYTHONPATH": path}}


def connect_ray(cfg: DataConfig) -> None:
    """Join the cluster at data.ray.address ("auto": the one `ray start` runs here), or start a local
    one for this process (address null); a cluster the caller connected to already is used as it is."""
    import ray

    if not ray.is_initialized():
        ray.init(address=cfg.ray.address, include_dashboard=False, runtime_env=ray_runtime_env())


def run_to_completion(cfg: DataConfig, executor) -> None:
    """Start the executor and return once all its tasks have finished."""
    if cfg.executor == "ray":
        connect_ray(cfg)
    executor.run()
    if cfg.executor == "ray" and (incomplete := executor.get_incomplete_ranks(skip_completed=True)):
        raise RuntimeError(f"data: {len(incomplete)} of {executor.world_size} ray tasks failed (ranks "
                           f"{incomplete[:10]}); see {executor.logging_dir.path}/logs/task_*.log and the ray "
                           "logs under /tmp/ray/session_latest")
    if cfg.executor == "slurm":  # sbatch returned at submission: wait for every task's completion marker
        job_gone_polls = 0
        while incomplete := executor.get_incomplete_ranks(skip_completed=True):
            job_gone_polls = 0 if slurm_job_alive(executor.job_id) else job_gone_polls + 1
            if job_gone_polls > 1:  # one poll of grace: completion markers on a network filesystem lag
                raise RuntimeError(f"data: slurm job {executor.job_id} ended with {len(incomplete)} of "
                                   f"{executor.world_size} tasks unfinished; see {executor.slurm_logs_folder}")
            log.info("data: %d/%d slurm tasks still running", len(incomplete), executor.world_size)
            time.sleep(cfg.slurm.poll_seconds)


def slurm_job_alive(job_id: str | None) -> bool:
    """The job (or one of its array tasks) is still queued or running."""
    if job_id is None:
        return False
    out = subprocess.run(["squeue", "-h", "-j", str(job_id)], capture_output=True, text=True)
    return out.returncode == 0 and bool(out.stdout.strip())
