"""Run a training stage through `accelerate launch`: the same code on 1 CPU, 8 GPUs or many nodes.

The request (the stage's context, strategy, config, inputs) is written to
<out_dir>/launch/request.json; every process runs components.train.worker on it, which
rebuilds the context with its own rank; rank 0 writes metrics.json. The processes'
output streams to our log and to launch/launch.log; a non-zero exit raises with its tail.
On a machine rank > 0 (multi-node) the launch joins machine 0's: the processes write into
the same (shared) out_dir, but this machine's request and log live in a sibling
`.<key>.machine-<rank>/`, so nothing of machine 0's build is touched, and it returns no metrics.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from components.context import StageContext
from components.train.config import LauncherConfig

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_args(launcher: LauncherConfig, on_gpu: bool) -> list[str]:
    world = launcher.world_size
    # a fixed default port makes two launches on one machine (a parallel sweep, two pipelines) collide
    port = launcher.main_process_port or free_port()
    args = ["--num_processes", str(world), "--num_machines", str(launcher.num_machines),
            "--machine_rank", str(launcher.machine_rank), "--main_process_port", str(port),
            "--dynamo_backend", "no", "--mixed_precision", "no"]  # precision is the stage's (Accelerator kwarg)
    if launcher.main_process_ip:
        args += ["--main_process_ip", launcher.main_process_ip]
    if world > 1:
        # on CPU too: `--cpu` with 2 processes silently runs one (accelerate 1.15); the code passes cpu=True
        args.append("--multi_gpu")
    if not on_gpu:
        args += ["--num_cpu_threads_per_process", str(max(1, (os.cpu_count() or 1) // launcher.num_processes))]
    return [*args, *launcher.extra_args]


def launch_dir(ctx: StageContext, launcher: LauncherConfig) -> Path:
    """Machine 0: <out_dir>/launch (it owns the build); another machine: a sibling of its own."""
    if launcher.machine_rank == 0:
        return ctx.out_dir / "launch"
    return ctx.out_dir.parent / f".{ctx.key}.machine-{launcher.machine_rank}"


def write_request(cfg, inputs: dict[str, Path], ctx: StageContext, work: Path | None = None) -> Path:
    """<work>/request.json (default <out_dir>/launch): all a worker needs (`python -m components.train.worker PATH`)."""
    work = ctx.out_dir / "launch" if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    (work / "metrics.json").unlink(missing_ok=True)
    request = {"context": ctx.to_dict(), "config": dataclasses.asdict(cfg),
               "inputs": {k: str(v) for k, v in inputs.items()}}
    (work / "request.json").write_text(json.dumps(request, indent=2))
    return work / "request.json"


def launch(cfg, inputs: dict[str, Path], ctx: StageContext, launcher: LauncherConfig) -> dict:
    """`run(cfg, inputs, ctx)` of ctx.stage in the launcher's processes; rank 0's metrics ({} on
    a machine rank > 0: machine 0 has them)."""
    import torch

    stage = ctx.stage
    ctx = dataclasses.replace(ctx, strategy=launcher.strategy)
    work = write_request(cfg, inputs, ctx, launch_dir(ctx, launcher)).parent
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *accelerate_args(launcher, torch.cuda.is_available()),
           "-m", "components.train.worker", str(work / "request.json")]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    log.info("%s: %s", stage, " ".join(cmd))
    tail: list[str] = []
    worker_errors: list[str] = []  # torchrun prefixes a failing worker's traceback with "[rankN]:"
    with open(work / "launch.log", "w", buffering=1) as log_file:  # line-buffered: readable while it runs
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
        for line in proc.stdout:
            log_file.write(line)
            tail = [*tail[-39:], line.rstrip()]
            if line.startswith("[rank") and "]:" in line.split(" ", 1)[0] and len(worker_errors) < 40:
                worker_errors.append(line.rstrip())
            if "[rank" in line:  # the workers' own log lines; accelerate's chatter stays in the file
                log.info("%s", line.rstrip())
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{stage}: `accelerate launch` exited with code {code} ({work / 'launch.log'}):\n"
                           + "\n".join(worker_errors or tail))
    if launcher.machine_rank > 0:
        return {}
    return json.loads((work / "metrics.json").read_text())
