"""The stages as data: what each one needs, which config class it takes, which code it is.

The flow walks this table in order; `components.artifacts.stage_key` hashes the import
closure of each stage's `module` into its key, so editing a stage's code rebuilds it and what follows.
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
    trains: bool = False  # runs the training loop: `accelerate launch` when the launcher says so
    # optional stage (its config has `enabled`): when enabled, the stages after it that need
    # `stands_in_for` read this stage's artifact in its place (extend: a longer-context pretrain model)
    stands_in_for: str | None = None

    def config_type(self) -> type:
        return getattr(importlib.import_module(f"{self.module}.config"), self.config_class)

    def runner(self, launcher: Any = None) -> Callable[[Any, dict, Any], dict]:
        """`run(cfg, inputs, out_dir)`: in this process, or in the launcher's processes."""
        if self.trains and launcher is not None and launcher.strategy != "single":
            from components.train.launch import launch

            return functools.partial(launch, self.name, launcher=launcher)
        return importlib.import_module(f"{self.module}.run").run


def enabled(stage: Stage, cfg: Any) -> bool:
    """Optional stages run only when their config says `enabled: true`; the others always."""
    return stage.stands_in_for is None or bool(getattr(cfg, "enabled", False))


def input_sources(name: str, stage_cfgs: dict[str, Any]) -> dict[str, str]:
    """{input role (a stage in `needs`): the stage whose artifact fills it}. An enabled optional
    stage before `name` fills the role it stands in for (stages are listed in order)."""
    sources = {dep: dep for dep in STAGES[name].needs}
    for other in STAGES.values():
        if other.name == name:
            break
        if other.stands_in_for in sources and enabled(other, stage_cfgs.get(other.name)):
            sources[other.stands_in_for] = other.name
    return sources

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("data", "components.data", "DataConfig", ()),
        Stage("tokenizer", "tokenizer", "TokenizerConfig", ("data",)),
        Stage("pretrain", "components.pretrain", "PretrainConfig", ("tokenizer",), True),
        Stage("extend", "components.extend", "ExtendConfig", ("pretrain", "tokenizer"), True, stands_in_for="pretrain"),
        Stage("sft", "components.sft", "SFTConfig", ("pretrain",), True),
        Stage("align", "components.align", "AlignConfig", ("sft",), True),
        Stage("eval", "components.eval", "EvalConfig", ("data", "tokenizer", "pretrain", "sft", "align")),
    )
}
