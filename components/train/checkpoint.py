"""Training checkpoints: model, optimizer, step, RNG states; written atomically, last K kept."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def latest(ckpt_dir: Path) -> Path | None:
    found = sorted(Path(ckpt_dir).glob("step_*.pt"))
    return found[-1] if found else None


def save(ckpt_dir: Path, model: torch.nn.Module, optimizer, state: dict, keep: int) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step_{state['step']:08d}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": dict(state),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        },
        tmp,
    )
    os.replace(tmp, path)
    for old in sorted(ckpt_dir.glob("step_*.pt"))[:-keep]:
        old.unlink()
    return path


def load(path: Path, model: torch.nn.Module, optimizer) -> dict:
    blob = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    optimizer.load_state_dict(blob["optimizer"])
    torch.set_rng_state(blob["rng"]["torch"])
    np.random.set_state(blob["rng"]["numpy"])
    random.setstate(blob["rng"]["python"])
    return blob["state"]
