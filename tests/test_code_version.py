"""Each stage's code version is the import closure of its entry modules: what it imports, no more.

Edits happen in a copy of the repo's code (components/, tokenizer/) under tmp_path, with
`components.artifacts.REPO_ROOT` pointed at it, or through `overrides`: never in the real files.
"""
import json
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

import components.artifacts as artifacts
from components.artifacts import build, code_fingerprint, stage_closure, stage_key
from components.code_version import Closure, git_state, library_versions
from components.extend.config import ExtendConfig
from components.reward.config import RewardConfig
from components.rl.config import RLConfig
from components.stages import STAGES
from flows.config import PipelineConfig
from flows.plan import make_plan

REPO = artifacts.REPO_ROOT


@pytest.fixture
def repo(tmp_path, monkeypatch) -> Path:
    """A copy of the stages' code; keys are computed from it."""
    root = tmp_path / "repo"
    for top in ("components", "tokenizer"):
        shutil.copytree(REPO / top, root / top, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(artifacts, "REPO_ROOT", root)
    return root


def every_key() -> dict[str, str]:
    """The keys of all nine stages (extend on, so it is planned too) for the default configs."""
    return {step.stage: step.key for step in make_plan(PipelineConfig(extend=ExtendConfig(enabled=True), reward=RewardConfig(enabled=True),
                                                                   rl=RLConfig(enabled=True)))}


def append(path: Path, text: str) -> None:
    with open(path, "a") as handle:
        handle.write(text)


def test_editing_the_sft_readers_rebuilds_sft_not_pretrain(repo):
    before = every_key()
    assert set(before) == set(STAGES)
    append(repo / "components/chat/formats.py", "\n\ndef added_reader():\n    return 1\n")
    after = every_key()
    assert [s for s in ("data", "tokenizer", "pretrain", "extend") if after[s] != before[s]] == []
    assert after["sft"] != before["sft"] and after["align"] != before["align"] and after["eval"] != before["eval"]


@pytest.mark.parametrize("imported", ["components/chat/template.py", "components/model/config.py"])
def test_editing_a_module_the_tokenizer_imports_rebuilds_the_tokenizer(repo, imported):
    assert imported in stage_closure("tokenizer").files
    before = every_key()
    append(repo / imported, "\nADDED = 1\n")
    after = every_key()
    assert after["tokenizer"] != before["tokenizer"] and after["data"] == before["data"]


def test_editing_the_shared_config_code_changes_every_key(repo):
    before = every_key()
    append(repo / "components/config.py", "\nADDED = 1\n")
    after = every_key()
    assert [s for s in STAGES if after[s] == before[s]] == []


def test_comments_docstrings_and_layout_change_no_key_but_code_does(repo):
    before = every_key()
    loop = repo / "components/train/loop.py"
    text = loop.read_text()
    first = text.index('"""', text.index("def train("))  # train()'s docstring
    loop.write_text("# a new comment\n\n" + text[:first] + '"""Reworded. ' + text[first + 3:] + "\n# trailing\n")
    assert every_key() == before
    append(loop, "\nADDED = 1\n")
    after = every_key()
    assert after["pretrain"] != before["pretrain"] and after["tokenizer"] == before["tokenizer"]


def test_pretrain_closure_has_the_loop_and_shared_code_not_the_sft_readers():
    files = stage_closure("components.pretrain").files
    assert "components/chat/formats.py" not in files and "components/chat/batches.py" not in files
    assert {"components/train/loop.py", "components/model/build.py", "components/pretrain/config.py",
            "components/config.py", "components/artifacts.py", "components/code_version.py",
            "components/__init__.py", "components/train/__init__.py"} <= set(files)
    assert "components/chat/formats.py" in stage_closure("components.sft").files


def test_extend_shares_next_token_training_with_pretrain_without_importing_it():
    files = stage_closure("components.extend").files
    assert "components/train/next_token.py" in files
    assert "components/train/next_token.py" in stage_closure("components.pretrain").files
    assert not [f for f in files if f.startswith("components/pretrain/")]


def test_overriding_a_file_outside_the_closure_keeps_the_fingerprint():
    pretrain = code_fingerprint(stage_closure("components.pretrain"))
    readers = {"components/chat/formats.py": "CHANGED = 1\n"}
    assert code_fingerprint(stage_closure("components.pretrain", readers)) == pretrain
    assert code_fingerprint(stage_closure("components.sft", readers)) != code_fingerprint(stage_closure("components.sft"))


def test_a_closure_never_holds_tests_or_files_outside_the_repo(repo):
    (repo / "tests").mkdir()
    (repo / "tests" / "__init__.py").write_text("")
    (repo / "tests" / "helpers.py").write_text("X = 1\n")
    (repo.parent / "outside.py").write_text("Y = 1\n")  # importable only with the parent on sys.path
    run = repo / "components/pretrain/run.py"
    append(run, "\n\ndef lazily():\n    import outside\n")
    closure = stage_closure("components.pretrain")
    assert not [f for f in closure.files if not (repo / f).is_file()]
    assert "outside" in closure.libraries and "outside" not in library_versions(closure.libraries)
    append(run, "    from tests.helpers import X\n")
    line = len(run.read_text().splitlines())
    with pytest.raises(ImportError, match=rf"components/pretrain/run.py:{line}: imports 'tests.helpers', test code"):
        stage_closure("components.pretrain")
    for stage in STAGES.values():  # and the real repo's
        files = Closure((f"{stage.module}.run", f"{stage.module}.config"), REPO).files
        assert files and all((REPO / f).resolve().is_relative_to(REPO) and not f.startswith("tests/") for f in files)


def test_walk_follows_relative_lazy_and_dynamic_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "pkg/__init__.py": "",
        "pkg/run.py": "import json\nimport numpy as np\nfrom . import helper\nfrom .sub import thing\n"
                      "def later():\n    from .sub.deep import g\n    import importlib\n"
                      "    return importlib.import_module('pkg.dynamic')\n",
        "pkg/helper.py": "from __future__ import annotations\nfrom pkg.sub.deep import *\n",
        "pkg/sub/__init__.py": "def thing():\n    pass\n",
        "pkg/sub/deep.py": "import torch.nn.functional as F\n",
        "pkg/dynamic.py": "",
        "pkg/unused.py": "import transformers\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    closure = Closure(("pkg.run",), tmp_path)
    assert sorted(closure.files) == sorted(set(files) - {"pkg/unused.py"})
    assert closure.libraries == {"numpy", "torch"}
    with pytest.raises(ModuleNotFoundError, match="pkg.missing"):
        Closure(("pkg.missing",), tmp_path)


def test_library_versions_are_part_of_the_fingerprint():
    closure = stage_closure("tokenizer")
    assert {"sentencepiece", "transformers", "torch"} <= closure.libraries
    versions = library_versions(closure.libraries | {"yaml", "surely_not_installed_xyz"})
    assert versions["sentencepiece"] == metadata.version("sentencepiece") and versions["PyYAML"] == metadata.version("PyYAML")
    assert "surely_not_installed_xyz" not in versions
    fingerprint = code_fingerprint(closure)
    closure.libraries.add("yaml")  # one more library, same files: another fingerprint
    assert code_fingerprint(closure) != fingerprint


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def test_git_state_is_the_commit_and_whether_the_given_files_differ(tmp_path, monkeypatch):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # no checkout: recorded as unknown
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("A = 1\n")
    (tmp_path / "b.py").write_text("B = 1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path, ["a.py"]) == {"commit": head, "dirty": False}
    (tmp_path / "b.py").write_text("B = 2\n")
    assert git_state(tmp_path, ["a.py"])["dirty"] is False and git_state(tmp_path)["dirty"] is True
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no git at all: unknown, never a failure
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


def test_manifest_records_the_commit_and_the_code_of_its_key(tmp_path):
    key = stage_key("pretrain", PipelineConfig().pretrain, {"tokenizer": "t"}, "components.pretrain")
    path, built = build(tmp_path, "pretrain", key, PipelineConfig().pretrain, {}, lambda cfg, inputs, out: {})
    manifest = json.loads((path / "manifest.json").read_text())
    code = manifest["code"]
    assert code["commit"] == git(REPO, "rev-parse", "HEAD") and isinstance(code["dirty"], bool)
    assert code["files"] == sorted(stage_closure("components.pretrain").files)
    assert manifest["versions"]["torch"] == metadata.version("torch") and "peft" in manifest["versions"]


def test_a_tracking_library_is_recorded_but_in_no_key(monkeypatch):
    from components import artifacts

    closure = artifacts.stage_closure("components.pretrain")
    assert "wandb" in closure.libraries  # imported (lazily) by the loop's tracker
    before = artifacts.code_fingerprint(closure)
    real = artifacts.library_versions
    monkeypatch.setattr(artifacts, "library_versions",
                        lambda names: {**real(names), **({"wandb": "99.0"} if "wandb" in names else {})})
    assert artifacts.code_fingerprint(closure) == before  # a wandb upgrade rebuilds nothing
    monkeypatch.setattr(artifacts, "library_versions",
                        lambda names: {**real(names), **({"torch": "99.0"} if "torch" in names else {})})
    assert artifacts.code_fingerprint(closure) != before  # torch's does
