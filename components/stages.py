"""The stages as data: which inputs each one reads (by role), its config class, its code.

`flows/plan.py` builds the DAG from this table: each role is an edge from the stage that
fills it; `components.artifacts.stage_key` hashes the import closure of each stage's
`module` into its key, so editing a stage's code rebuilds it and what follows. Adding a
stage is a folder in components/ (config.py + run.py), a group in conf/ and a row here
(or `register_stage`).
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # its package; `<module>.run:run` is the entry point, `<module>.config` the config
    config_class: str
    needs: Mapping[str, str]  # input role -> the stage that fills it by default (`by_role`)
    trains: bool = False  # runs the training loop: `accelerate launch` when the launcher says so
    # a stand-in (its config has `enabled`): when enabled, it fills the role `stands_in_for` of
    # every other stage that reads that role (extend: a longer-context pretrain model)
    stands_in_for: str | None = None
    # may run in the flow's process beside other stages: it touches no process-wide state (torch's
    # RNG, Accelerate's singletons, a launcher's port); the others take turns (flows/dag.py)
    concurrent: bool = False
    # input roles that may go unfilled: left out of the stage's inputs when their stage is disabled (eval
    # without a reward model); any other role filled by a disabled stage fails the plan
    optional: tuple[str, ...] = ()

    def config_type(self) -> type:
        return getattr(importlib.import_module(f"{self.module}.config"), self.config_class)

    def runner(self, launcher: Any = None) -> Callable[[Any, dict, Any], dict]:
        """`run(cfg, inputs, ctx)`: in this process, or in the launcher's processes."""
        if self.trains and launcher is not None and launcher.strategy != "single":
            from components.train.launch import launch

            return functools.partial(launch, launcher=launcher)
        return importlib.import_module(f"{self.module}.run").run


def by_role(*stages: str, **fillers: str) -> dict[str, str]:
    """{input role: the stage filling it by default}: a bare name is a role filled by that stage."""
    return {**{name: name for name in stages}, **fillers}


def enabled(stage: Stage, cfg: Any) -> bool:
    """A stage whose config has `enabled` runs only when it is true (optional); the others always."""
    return bool(getattr(cfg, "enabled", True))


def input_sources(name: str, stage_cfgs: dict[str, Any]) -> dict[str, str]:
    """{input role: the stage whose artifact fills it}, the config's choice of edges: the role's
    default filler, or an enabled stand-in for it (never for the stand-in's own input)."""
    reads = getattr(stage_cfgs.get(name), "reads_input", lambda role: True)  # a config may leave an optional role out
    sources = {role: src for role, src in STAGES[name].needs.items()
               if role not in STAGES[name].optional or (enabled(STAGES[src], stage_cfgs.get(src)) and reads(role))}
    for role, default in sources.items():
        stand_ins = [s.name for s in STAGES.values() if s.stands_in_for == default and s.name != name
                     and enabled(s, stage_cfgs.get(s.name))]
        if len(stand_ins) > 1:
            raise ValueError(f"stage {name!r}: input {role!r} has more than one enabled stand-in for "
                             f"{default!r}: {stand_ins}; enable one of them")
        if stand_ins:
            sources[role] = stand_ins[0]
    return sources


def register_stage(stage: Stage) -> Stage:
    """Add a stage to the table (a plugin, or a test's toy stage); its name must be new."""
    if stage.name in STAGES:
        raise ValueError(f"stage {stage.name!r} is already in the stage table ({STAGES[stage.name].module})")
    if stage.name in ("run", "launcher"):  # the pipeline config's own sections
        raise ValueError(f"stage name {stage.name!r} is reserved for the pipeline config's {stage.name} section")
    STAGES[stage.name] = stage
    return stage


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("data", "components.data", "DataConfig", by_role(), concurrent=True),
        Stage("tokenizer", "tokenizer", "TokenizerConfig", by_role("data"), concurrent=True),
        Stage("pretrain", "components.pretrain", "PretrainConfig", by_role("tokenizer"), True),
        Stage("extend", "components.extend", "ExtendConfig", by_role("pretrain", "tokenizer"), True, stands_in_for="pretrain"),
        Stage("sft", "components.sft", "SFTConfig", by_role("pretrain", "tokenizer"), True),  # tokenizer: replay text
        Stage("align", "components.align", "AlignConfig", by_role("sft", "tokenizer"), True),  # tokenizer: replay text
        Stage("reward", "components.reward", "RewardConfig", by_role("sft"), True),
        Stage("rl", "components.rl", "RLConfig", by_role("sft", "reward"), True, optional=("reward",)),
        Stage("eval", "components.eval", "EvalConfig",
              by_role("data", "tokenizer", "pretrain", "sft", "align", "reward", "rl"), optional=("reward", "rl")),
    )
}
