"""The config boundary: unknown keys fail in every form before any work, configs are frozen and
validated once, data sources are globbed once, and one glob helper serves every input file list."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from components.artifacts import stage_key
from components.config import check_config_keys, expand_paths
from components.data.config import DataConfig
from components.sft.config import SFTConfig
from components.stages import STAGES
from flows.config import PipelineConfig, register, to_pipeline_config
from flows.plan import make_plan

REPO = Path(__file__).resolve().parents[1]


def _cli(tmp_path: Path, *overrides: str, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m flows.pipeline OVERRIDES` (or `code` run the same way), artifacts under tmp_path."""
    args = [*overrides, f"run.artifacts_dir={tmp_path / 'artifacts'}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "flows.pipeline", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "config error" in line]


def _experiment_dir(tmp_path: Path) -> Path:
    """Experiment presets with typos, found through hydra.searchpath."""
    conf = tmp_path / "extra_conf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "typo.yaml").write_text("# @package _global_\nsft:\n  lrr: 0.1\n")
    (conf / "experiment" / "nested.yaml").write_text("# @package _global_\npretrain:\n  model:\n    dmodel: 8\n")
    return conf


@pytest.mark.parametrize("overrides, key, near", [
    (["+sft.lrr=1"], "sft.lrr", "sft.lr"),  # accepted and silently dropped before
    (["++sft.lrr=1"], "sft.lrr", "sft.lr"),
    (["sft.lrr=1"], "sft.lrr", "sft.lr"),
    (["pretrain.model.dmodel=8"], "pretrain.model.dmodel", "pretrain.model.d_model"),
    (["+pretrain.model.dmodel=8"], "pretrain.model.dmodel", "pretrain.model.d_model"),
    (["+data.c4_rules.min_words=2"], "data.c4_rules.min_words", "data.c4_rules.min_words_per_line"),
    (["+foo=1"], "foo", "valid keys here: align, data"),
    (["foo=1"], "foo", "valid keys here: align, data"),  # a plain top-level typo: Hydra's own error before
    (["sfft.lr=1"], "sfft", "did you mean sft"),
    (["data.sources=[{path: x.jsonl, typ: jsonl}]"], "data.sources[0].typ", "data.sources[0].type"),
    (["experiment=typo"], "sft.lrr", "sft.lr"),  # a typo in an experiment yaml
    (["experiment=nested"], "pretrain.model.dmodel", "pretrain.model.d_model"),
])
def test_unknown_key_fails_in_one_line_before_any_work(tmp_path, overrides, key, near):
    conf = _experiment_dir(tmp_path)
    result = _cli(tmp_path, *overrides, f"hydra.searchpath=[file://{conf}]", "run.dry_run=true")
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = _error_lines(result)
    assert f"unknown key {key}:" in line and near in line
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "artifacts").exists()


def test_unknown_key_stops_a_real_run_too(tmp_path):
    """Without dry_run: before this fix `+sft.lrr=1` ran the whole pipeline."""
    result = _cli(tmp_path, "+sft.lrr=1")
    assert result.returncode == 2 and "unknown key sft.lrr: did you mean sft.lr" in result.stdout + result.stderr
    assert not (tmp_path / "artifacts").exists()


def test_the_cli_validates_and_plans_once(tmp_path):
    """`make_plan` (which fingerprints every input file) runs once per CLI call, not once to check
    and again to run."""
    code = ("import runpy, flows.plan as plan; calls = []; make_plan = plan.make_plan\n"
            "plan.make_plan = lambda cfg: calls.append(1) or make_plan(cfg)  # a counting spy, the real plan\n"
            "try: runpy.run_module('flows.pipeline', run_name='__main__', alter_sys=True)\n"
            "finally: print('plans computed:', len(calls))")
    result = _cli(tmp_path, "run.dry_run=true", code=code)
    assert result.returncode == 0, result.stderr
    assert "plans computed: 1" in result.stdout
    assert "to build" in result.stdout + result.stderr  # the plan was printed


def _config(*overrides: str) -> PipelineConfig:
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_pipeline_config(compose("config", overrides=list(overrides)))


def test_every_stage_config_is_frozen_all_the_way_down():
    cfg = _config("experiment=smoke")
    for section in [*STAGES, "launcher", "run"]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(cfg, section), "seed", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pretrain.model.d_model = 8
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.c4_rules.min_words_per_line = 1
    assert cfg.pretrain.model.d_model == 64  # the experiment's value, composed into the frozen config


def test_key_check_walks_nested_sections_and_leaves_free_dicts_alone():
    check_config_keys({"data": {"slurm": {"sbatch_args": {"account": "me"}}}, "sft": {"lr": 1.0}}, PipelineConfig)
    with pytest.raises(ValueError, match=r"^config error: unknown key data\.slurm\.partiton: did you mean data\.slurm\.partition\?$"):
        check_config_keys({"data": {"slurm": {"partiton": "gpu"}}}, PipelineConfig)
    with pytest.raises(ValueError, match=r"unknown key align\.beat: did you mean align\.beta"):
        check_config_keys({"align": {"beat": 0.1}}, PipelineConfig)


def test_data_sources_are_globbed_once_and_the_run_reads_what_the_key_hashed(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "one"}\n')
    cfg = _config(f"data.sources=[{tmp_path / 'in' / '*.jsonl'}]", "run.until=data")
    (step,) = make_plan(cfg)
    assert [s.files for s in step.cfg.resolved_sources] == [(tmp_path / "in" / "a.jsonl",)]
    (tmp_path / "in" / "b.jsonl").write_text('{"text": "two"}\n')  # lands between planning and the run
    assert step.cfg.source_files() == [tmp_path / "in" / "a.jsonl"]
    assert make_plan(cfg)[0].key == step.key
    assert make_plan(_config(f"data.sources=[{tmp_path / 'in' / '*.jsonl'}]", "run.until=data"))[0].key != step.key


def test_one_glob_helper_double_star_is_recursive_for_every_input(tmp_path):
    for rel in ("top.jsonl", "a/one.jsonl", "a/b/two.jsonl", "a/b/skip.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('{"text": "x"}\n')
    pattern = str(tmp_path / "**" / "*.jsonl")
    expected = sorted(tmp_path / rel for rel in ("top.jsonl", "a/one.jsonl", "a/b/two.jsonl"))
    assert expand_paths([pattern], "k") == expected
    assert DataConfig(sources=[pattern]).source_files() == expected  # data sources
    sft = SFTConfig(sources=[pattern])
    key = stage_key("sft", sft, {}, "components.sft")
    (tmp_path / "a" / "b" / "two.jsonl").write_text('{"text": "changed"}\n')
    assert stage_key("sft", sft, {}, "components.sft") != key  # sft.sources hash the nested file too
    assert expand_paths([str(tmp_path / "a")], "k") == [tmp_path / "a"]  # a plain directory as it is
    with pytest.raises(FileNotFoundError, match=r"sft\.sources: no file matches"):
        expand_paths([str(tmp_path / "**" / "*.parquet")], "sft.sources")
