"""Training checkpoints: model, optimizer, RNG states of every rank, step and data position.

Accelerate's save_state writes what each strategy needs (one file on a single process,
per-rank shards under FSDP). We add state.json (the loop's TrainState and SpikeGuard
state, and the world size) and make the whole directory atomic: written as .step_N.tmp,
renamed to step_N by the main process once every rank has finished, so a kill mid-write
leaves nothing `latest` would pick.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator


def latest(ckpt_dir: Path) -> Path | None:
    found = sorted(p for p in Path(ckpt_dir).glob("step_*") if (p / "state.json").is_file())
    return found[-1] if found else None


def save(ckpt_dir: Path, accelerator: Accelerator, step: int, state: dict, keep: int) -> Path:
    """Checkpoint `step`: model, optimizer, RNG (Accelerate) and `state`, the loop's own (JSON)."""
    final = Path(ckpt_dir) / f"step_{step:08d}"
    tmp = Path(ckpt_dir) / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "state.json").write_text(json.dumps({**state, "world_size": accelerator.num_processes}))
        os.replace(tmp, final)
        for old in sorted(p for p in Path(ckpt_dir).glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def load(path: Path, accelerator: Accelerator, expected: tuple[str, ...] = ()) -> dict:
    """Restore model, optimizer and RNG in place; return the loop's state, which must hold `expected`."""
    state = json.loads((Path(path) / "state.json").read_text())
    missing = [k for k in expected if k not in state]
    if missing:
        raise ValueError(f"checkpoint {path}/state.json has no {missing}: written by an older training loop; "
                         f"delete {Path(path).parent} to train from the start")
    world = state.pop("world_size", accelerator.num_processes)
    if world != accelerator.num_processes:
        raise ValueError(f"checkpoint {path} was written by {world} processes; resume with the same number "
                         f"(this run has {accelerator.num_processes})")
    accelerator.load_state(str(path))
    return state
