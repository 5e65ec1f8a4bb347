"""`python -m flows.cache ls | verify | gc` on real artifacts of the smoke experiment.

Data and tokenizer are built once with the real runners; a second tokenizer (vocab 600) is the
artifact no smoke config reaches. Leftovers are made by the real build contract: a damaged
artifact is set aside by the next build, a partial one left by an interrupted build becomes
`.failed-*` evidence. Each test that changes the cache works on a copy.
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from components.artifacts import build
from components.stages import STAGES
from flows.cache import compose_config, main
from flows.plan import make_plan

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def smoke(root: Path, *overrides: str) -> list[str]:
    return ["experiment=smoke", f"run.artifacts_dir={root}", "run.until=tokenizer", "data.workers=1", *overrides]


def build_plan(root: Path, *overrides: str) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    for step in make_plan(compose_config(smoke(root, *overrides))):
        inputs = {role: paths[source] for role, source in step.sources.items()}
        paths[step.stage], _ = build(root, step.stage, step.key, step.cfg, inputs, STAGES[step.stage].runner())
    return paths


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, Path], Path]:
    """(root, the smoke artifacts, the vocab-600 tokenizer no smoke config reaches)."""
    root = tmp_path_factory.mktemp("artifacts")
    paths = build_plan(root)
    return root, paths, build_plan(root, "tokenizer.vocab_size=600")["tokenizer"]


@pytest.fixture
def cache(built, tmp_path) -> tuple[Path, dict[str, Path], Path]:
    """A copy of the built cache, the same keys under another root."""
    root, paths, other = built
    copy = tmp_path / "artifacts"
    shutil.copytree(root, copy)
    return copy, {stage: copy / p.relative_to(root) for stage, p in paths.items()}, copy / other.relative_to(root)


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().out


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_ls_lists_artifacts_with_the_config_they_were_built_from(built, capsys):
    root, paths, other = built
    code, out = cli(capsys, "ls", "--root", root)
    assert code == 0
    lines = {line.split()[1]: line for line in out.splitlines()[1:-1]}
    assert set(lines) == {paths["data"].name, paths["tokenizer"].name, other.name}
    assert "complete" in lines[other.name] and "tokenizer.vocab_size=600" in lines[other.name]  # the default is 768
    assert "tokenizer.vocab_size=512" in lines[paths["tokenizer"].name]
    code, out = cli(capsys, "ls", "--root", root, "--json")
    rows = {row["key"]: row for row in json.loads(out)}
    assert rows[other.name]["config"]["vocab_size"] == 600 and rows[other.name]["size"] > 0
    assert rows[other.name]["inputs"] == {"data": paths["data"].name}


def test_ls_marks_the_leftovers_of_failed_and_damaged_builds(cache, capsys):
    root, paths, other = cache
    flip_a_byte(other / "spm.vocab")
    partial = other.parent / f".{other.name}.partial"  # what an interrupted build leaves
    partial.mkdir()
    (partial / "spm.model").write_text("half written")
    build_plan(root, "tokenizer.vocab_size=600")  # sets the damaged artifact and the partial aside, rebuilds
    code, out = cli(capsys, "ls", "--root", root)
    states = sorted(line.split()[2] for line in out.splitlines()[1:-1] if line.split()[1] == other.name)
    assert states == ["complete", "damaged", "failed"]
    partial.mkdir()  # a later interrupted build of a key
    code, out = cli(capsys, "ls", "--root", root)
    assert "partial" in [line.split()[2] for line in out.splitlines()[1:-1] if line.split()[1] == other.name]


def test_verify_passes_then_names_a_flipped_byte(cache, capsys):
    root, paths, _ = cache
    code, out = cli(capsys, "verify", "--root", root)
    assert code == 0 and "3 intact" in out and "0 damaged" in out
    flip_a_byte(paths["tokenizer"] / "spm.vocab")
    code, out = cli(capsys, "verify", "--root", root)
    assert code == 1
    assert f"damaged: tokenizer/{paths['tokenizer'].name}: {paths['tokenizer'] / 'spm.vocab'}: content differs" in out


def test_verify_catches_a_changed_size(cache, capsys):
    root, paths, _ = cache
    with open(paths["data"] / "manifest.json") as handle:
        name = next(iter(json.load(handle)["files"]))
    with open(paths["data"] / name, "ab") as handle:
        handle.write(b"\0")
    code, out = cli(capsys, "verify", "--root", root)
    assert code == 1 and f"{paths['data'] / name}: " in out and "the manifest says" in out


def test_gc_dry_run_removes_nothing_then_yes_removes_only_the_unreachable(cache, capsys):
    root, paths, other = cache
    code, out = cli(capsys, "gc", "--", *smoke(root))
    assert code == 0
    assert f"would remove complete {other} (" in out and "nothing removed" in out
    assert other.is_dir() and all(p.is_dir() for p in paths.values())
    assert str(paths["tokenizer"]) not in out and str(paths["data"]) not in out
    code, out = cli(capsys, "gc", "--yes", "--", *smoke(root))
    assert code == 0 and f"removed complete {other}" in out
    assert not other.exists() and all(p.is_dir() for p in paths.values())
    assert [p.name for p in other.parent.iterdir() if p.is_dir()] == [paths["tokenizer"].name]  # no `.removing` left


def test_gc_keeps_what_any_config_set_reaches(cache, capsys):
    root, paths, other = cache
    sets = ["--config", " ".join(smoke(root)), "--config", " ".join(smoke(root, "tokenizer.vocab_size=600"))]
    code, out = cli(capsys, "gc", "--yes", *sets)
    assert code == 0 and "removed 0 entries" in out and other.is_dir()


def test_gc_removes_evidence_only_when_asked(cache, capsys):
    root, paths, other = cache
    flip_a_byte(other / "spm.vocab")
    build_plan(root, "tokenizer.vocab_size=600")  # the damaged one is set aside as evidence
    (damaged,) = [p for p in other.parent.iterdir() if ".damaged-" in p.name]
    code, out = cli(capsys, "gc", "--yes", "--config", " ".join(smoke(root, "tokenizer.vocab_size=600")))
    assert damaged.is_dir() and f"kept damaged evidence {damaged}" in out
    code, out = cli(capsys, "gc", "--yes", "--evidence", "--config", " ".join(smoke(root, "tokenizer.vocab_size=600")))
    assert not damaged.exists() and f"removed damaged {damaged}" in out and other.is_dir()


HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin
""")


def test_gc_never_removes_an_artifact_whose_lock_is_held(cache, capsys):
    """The lock is held by another process (POSIX record locks do not exclude their own process)."""
    root, paths, other = cache
    (other.parent / f".{other.name}.partial").mkdir()  # as a running build of that key has it
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(other.parent / f".{other.name}.lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, out = cli(capsys, "gc", "--yes", "--", *smoke(root))
        assert other.is_dir() and f"skipped {other}: a build of {other.name} holds its lock" in out
        code, out = cli(capsys, "ls", "--root", root)
        assert sorted(line.split()[2] for line in out.splitlines()[1:-1] if line.split()[1] == other.name) == [
            "building", "complete"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    code, out = cli(capsys, "gc", "--yes", "--", *smoke(root))
    assert not other.exists()


def test_the_command_line_fails_in_one_line_on_a_bad_override(built):
    root, _, _ = built
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "flows.cache", "gc", "--", f"run.artifacts_dir={root}", "tokenizr.vocab_size=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "tokenizr" in done.stderr and "tokenizer" in done.stderr
    done = subprocess.run([sys.executable, "-m", "flows.cache", "ls", "--root", str(root)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "3 entries" in done.stdout
