"""The stages as data: what each one needs, which config class it takes, which code it is.

The flow walks this table in order; `components.artifacts.stage_key` hashes the
`code` paths into each key, so editing a stage's code rebuilds it and what follows.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # its package; `<module>.run:run` is the entry point, `<module>.config` the config
    config_class: str
    needs: tuple[str, ...]
    code: tuple[str, ...]  # repo-relative source paths fingerprinted into the key
    trains: bool = False  # runs the training loop: `accelerate launch` when the launcher says so

    def config_type(self) -> type:
        return getattr(importlib.import_module(f"{self.module}.config"), self.config_class)

    def runner(self, launcher: Any = None) -> Callable[[Any, dict, Any], dict]:
        """`run(cfg, inputs, out_dir)`: in this process, or in the launcher's processes."""
        if self.trains and launcher is not None and launcher.strategy != "single":
            from components.train.launch import launch

            return functools.partial(launch, self.name, launcher=launcher)
        return importlib.import_module(f"{self.module}.run").run


_TRAIN = ("components/train", "components/model")

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("data", "components.data", "DataConfig", (), ("components/data",)),
        Stage("tokenizer", "tokenizer", "TokenizerConfig", ("data",), ("tokenizer",)),
        Stage("pretrain", "components.pretrain", "PretrainConfig", ("tokenizer",), ("components/pretrain", *_TRAIN), True),
        Stage("sft", "components.sft", "SFTConfig", ("pretrain",), ("components/sft", "components/tasks", *_TRAIN), True),
        Stage("align", "components.align", "AlignConfig", ("sft",), ("components/align", "components/tasks", *_TRAIN), True),
        Stage(
            "eval",
            "components.eval",
            "EvalConfig",
            ("data", "tokenizer", "pretrain", "sft", "align"),
            ("components/eval", "components/tasks", "components/train"),
        ),
    )
}
