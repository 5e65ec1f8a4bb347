"""Entry point of each process started by launch.py: rebuild the stage's config, run it."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from components.config import writable_schema
from components.stages import STAGES


def config_from_dict(cls: type, values: dict):
    """The dataclass (nested ones too) from its asdict(), with every __post_init__ check."""
    return OmegaConf.to_object(OmegaConf.merge(writable_schema(cls), values))  # frozen dataclasses: see writable_schema


def main(request_path: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stdout,
                        format=f"[rank {rank}] %(asctime)s %(name)s %(levelname)s %(message)s")
    request = json.loads(Path(request_path).read_text())
    stage = STAGES[request["stage"]]
    cfg = config_from_dict(stage.config_type(), request["config"])
    inputs = {k: Path(v) for k, v in request["inputs"].items()}
    metrics = stage.runner()(cfg, inputs, Path(request["out_dir"]))
    if rank == 0:
        out = Path(request_path).with_name("metrics.json")
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics))
        os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1])
