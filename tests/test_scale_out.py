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
from components.train.launch import free_port
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


# --- launcher=multi_node: machine ranks 0 and 1 on 127.0.0.1, one process each ---

def _pretrain_cfg():
    from components.model.config import ModelConfig
    from components.pretrain.config import PretrainConfig

    tiny = ModelConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=32)
    return PretrainConfig(model=tiny, max_steps=4, warmup_steps=1, batch_size=4, grad_accum=2, lr=1e-2,
                          mixed_precision="no", log_every=1, save_every=100)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_two_machine_ranks_train_like_one_process(tmp_path):
    """Machine 0 builds (lock, temporary dir, manifest); machine 1 joins its launch without the lock
    and waits for the manifest: as `run_stage` does on each machine (flows/dag.py)."""
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from components.artifacts import build, follow, read_manifest
    from components.pretrain.run import run as pretrain
    from components.train.config import LauncherConfig
    from components.train.launch import launch
    from tests.tiny import make_tokenizer_artifact

    tok = make_tokenizer_artifact(tmp_path / "tok")
    cfg, inputs = _pretrain_cfg(), {"tokenizer": tok}
    (tmp_path / "single").mkdir()
    pretrain(cfg, inputs, StageContext.local(tmp_path / "single"))
    port, root, key = free_port(), tmp_path / "shared", "k" * 16
    machine = {rank: LauncherConfig(strategy="ddp", num_processes=1, num_machines=2, machine_rank=rank,
                                    main_process_ip="127.0.0.1", main_process_port=port, follow_timeout_s=300)
               for rank in (0, 1)}
    with ThreadPoolExecutor(2) as pool:
        joined = pool.submit(follow, root, "pretrain", key, cfg, inputs,
                             functools.partial(launch, launcher=machine[1]), 300)
        built = pool.submit(build, root, "pretrain", key, cfg, inputs, functools.partial(launch, launcher=machine[0]))
        path, was_built = built.result(timeout=600)
        assert joined.result(timeout=60) == (path, False) and was_built
    metrics = read_manifest(path)["metrics"]
    assert metrics["world_size"] == 2 and metrics["strategy"] == "ddp"
    one, two = _losses(tmp_path / "single"), _losses(path)
    assert len(one) == len(two) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4  # same global batch, fp32: reduction order only
    machine_0_log = (path / "launch" / "launch.log").read_text()
    machine_1_log = (root / "pretrain" / f".{key}.machine-1" / "launch.log").read_text()
    assert f"[rank 0] pretrain {key}: process 0 of 2" in machine_0_log and "[rank 1]" not in machine_0_log
    assert f"[rank 1] pretrain {key}: process 1 of 2" in machine_1_log and "[rank 0]" not in machine_1_log
    assert sorted(p.name for p in (root / "pretrain").iterdir()) == [f".{key}.lock", f".{key}.machine-1", key]
    assert not (root / "pretrain" / f".{key}.machine-1" / "metrics.json").exists()  # machine 0's metrics only


def test_machines_with_different_keys_fail_at_once_instead_of_training_together(tmp_path):
    """Machine 1 started with other overrides (so another key) joins the same rendezvous: the
    launch's processes compare stage and key before any step, and both machines fail saying so."""
    import functools
    from concurrent.futures import ThreadPoolExecutor

    from components.artifacts import build, follow
    from components.train.config import LauncherConfig
    from components.train.launch import launch
    from tests.tiny import make_tokenizer_artifact

    cfg, inputs, port = _pretrain_cfg(), {"tokenizer": make_tokenizer_artifact(tmp_path / "tok")}, free_port()
    machine = {rank: LauncherConfig(strategy="ddp", num_processes=1, num_machines=2, machine_rank=rank,
                                    main_process_ip="127.0.0.1", main_process_port=port) for rank in (0, 1)}
    root = tmp_path / "shared"
    with ThreadPoolExecutor(2) as pool:
        joined = pool.submit(follow, root, "pretrain", "b" * 16, cfg, inputs,
                             functools.partial(launch, launcher=machine[1]), 60)
        built = pool.submit(build, root, "pretrain", "a" * 16, cfg, inputs,
                            functools.partial(launch, launcher=machine[0]))
        for future in (built, joined):
            with pytest.raises(RuntimeError, match="exited with code"):
                future.result(timeout=300)
    kept = sorted((root / "pretrain").glob(f".{'a' * 16}.failed-*"))  # a failed build's files, set aside at once
    assert len(kept) == 1, sorted(p.name for p in (root / "pretrain").iterdir())
    log = (kept[0] / "launch" / "launch.log").read_text()
    assert "run different stages" in log and f"pretrain {'b' * 16}" in log
    assert not (root / "pretrain" / ("a" * 16)).exists()  # nothing trained, no manifest


def test_another_machine_waits_for_a_stage_it_does_not_run_and_says_so(tmp_path):
    from components.artifacts import follow

    with pytest.raises(TimeoutError, match=r"data k{16}: machine rank 0 wrote no manifest.*follow_timeout_s=0\.5"):
        follow(tmp_path, "data", "k" * 16, None, {}, None, 0.5)
    assert not (tmp_path / "data").exists()  # nothing written, no lock taken


def test_the_whole_pipeline_on_two_machine_ranks(tmp_path):
    """`python -m flows.pipeline launcher=multi_node launcher.machine_rank=R` on each "machine" against
    one artifacts folder: machine 0 builds everything; machine 1 joins each training launch."""
    import os
    import subprocess
    import sys

    root, port = tmp_path / "shared", free_port()
    procs, logs = {}, {}
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # never the user's server
        env.update(PREFECT_HOME=str(tmp_path / f"prefect-{rank}"), OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
                   PREFECT_RESULTS_LOCAL_STORAGE_PATH=str(tmp_path / f"results-{rank}"))
        logs[rank] = tmp_path / f"machine-{rank}.log"
        with open(logs[rank], "w") as out:
            procs[rank] = subprocess.Popen(
                [sys.executable, "-m", "flows.pipeline", "experiment=smoke", f"run.artifacts_dir={root}",
                 "launcher=multi_node", "launcher.strategy=ddp", "launcher.num_processes=1",
                 "launcher.main_process_ip=127.0.0.1", f"launcher.main_process_port={port}",
                 f"launcher.machine_rank={rank}", "launcher.follow_timeout_s=600"],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        codes = {rank: proc.wait(timeout=900) for rank, proc in procs.items()}
    finally:
        for proc in procs.values():  # exactly the two we started
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    text = {rank: logs[rank].read_text() for rank in logs}
    assert codes == {0: 0, 1: 0}, text[0][-3000:] + "\n---\n" + text[1][-3000:]
    assert "waiting for machine rank 0 to build" in text[1]
    for stage in ("pretrain", "sft", "align"):
        (path,) = [p for p in (root / stage).iterdir() if not p.name.startswith(".")]
        assert json.loads((path / "manifest.json").read_text())["metrics"]["world_size"] == 2
        (joined,) = (root / stage).glob(".*.machine-1")
        assert f"[rank 1] {stage} {path.name}: process 1 of 2" in (joined / "launch.log").read_text()
    (eval_dir,) = [p for p in (root / "eval").iterdir() if not p.name.startswith(".")]
    assert (eval_dir / "report.md").is_file() and not list((root / "eval").glob(".*.machine-1"))
