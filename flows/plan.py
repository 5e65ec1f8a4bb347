"""The plan: which stages run, with which key and inputs. Pure; no Prefect, no ML."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.artifacts import REPO_ROOT, artifact_dir, is_complete, stage_key
from components.stages import STAGES, enabled, input_sources


@dataclass(frozen=True)
class Step:
    stage: str
    key: str
    cfg: Any
    inputs: dict[str, str]  # input role (an upstream stage's name) -> key of the artifact filling it
    sources: dict[str, str]  # input role -> the stage whose artifact fills it (itself, or an optional stand-in)

    def path(self, root: Path) -> Path:
        return artifact_dir(root, self.stage, self.key)


def artifacts_root(run_cfg: Any) -> Path:
    return Path(run_cfg.artifacts_dir).resolve() if run_cfg.artifacts_dir else REPO_ROOT / "artifacts"


def make_plan(cfg: Any) -> list[Step]:
    """Keys for every stage up to `run.until`, in dependency order. An optional stage runs only
    when enabled, and then fills its role for the stages after it (extend for pretrain)."""
    stage_cfgs = {name: getattr(cfg, name) for name in STAGES}
    sources = {name: input_sources(name, stage_cfgs) for name in STAGES}
    wanted: set[str] = set()

    def need(name: str) -> None:
        if name not in wanted:
            wanted.add(name)
            for dep in sources[name].values():
                need(dep)

    need(cfg.run.until)
    keys: dict[str, str] = {}
    steps = []
    for name, spec in STAGES.items():  # STAGES is in topological order
        if name not in wanted or not enabled(spec, stage_cfgs[name]):
            continue
        inputs = {role: keys[src] for role, src in sources[name].items()}
        keys[name] = stage_key(name, stage_cfgs[name], inputs, spec.module)
        steps.append(Step(name, keys[name], stage_cfgs[name], inputs, sources[name]))
    return steps


def describe(plan: list[Step], root: Path) -> str:
    rows = [f"{'stage':<10} {'key':<17} status"]
    for step in plan:
        status = "cached" if is_complete(step.path(root)) else "to build"
        rows.append(f"{step.stage:<10} {step.key:<17} {status}")
    return "\n".join(rows)
