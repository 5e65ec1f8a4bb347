"""Entry point of each process started by launch.py: rebuild the stage's config and context, run it."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from components.config import writable_schema
from components.context import StageContext
from components.stages import STAGES


def config_from_dict(cls: type, values: dict):
    """The dataclass (nested ones too) from its asdict(), with every __post_init__ check."""
    return OmegaConf.to_object(OmegaConf.merge(writable_schema(cls), values))  # frozen dataclasses: see writable_schema


def process_context(request: dict) -> StageContext:
    """The launching stage's context (strategy included) as this process sees it: accelerate's rank
    and world size (its process group, which the stage's Accelerator then joins)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # as make_accelerator's Accelerator(cpu=...)
    return StageContext(**request["context"]).in_process(state.process_index, state.num_processes)


def check_same_stage(ctx: StageContext) -> None:
    """Every process of the launch runs the same stage and key: machines whose configs or code
    differ (so do their keys) would otherwise train different stages in one process group."""
    import torch.distributed as dist

    if ctx.world_size == 1 or not dist.is_initialized():
        return
    seen: list = [None] * ctx.world_size
    dist.all_gather_object(seen, f"{ctx.stage} {ctx.key}")
    if len(set(seen)) > 1:
        raise RuntimeError(f"the launch's processes run different stages (by rank: {seen}); every machine "
                           "must run the same config and code (multi-node: the same overrides and checkout)")


def main(request_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    ctx = process_context(request)
    check_same_stage(ctx)
    logging.basicConfig(level=logging.INFO if ctx.is_main else logging.WARNING, stream=sys.stdout,
                        format=f"[rank {ctx.rank}] %(asctime)s %(name)s %(levelname)s %(message)s")
    # every rank says it took part (the others log only warnings): a multi-node launch's log on each
    # machine shows its own ranks, and a launch that silently ran fewer processes is visible
    sys.stdout.write(f"[rank {ctx.rank}] {ctx.stage} {ctx.key}: process {ctx.rank} of {ctx.world_size}\n")
    sys.stdout.flush()
    stage = STAGES[ctx.stage]
    cfg = config_from_dict(stage.config_type(), request["config"])
    inputs = {k: Path(v) for k, v in request["inputs"].items()}
    metrics = stage.runner()(cfg, inputs, ctx)
    if ctx.is_main:
        out = Path(request_path).with_name("metrics.json")
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics))
        os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1])
