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
import struct
import time
from pathlib import Path
from typing import Any

from components.context import StageContext

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, run: Any = None):
        self.run = run

    def log(self, row: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}, step=step)

    def finish(self, summary: dict, images: dict[str, Path] | None = None,
               tables: dict[str, tuple[list[str], list[list]]] | None = None, model_dir: Path | None = None) -> None:
        """Summary metrics; images; tables as name -> (columns, rows); the exported model as a wandb artifact."""
        if self.run is None:
            return
        import wandb

        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        for name, path in (images or {}).items():
            if Path(path).is_file():
                self.run.log({name: wandb.Image(str(path))})
        for name, (columns, rows) in (tables or {}).items():
            self.run.log({name: wandb.Table(columns=columns, data=rows)})
        if model_dir is not None and Path(model_dir).is_dir():
            # a reference, not a copy: the artifact directory holds the files (and its manifest their digests)
            model = wandb.Artifact(self.run.name, type="model", metadata={"stage": self.run.job_type})
            model.add_reference(Path(model_dir).resolve().as_uri(), name="model")
            self.run.log_artifact(model)
        self._finish()

    def fail(self) -> None:
        """The stage raised: close the run as failed (a rerun resumes under a new run)."""
        if self.run is not None:
            self._finish(exit_code=1)

    def _finish(self, exit_code: int = 0, timeout_s: float = 60.0) -> None:
        # finish() returns before wandb-core has flushed the run's transaction log (it is
        # buffered and written on close), so an artifact whose manifest follows at once could
        # hold a .wandb file with only its header. Wait for the exit record to land.
        log_path = Path(self.run.settings.sync_file)
        self.run.finish(exit_code=exit_code)
        self.run = None
        deadline = time.monotonic() + timeout_s
        while not any(r.HasField("exit") for r in transaction_log_records(log_path)):
            if time.monotonic() > deadline:
                log.warning("wandb has not written %s in %.0f s: the offline run may be incomplete", log_path, timeout_s)
                return
            time.sleep(0.1)


def start(ctx: StageContext, cfg: Any) -> Tracker:
    """A wandb run named `<stage>-<key>` (from the stage's context) in its output dir, or a no-op tracker."""
    mode = os.environ.get("WANDB_MODE", "disabled")
    if mode == "disabled":
        return Tracker()
    import wandb

    stage, key = ctx.stage, ctx.key
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    # lineage: this build's key and its inputs' keys, so a run's config says which artifacts made it
    config = {**config, "stage": stage, "key": key, "upstream": dict(ctx.upstream)}
    try:
        # one group per pipeline run (every stage it built); a library call outside a pipeline: the stage
        run = wandb.init(project=os.environ.get("WANDB_PROJECT", "llm-pipeline"), name=f"{stage}-{key}",
                         group=ctx.run_group or stage, job_type=stage, dir=str(ctx.out_dir), config=config,
                         mode=mode, reinit="finish_previous")
    except Exception as error:  # a tracker must never fail the stage it watches
        log.warning("wandb.init failed (%s): this stage is not tracked in wandb", error)
        return Tracker()
    return Tracker(run)


def transaction_log_records(path: Path):
    """The protobuf records of a run's .wandb file, as far as it is written (a LevelDB-style
    log: 32 KiB blocks of chunks with a 7-byte header; wandb ships no Python reader)."""
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    pos, chunk = 7, b""  # 7: the file's own header (":W&B", magic, version)
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(data):  # padding, or a chunk not yet written
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, or the last chunk of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            yield record
            chunk = b""
