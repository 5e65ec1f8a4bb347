"""The cache key and the atomic artifact contract, without Prefect or ML."""
import hashlib
import dataclasses
import json
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.artifacts import build, is_complete, stage_key
from components.config import check, input_files, log_only


@dataclass(kw_only=True)
class Toy:
    lr: float = 1e-3
    log_every: int = log_only(10)
    layers: list[int] = field(default_factory=lambda: [1, 2])

    def __post_init__(self):
        check(self.lr > 0, "toy.lr", self.lr, "must be > 0")


CODE = "components.sft"  # a stage's package: its code is the import closure of its run and config modules


def test_key_changes_with_output_relevant_config_only():
    base = stage_key("toy", Toy(), {}, CODE)
    assert stage_key("toy", Toy(), {}, CODE) == base
    assert stage_key("toy", Toy(lr=2e-3), {}, CODE) != base
    assert stage_key("toy", Toy(layers=[1, 3]), {}, CODE) != base
    assert stage_key("toy", Toy(log_every=99), {}, CODE) == base  # logging only


def test_key_changes_with_inputs_stage_and_code(tmp_path, monkeypatch):
    base = stage_key("toy", Toy(), {"up": "a"}, CODE)
    assert stage_key("toy", Toy(), {"up": "b"}, CODE) != base
    assert stage_key("other", Toy(), {"up": "a"}, CODE) != base
    assert stage_key("toy", Toy(), {"up": "a"}, "components.eval") != base
    import shutil

    import components.artifacts as artifacts

    shutil.copytree(artifacts.REPO_ROOT / "components", tmp_path / "components")  # never edit the real repo
    monkeypatch.setattr(artifacts, "REPO_ROOT", tmp_path)
    before = stage_key("toy", Toy(), {}, CODE)
    with open(tmp_path / "components" / "sft" / "run.py", "a") as run:
        run.write("\nADDED = 2\n")
    assert stage_key("toy", Toy(), {}, CODE) != before


def test_bad_value_names_the_key():
    with pytest.raises(ValueError, match=r"toy\.lr=-1"):
        Toy(lr=-1)


def _write(cfg, inputs, ctx) -> dict:
    (ctx.out_dir / "weights.txt").write_text(str(cfg.lr))
    return {"loss": 1.5}


def test_build_writes_manifest_last_and_reuses(tmp_path):
    path, built = build(tmp_path, "toy", "k1", Toy(), {}, _write)
    assert built and is_complete(path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["metrics"] == {"loss": 1.5} and manifest["key"] == "k1"
    digest = hashlib.sha256(b"0.001").hexdigest()
    assert manifest["files"] == {"weights.txt": {"size": 5, "sha256": digest}}
    assert manifest["config"]["log_every"] == 10
    again, built = build(tmp_path, "toy", "k1", Toy(), {}, _write)
    assert again == path and not built


def test_a_stage_that_raises_leaves_nothing_trusted(tmp_path):
    def crash(cfg, inputs, ctx):
        (ctx.out_dir / "half.bin").write_bytes(b"partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom") as raised:
        build(tmp_path, "toy", "k2", Toy(), {}, crash)
    (aside,) = (tmp_path / "toy").glob(".k2.failed-*")  # the evidence, set aside at once: nothing trusted
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == [aside.name, ".k2.lock"]
    assert (aside / "half.bin").read_bytes() == b"partial"
    assert f"kept in {aside} (half.bin)" in raised.value.__notes__[0]
    path, built = build(tmp_path, "toy", "k2", Toy(), {}, _write)
    assert built and is_complete(path) and not (path / "half.bin").exists()
    assert (aside / "half.bin").read_bytes() == b"partial"  # where the note said, after the next run too


def test_directory_without_manifest_is_rebuilt(tmp_path):
    stale = tmp_path / "toy" / "k3"
    stale.mkdir(parents=True)
    (stale / "weights.txt").write_text("stale")
    path, built = build(tmp_path, "toy", "k3", Toy(lr=0.5), {}, _write)
    assert built and (path / "weights.txt").read_text() == "0.5"
    (aside,) = (tmp_path / "toy").glob(".k3.damaged-*")
    assert (aside / "weights.txt").read_text() == "stale"


def _slow_write(cfg, inputs, ctx) -> dict:
    with open(ctx.out_dir.parents[1] / "calls.txt", "a") as f:
        f.write("call\n")
    time.sleep(1.0)
    return _write(cfg, inputs, ctx)


def _build_in_child(root: str) -> None:
    build(Path(root), "toy", "k4", Toy(), {}, _slow_write)


def test_concurrent_builders_of_one_key_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "calls.txt").read_text().count("call") == 1


def test_checkpoints_of_an_interrupted_build_survive_for_resume(tmp_path):
    def killed(cfg, inputs, ctx):
        out = ctx.out_dir
        (out / "checkpoints").mkdir()
        (out / "checkpoints" / "step_00000003.pt").write_text("state")
        (out / "model.bin").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, "toy", "k5", Toy(), {}, killed)
    assert not (tmp_path / "toy" / "k5").exists()
    seen = {}

    def resumed(cfg, inputs, ctx):
        seen["files"] = sorted(str(p.relative_to(ctx.out_dir)) for p in ctx.out_dir.rglob("*") if p.is_file())
        return _write(cfg, inputs, ctx)

    path, built = build(tmp_path, "toy", "k5", Toy(), {}, resumed)
    assert built and seen["files"] == ["checkpoints/step_00000003.pt"]
    assert not (path / "checkpoints").exists()  # removed only after the rename
    assert "checkpoints/step_00000003.pt" not in json.loads((path / "manifest.json").read_text())["files"]


@dataclass(kw_only=True)
class Reader:
    sources: list[str] = input_files()
    seed: int = 0


def test_key_follows_the_content_of_input_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "b.jsonl").write_text('{"x": 2}\n')
    glob = str(tmp_path / "*.jsonl")
    base = stage_key("toy", Reader(sources=[glob]), {}, CODE)
    assert stage_key("toy", Reader(sources=[glob]), {}, CODE) == base
    (tmp_path / "b.jsonl").write_text('{"x": 3}\n')  # same paths, new content
    changed = stage_key("toy", Reader(sources=[glob]), {}, CODE)
    assert changed != base
    (tmp_path / "c.jsonl").write_text("")  # a new file the glob now matches
    assert stage_key("toy", Reader(sources=[glob]), {}, CODE) != changed
    assert stage_key("toy", Reader(), {}, CODE) == stage_key("toy", Reader(), {}, CODE)  # no files: no fingerprint
    with pytest.raises(FileNotFoundError, match=r"toy\.sources: no file matches"):
        stage_key("toy", Reader(sources=[str(tmp_path / "missing*.json")]), {}, CODE)


def test_fingerprint_of_a_directory_covers_every_file(tmp_path):
    from components.artifacts import fingerprint_paths

    (tmp_path / "model" / "sub").mkdir(parents=True)
    (tmp_path / "model" / "sub" / "w.bin").write_bytes(b"\x00\x01")
    before = fingerprint_paths([tmp_path / "model"])
    (tmp_path / "model" / "sub" / "w.bin").write_bytes(b"\x00\x02")
    assert fingerprint_paths([tmp_path / "model"]) != before


def test_build_hands_the_stage_its_context(tmp_path):
    seen = {}

    def record(cfg, inputs, ctx):
        seen["ctx"] = ctx
        return _write(cfg, inputs, ctx)

    path, _ = build(tmp_path, "toy", "k6", Toy(), {}, record)
    ctx = seen["ctx"]
    assert (ctx.stage, ctx.key, ctx.strategy, ctx.rank, ctx.world_size, ctx.is_main) == ("toy", "k6", "single", 0, 1, True)
    assert ctx.out_dir == path.parent / ".k6.partial" and not ctx.out_dir.exists()  # renamed into place
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rank = 1
