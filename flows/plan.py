"""The plan: which stages run, with which key and inputs. Pure; no Prefect, no ML.

The stage table (components/stages.py) declares each stage's inputs by role; the config
picks which stage fills each role (a role's default filler, or an enabled stand-in) and
which optional stages are on. That is a graph: the plan is its part that `run.until`
needs, checked for missing inputs and cycles before any work, in topological order.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.artifacts import REPO_ROOT, artifact_dir, is_complete, stage_key
from components.stages import STAGES, enabled, input_sources
from flows.explain import explain


@dataclass(frozen=True)
class Step:
    stage: str
    key: str
    cfg: Any
    inputs: dict[str, str]  # input role -> key of the artifact filling it
    sources: dict[str, str]  # input role -> the stage whose artifact fills it (the default filler, or a stand-in)

    def path(self, root: Path) -> Path:
        return artifact_dir(root, self.stage, self.key)


class PlanError(ValueError):
    """The stage graph cannot run: a missing or disabled input, or a cycle."""


def artifacts_root(run_cfg: Any) -> Path:
    return Path(run_cfg.artifacts_dir).resolve() if run_cfg.artifacts_dir else REPO_ROOT / "artifacts"


def stage_graph(cfg: Any) -> dict[str, dict[str, str]]:
    """{stage: {input role: filling stage}} for every enabled stage, as the config chooses the edges;
    an input filled by no stage, or by a disabled one, fails here naming both stages."""
    stage_cfgs = {name: getattr(cfg, name, None) for name in STAGES}
    graph = {name: input_sources(name, stage_cfgs) for name in STAGES if enabled(STAGES[name], stage_cfgs[name])}
    for name, sources in graph.items():
        for role, src in list(sources.items()):
            if src not in STAGES:
                raise PlanError(f"stage {name!r}: input {role!r} names stage {src!r}, which is not in the stage "
                                f"table (stages: {list(STAGES)})")
            if src not in graph and role in STAGES[name].optional:  # e.g. eval without a reward model
                del sources[role]
            elif src not in graph:
                raise PlanError(f"stage {name!r}: input {role!r} is filled by stage {src!r}, which is disabled: "
                                f"set {src}.enabled=true")
    return graph


def topological_order(graph: dict[str, dict[str, str]], wanted: set[str]) -> list[str]:
    """The wanted stages, each after the stages it reads (ties in stage-table order); a cycle fails
    naming the stages on it."""
    table_order = {name: i for i, name in enumerate(STAGES)}
    done: list[str] = []
    visiting: list[str] = []

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = visiting[visiting.index(name):] + [name]
            raise PlanError(f"the stage graph has a cycle: {' -> '.join(cycle)} (each reads the next)")
        visiting.append(name)
        for src in sorted(set(graph[name].values()), key=table_order.get):
            visit(src)
        visiting.pop()
        done.append(name)

    for name in sorted(wanted, key=table_order.get):
        visit(name)
    return done


def upstream_of(graph: dict[str, dict[str, str]], last: str) -> set[str]:
    """`last` and every stage it reads, directly or not."""
    found, todo = set(), [last]
    while todo:
        name = todo.pop()
        if name not in found:
            found.add(name)
            todo += graph[name].values()
    return found


def make_plan(cfg: Any) -> list[Step]:
    """Keys for every stage up to `run.until`, each after its inputs. An optional stage runs only
    when enabled, and a stand-in then fills its role for the other stages (extend for pretrain)."""
    until = cfg.run.until
    if until not in STAGES:
        raise PlanError(f"run.until={until!r}: no such stage; choose one of {list(STAGES)}")
    if not enabled(STAGES[until], getattr(cfg, until, None)):
        raise PlanError(f"run.until={until!r}: the {until} stage is off: set {until}.enabled=true, "
                        "or stop at another stage")
    graph = stage_graph(cfg)
    order = topological_order(graph, {name for name in graph})  # the whole graph: a cycle anywhere fails
    wanted = upstream_of(graph, until)
    keys: dict[str, str] = {}
    steps = []
    for name in (n for n in order if n in wanted):
        stage_cfg = getattr(cfg, name)
        inputs = {role: keys[src] for role, src in graph[name].items()}
        keys[name] = stage_key(name, stage_cfg, inputs, STAGES[name].module)
        steps.append(Step(name, keys[name], stage_cfg, inputs, graph[name]))
    return steps


def describe(plan: list[Step], root: Path) -> str:
    """The stage table (stage, key, cached or to build, inputs), then why each stage builds (flows/explain.py)."""
    rows = [f"{'stage':<10} {'key':<17} {'status':<9} inputs"]
    to_build = set()
    for step in plan:
        status = "cached" if is_complete(step.path(root)) else "to build"
        if status == "to build":
            to_build.add(step.key)
        reads = ", ".join(role if role == src else f"{role}<-{src}" for role, src in step.sources.items())
        rows.append(f"{step.stage:<10} {step.key:<17} {status:<9} {reads}")
    if to_build:
        rows += ["", "why each stage builds:", *explain(plan, root, to_build)]
    return "\n".join(rows)
