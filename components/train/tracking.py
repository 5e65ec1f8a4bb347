"""wandb for a stage: the training curve and final metrics, where people look for them.

The mode is wandb's own WANDB_MODE: the pipeline sets `offline` unless the user exported
another (`online` to stream, `disabled` for none); unset, as in library use and benchmarks,
it is `disabled`. Offline runs land inside the artifact (`<artifact>/wandb/offline-run-*`;
`wandb sync` uploads them). Nothing here is part of any cache key.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, run: Any = None):
        self.run = run

    def log(self, row: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=step)

    def finish(self, summary: dict, images: dict[str, Path] | None = None) -> None:
        if self.run is None:
            return
        import wandb

        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        for name, path in (images or {}).items():
            if Path(path).is_file():
                self.run.log({name: wandb.Image(str(path))})
        self.run.finish()
        self.run = None


    def fail(self) -> None:
        """The stage raised: close the run as failed (a rerun resumes under a new run)."""
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None


def start(cfg: Any, out_dir: Path) -> Tracker:
    """A wandb run named `<stage>-<key>` (from the artifact's directory), or a no-op tracker."""
    mode = os.environ.get("WANDB_MODE", "disabled")
    if mode == "disabled":
        return Tracker()
    import wandb

    out_dir = Path(out_dir)
    stage, key = out_dir.parent.name, out_dir.name.lstrip(".").split(".")[0]  # <root>/<stage>/.<key>.partial
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    try:
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "llm-pipeline"), name=f"{stage}-{key}", group=stage,
                         job_type=stage, dir=str(out_dir), config=config, mode=mode, reinit="finish_previous")
    except Exception as error:  # a tracker must never fail the stage it watches
        log.warning("wandb.init failed (%s): this stage is not tracked in wandb", error)
        return Tracker()
    return Tracker(run)
