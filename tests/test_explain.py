"""`make plan` says why each stage builds, against real artifacts of the smoke experiment.

The data, tokenizer and pretrain stages are built once (real runners, through the artifact
contract); each test then plans another config and reads the explanation: a config value
(old -> new), an input that rebuilds, a code file edited in a copy of the code, a library or
Python version, a damaged artifact, a stage never built.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import components.artifacts as artifacts
from components.artifacts import build
from components.stages import STAGES
from flows.cache import compose_config
from flows.plan import describe, make_plan

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def plan_for(root: Path, *overrides: str):
    return make_plan(compose_config(["experiment=smoke", f"run.artifacts_dir={root}", "run.until=pretrain",
                                     "data.workers=1", *overrides]))  # data.workers: log only, not in the key


def build_plan(root: Path, plan) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for step in plan:
        inputs = {role: paths[source] for role, source in step.sources.items()}
        paths[step.stage], _ = build(root, step.stage, step.key, step.cfg, inputs, STAGES[step.stage].runner())
    return paths


def rows(text: str) -> dict[str, str]:
    """{stage: status} from the plan's table."""
    table = text.split("\n\n")[0].splitlines()[1:]
    return {line.split()[0]: "to build" if "to build" in line else "cached" for line in table}


def reasons(text: str, stage: str) -> list[str]:
    """The indented lines under `stage`'s entry in the "why" part."""
    lines = text.split("why each stage builds:\n", 1)[1].splitlines() if "why each stage builds:" in text else []
    found, inside = [], False
    for line in lines:
        if not line.startswith("  "):
            inside = line.startswith(f"{stage} ")
            if inside:
                found.append(line)
        elif inside:
            found.append(line.strip())
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("artifacts")
    return root, build_plan(root, plan_for(root))


def test_a_cached_plan_has_nothing_to_explain(built):
    root, _ = built
    text = describe(plan_for(root), root)
    assert rows(text) == {"data": "cached", "tokenizer": "cached", "pretrain": "cached"}
    assert "why each stage builds" not in text


def test_a_vocab_change_names_the_key_and_the_input_that_rebuilds(built):
    root, paths = built
    plan = plan_for(root, "tokenizer.vocab_size=600", "tokenizer.num_workers=1")  # num_workers: log only
    text = describe(plan, root)
    assert rows(text) == {"data": "cached", "tokenizer": "to build", "pretrain": "to build"}
    tokenizer = reasons(text, "tokenizer")
    assert tokenizer[0].startswith(f"tokenizer {plan[1].key}: nearest artifact {paths['tokenizer'].name}")
    assert tokenizer[1:] == ["tokenizer.vocab_size: 512 -> 600"]  # nothing else: not the log-only num_workers
    old, new = paths["tokenizer"].name, plan[1].key
    assert reasons(text, "pretrain")[1:] == [f"input tokenizer: {old[:8]}.. -> {new[:8]}.. (rebuilds too)"]
    assert reasons(text, "data") == []


def test_many_changes_are_capped(built):
    root, _ = built
    text = describe(plan_for(root, "tokenizer.vocab_size=600", "tokenizer.seed=1", "tokenizer.split_digits=false",
                             "tokenizer.cover_ascii=false", "tokenizer.byte_fallback=false", "tokenizer.type=unigram",
                             "tokenizer.character_coverage=0.99", "tokenizer.max_training_bytes=1000"), root)
    tokenizer = reasons(text, "tokenizer")[1:]
    assert len(tokenizer) == 7 and tokenizer[-1] == "+2 more config keys"
    assert tokenizer[0] == "tokenizer.byte_fallback: true -> false"  # in key order


def test_a_stage_never_built_says_so(built):
    root, _ = built
    text = describe(make_plan(compose_config(["experiment=smoke", f"run.artifacts_dir={root}", "run.until=sft"])), root)
    assert rows(text)["sft"] == "to build" and rows(text)["pretrain"] == "cached"
    assert reasons(text, "sft")[0].endswith(": no artifact of this stage yet")


def test_an_edited_code_file_is_named(built, tmp_path, monkeypatch):
    """The edit happens in a copy of the code (REPO_ROOT pointed at it), never in the real files."""
    root, _ = built
    copy = tmp_path / "repo"
    for top in ("components", "tokenizer"):
        shutil.copytree(REPO / top, copy / top, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(artifacts, "REPO_ROOT", copy)
    assert rows(describe(plan_for(root), root))["tokenizer"] == "cached"  # the copy alone changes no key
    with open(copy / "tokenizer/train.py", "a") as handle:
        handle.write("\n\ndef added_helper():\n    return 1\n")
    text = describe(plan_for(root), root)
    assert rows(text) == {"data": "cached", "tokenizer": "to build", "pretrain": "to build"}
    assert reasons(text, "tokenizer")[1:] == ["code changed: tokenizer/train.py"]
    assert reasons(text, "pretrain")[1].startswith("input tokenizer: ")


def copied_root(built, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the built root (data and tokenizer): tests that alter artifacts alter the copy."""
    root, paths = built
    copy = tmp_path / "artifacts"
    for stage in ("data", "tokenizer"):
        shutil.copytree(paths[stage], copy / stage / paths[stage].name)
    return copy, copy / "tokenizer" / paths["tokenizer"].name


def test_a_python_or_library_version_change_is_named(built, tmp_path):
    """The tokenizer as if built under another Python and sentencepiece: its manifest says so, and its
    key (here another name) is not the planned one."""
    root, tokenizer = copied_root(built, tmp_path)
    manifest = json.loads((tokenizer / "manifest.json").read_text())
    manifest["versions"].update(python="3.10.0", sentencepiece="0.0.1")
    (tokenizer / "manifest.json").write_text(json.dumps(manifest))
    tokenizer.rename(tokenizer.with_name("0000000000000000"))
    text = describe(plan_for(root, "run.until=tokenizer"), root)
    lines = reasons(text, "tokenizer")
    assert "nearest artifact 0000000000000000 (built " in lines[0]
    assert sorted(lines[1:]) == [f"python: 3.10.0 -> {sys.version.split()[0]}",
                                 f"sentencepiece: 0.0.1 -> {manifest_version('sentencepiece')}"]


def manifest_version(name: str) -> str:
    from importlib import metadata

    return metadata.version(name)


def test_a_damaged_artifact_of_the_planned_key_is_named(built, tmp_path):
    root, tokenizer = copied_root(built, tmp_path)
    vocab = tokenizer / "spm.vocab"
    data = bytearray(vocab.read_bytes())
    data[10] ^= 0xFF
    vocab.write_bytes(bytes(data))
    text = describe(plan_for(root, "run.until=tokenizer"), root)
    assert rows(text)["tokenizer"] == "to build"
    tokenizer = reasons(text, "tokenizer")
    assert tokenizer[0].endswith("its artifact is damaged (the build moves it aside as evidence)")
    assert len(tokenizer) == 2 and "spm.vocab: content differs from the manifest's sha256" in tokenizer[1]


def test_the_dry_run_cli_prints_the_reasons(built):
    root, _ = built
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "flows.pipeline", "experiment=smoke", f"run.artifacts_dir={root}",
                           "run.until=pretrain", "tokenizer.vocab_size=600", "run.dry_run=true"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    assert "tokenizer.vocab_size: 512 -> 600" in out and "(rebuilds too)" in out


def test_the_manifest_records_what_the_plan_compares(built):
    _, paths = built
    manifest = json.loads((paths["tokenizer"] / "manifest.json").read_text())
    assert manifest["code"]["digests"]["tokenizer/train.py"] and set(manifest["code"]["digests"]) == set(manifest["code"]["files"])
    assert "data.sources" in json.loads((paths["data"] / "manifest.json").read_text())["input_files"]


def test_an_edited_input_file_is_named(tmp_path):
    """sft.sources: its content is in the key; the plan compares the fingerprints a manifest records."""
    from components.artifacts import key_input_files
    from flows.explain import input_file_changes

    source = tmp_path / "chats.jsonl"
    source.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')

    def sft_step():
        plan = make_plan(compose_config(["experiment=smoke", f"sft.sources=[{source}]", "run.until=sft"]))
        return next(step for step in plan if step.stage == "sft")

    recorded = {"input_files": key_input_files("sft", sft_step().cfg)}
    assert input_file_changes(sft_step(), recorded) == []
    source.write_text(source.read_text().replace("hello", "hello there"))
    assert input_file_changes(sft_step(), recorded) == ["input files changed: sft.sources"]
    assert input_file_changes(sft_step(), {}) == []  # a manifest from before they were recorded names none
