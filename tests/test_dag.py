"""The stage graph: a stage added from outside (a folder, a conf group, a table row; no edit in
flows/) is planned in topological order with its inputs' keys in its key and run by the real
Prefect flow; independent branches run at the same time; cycles and missing inputs fail at plan
time naming the stages; config chooses the edges (extend fills sft's `pretrain` role)."""
import contextlib
import json
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from components.stages import STAGES, Stage, by_role, register_stage
from flows.config import register, to_pipeline_config
from flows.plan import PlanError, make_plan, stage_graph

REPO = Path(__file__).resolve().parents[1]

TOY_CONFIG = '''
from dataclasses import dataclass


@dataclass(kw_only=True)
class ToyConfig:
    factor: int = 1  # added to the sum of the inputs' values
    meet: bool = False  # wait for another stage that meets too: passes only if both run at once
    enabled: bool = True
'''
TOY_RUN = '''
import threading
from pathlib import Path

MEETING = threading.Barrier(2, timeout=120)


def run(cfg, inputs, ctx):
    out_dir = ctx.out_dir
    value = cfg.factor + sum(int((Path(p) / "value.txt").read_text()) for p in inputs.values())
    if cfg.meet:
        MEETING.wait()  # raises BrokenBarrierError after the timeout when the other branch has not started
    (out_dir / "value.txt").write_text(str(value))
    return {"value": value, "stage": ctx.stage, "key": ctx.key}
'''


@pytest.fixture(scope="module")
def toy_home(tmp_path_factory):
    """A stage folder (config.py + run.py) outside the repo, importable, and a conf group for it."""
    home = tmp_path_factory.mktemp("plugin")
    (home / "toy_stage").mkdir()
    (home / "toy_stage" / "__init__.py").write_text("")
    (home / "toy_stage" / "config.py").write_text(TOY_CONFIG)
    (home / "toy_stage" / "run.py").write_text(TOY_RUN)
    for name, factor in (("seed", 5), ("left", 10), ("right", 100), ("toy", 7)):
        (home / "conf" / name).mkdir(parents=True)
        (home / "conf" / name / "default.yaml").write_text(f"factor: {factor}\nmeet: false\nenabled: true\n")
    sys.path.insert(0, str(home))
    yield home
    sys.path.remove(str(home))


def toy(name: str, *needs: str, concurrent: bool = True) -> Stage:
    return Stage(name, "toy_stage", "ToyConfig", by_role(*needs), (), concurrent=concurrent)


@contextlib.contextmanager
def registered(*stages: Stage):
    try:
        for stage in stages:
            register_stage(stage)
        yield
    finally:
        for stage in stages:
            STAGES.pop(stage.name, None)
        register()  # the schema without them again, for the next test


def pipeline_config(*overrides: str, conf: Path | None = None):
    register()
    extra = [f"hydra.searchpath=[file://{conf}]"] if conf else []
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_pipeline_config(compose("config", overrides=[*extra, *overrides]))


def test_an_added_stage_is_planned_after_its_input_with_its_key(toy_home):
    with registered(toy("toy", "tokenizer")):
        cfg = pipeline_config("+toy=default", "run.until=toy", conf=toy_home / "conf")
        assert cfg.toy.factor == 7  # from its conf group
        plan = make_plan(cfg)
        assert [s.stage for s in plan] == ["data", "tokenizer", "toy"]
        steps = {s.stage: s for s in plan}
        assert steps["toy"].inputs == {"tokenizer": steps["tokenizer"].key}
        other = {s.stage: s for s in make_plan(pipeline_config("+toy=default", "run.until=toy", "tokenizer.vocab_size=999",
                                                               conf=toy_home / "conf"))}
        assert other["data"].key == steps["data"].key
        assert other["tokenizer"].key != steps["tokenizer"].key and other["toy"].key != steps["toy"].key
        assert "toy" not in {s.stage for s in make_plan(pipeline_config("+toy=default", conf=toy_home / "conf"))}


def test_a_role_is_named_apart_from_the_stage_filling_it(toy_home):
    with registered(Stage("judge", "toy_stage", "ToyConfig", by_role("tokenizer", model="sft"), ())):
        steps = {s.stage: s for s in make_plan(pipeline_config("run.until=judge"))}
        assert list(steps) == ["data", "tokenizer", "pretrain", "sft", "judge"]
        assert steps["judge"].sources == {"tokenizer": "tokenizer", "model": "sft"}
        assert steps["judge"].inputs == {"tokenizer": steps["tokenizer"].key, "model": steps["sft"].key}
        on = {s.stage: s for s in make_plan(pipeline_config("run.until=judge", "extend.enabled=true"))}
        assert on["judge"].sources["model"] == "sft" and on["sft"].sources == {"pretrain": "extend", "tokenizer": "tokenizer"}


def test_the_flow_runs_added_stages_and_independent_branches_at_once(toy_home, tmp_path):
    """seed -> (left, right) -> join: left and right each wait for the other at a barrier, so the
    run passes only if Prefect runs them concurrently; join reads both."""
    from flows.pipeline import run_pipeline

    with registered(toy("seed"), toy("left", "seed"), toy("right", "seed"), toy("join", "left", "right")):
        overrides = ["+seed=default", "+left=default", "+right=default", "left.meet=true", "right.meet=true",
                     "run.until=join", f"run.artifacts_dir={tmp_path}"]
        cfg = pipeline_config(*overrides, conf=toy_home / "conf")
        plan = make_plan(cfg)
        assert [s.stage for s in plan] == ["seed", "left", "right", "join"]
        rows = run_pipeline(cfg)
        assert [(r["stage"], r["status"]) for r in rows] == [(s, "built") for s in ("seed", "left", "right", "join")]
        paths = {r["stage"]: Path(r["path"]) for r in rows}
        assert (paths["join"] / "value.txt").read_text() == str(1 + (10 + 5) + (100 + 5))
        manifest = json.loads((paths["join"] / "manifest.json").read_text())
        assert {role: i["key"] for role, i in manifest["inputs"].items()} == {"left": paths["left"].name,
                                                                             "right": paths["right"].name}
        assert manifest["metrics"]["stage"] == "join" and manifest["metrics"]["key"] == paths["join"].name
        assert [r["status"] for r in run_pipeline(pipeline_config(*overrides, conf=toy_home / "conf"))] == ["cached"] * 4


def test_a_cycle_fails_at_plan_time_naming_its_stages(toy_home):
    with registered(toy("chicken", "egg"), toy("egg", "chicken")):
        cfg = pipeline_config()
        with pytest.raises(PlanError, match=r"cycle: (chicken -> egg -> chicken|egg -> chicken -> egg)"):
            make_plan(cfg)


def test_a_missing_or_disabled_input_fails_at_plan_time_naming_both_stages(toy_home):
    with registered(toy("orphan", "nowhere")):
        with pytest.raises(PlanError, match=r"stage 'orphan': input 'nowhere' names stage 'nowhere', which is not"):
            make_plan(pipeline_config())
    with registered(toy("reader", "extend")):  # extend is off by default
        with pytest.raises(PlanError, match=r"stage 'reader': input 'extend' is filled by stage 'extend', which is "
                                            r"disabled: set extend\.enabled=true"):
            make_plan(pipeline_config())
        assert "reader" in stage_graph(pipeline_config("extend.enabled=true"))
    with registered(toy("toy")):  # run.until naming a disabled optional stage
        with pytest.raises(PlanError, match=r"run\.until='toy': the toy stage is off: set toy\.enabled=true"):
            make_plan(pipeline_config("run.until=toy", "toy.enabled=false"))


def test_config_chooses_the_edges_extend_fills_the_pretrain_role():
    off, on = stage_graph(pipeline_config()), stage_graph(pipeline_config("extend.enabled=true"))
    assert "extend" not in off and off["sft"] == {"pretrain": "pretrain", "tokenizer": "tokenizer"}
    assert on["sft"] == {"pretrain": "extend", "tokenizer": "tokenizer"} and on["eval"]["pretrain"] == "extend"
    assert on["extend"] == {"pretrain": "pretrain", "tokenizer": "tokenizer"}  # never its own input
    with pytest.raises(ValueError, match=r"run\.until"):
        pipeline_config("run.until=extend")  # a disabled stage: still the clear error


def test_a_stage_name_is_registered_once():
    with pytest.raises(ValueError, match="'sft' is already in the stage table"):
        register_stage(Stage("sft", "components.sft", "SFTConfig", by_role("pretrain"), ()))
