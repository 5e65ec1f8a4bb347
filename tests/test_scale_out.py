"""Scale-out for real: the data stage on a local Ray cluster, training across two machine ranks.

Ray: the test starts its own cluster in this process (ray.init; ray.shutdown stops exactly
what it started) and compares every output file and the report with the local executor's.
Multi-node: two `accelerate launch`es on 127.0.0.1 (machine ranks 0 and 1, one process each)
train like one process with the same global batch.
"""
import dataclasses
import gzip
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from components.context import StageContext
from flows.config import register, to_pipeline_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _smoke(*overrides):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_pipeline_config(compose("config", overrides=["experiment=smoke", *overrides]))


def _tree(root: Path) -> dict[str, bytes]:
    """Every output file's content by its relative path: gzip's header holds a time, so the content
    inside; the rejected records name their folder's path; the logs name the executor (left out)."""
    def content(p: Path) -> bytes:
        data = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
        return data.replace(str(root).encode(), b"<out>")

    return {str(p.relative_to(root)): content(p) for p in sorted(root.rglob("*"))
            if p.is_file() and "logs" not in p.relative_to(root).parts}


@pytest.fixture
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local cluster of this test's own
    try:
        yield ray
    finally:
        ray.shutdown()


def test_the_data_stage_on_ray_gives_the_local_executors_output(ray_cluster, tmp_path):
    from components.data.run import run

    cfg = _smoke().data
    (tmp_path / "local").mkdir()
    (tmp_path / "ray").mkdir()
    local = run(cfg, {}, StageContext.local(tmp_path / "local", stage="data"))
    on_ray = run(dataclasses.replace(cfg, executor="ray"), {}, StageContext.local(tmp_path / "ray", stage="data"))
    workers = [a for a in ray_cluster._private.state.actors().values() if "RankWorker" in str(a.get("ActorClassName"))]
    assert len(workers) >= 6  # the test's cluster ran the passes (one Ray actor per datatrove job), not a new one
    assert on_ray == local and local["train_docs"] > 0
    ours, theirs = _tree(tmp_path / "ray"), _tree(tmp_path / "local")
    assert ours.keys() == theirs.keys() and any(name.startswith("train") for name in ours)
    assert [name for name in ours if ours[name] != theirs[name]] == []


def test_a_failing_ray_task_raises_naming_its_logs(ray_cluster, tmp_path):
    from components.data.config import DataConfig
    from components.data.executors import make_executor, run_to_completion

    def fail(data, rank, world_size):
        raise ValueError(f"planted failure in task {rank}")

    cfg = DataConfig(executor="ray")
    with pytest.raises(RuntimeError, match=r"2 of 2 ray tasks failed.*task_\*\.log"):
        run_to_completion(cfg, make_executor(cfg, [fail], "planted", 2, 2, tmp_path / "logs"))
    assert "planted failure" in (tmp_path / "logs" / "logs" / "task_00000.log").read_text()
