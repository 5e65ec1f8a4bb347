"""The stage contract on disk: cache keys and atomic artifact directories.

This is the one place that computes cache keys. A key is the sha256 of the stage
name, the output-relevant part of its config, its input artifacts' keys and a
fingerprint of the stage's code, plus the content of the input files its config names
(fields declared with `input_files()`, or a config's own `source_files()`). An artifact is `<root>/<stage>/<key>/` and counts
only once its manifest.json exists: stages write into a temporary sibling that is
renamed into place after the manifest is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from components.config import READS_FILES, as_dict, output_relevant
from components.context import StageContext

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"
KEY_LENGTH = 16
_VERSIONED_PACKAGES = ("torch", "transformers", "accelerate", "datatrove", "sentencepiece", "tokenizers")


def code_fingerprint(code_paths: tuple[str, ...] | list[str]) -> str:
    """sha256 over the Python sources under the given repo-relative paths."""
    digest = hashlib.sha256()
    for rel in sorted(code_paths):
        root = REPO_ROOT / rel
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


_file_digests: dict[tuple, str] = {}  # (path, size, mtime, inode) -> sha256: each file is read once per process


def file_digest(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo not in _file_digests:
        with open(path, "rb") as handle:
            _file_digests[memo] = hashlib.file_digest(handle, "sha256").hexdigest()
    return _file_digests[memo]


def files_fingerprint(paths: list[Path]) -> str:
    """sha256 over each file's path and content: editing, adding or removing an input file changes it."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(f"{path}\0{file_digest(path)}\0".encode())
    return digest.hexdigest()


def expand_paths(patterns: list[str], key: str) -> list[Path]:
    """The files named by paths or globs, in a stable order; a pattern matching nothing fails naming `key`."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matches:
            raise FileNotFoundError(f"{key}: no file matches {pattern!r}")
        files += [Path(m) for m in matches]
    return files


LARGE_FILE = 256 << 20  # in a directory (a model checkpoint), larger files count by size and mtime


def fingerprint_paths(paths: list[Path]) -> str:
    """sha256 over the names and bytes of files (a directory: every file under it; there, weight
    files over LARGE_FILE by size and mtime, so planning a run never reads a multi-GB checkpoint)."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file).encode())
            stat = file.stat()
            large = path.is_dir() and stat.st_size > LARGE_FILE
            digest.update(f"size={stat.st_size} mtime={stat.st_mtime_ns}".encode() if large else file_digest(file).encode())
    return digest.hexdigest()


def input_file_fingerprints(cfg: Any, prefix: str) -> dict[str, str]:
    """{dotted key: fingerprint} for the config's `input_files()` fields (nested dataclasses too)."""
    found = {}
    for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(cfg) else ():
        value, key = getattr(cfg, f.name), f"{prefix}.{f.name}"
        if f.metadata.get(READS_FILES) and value:
            found[key] = fingerprint_paths(expand_paths([value] if isinstance(value, str) else list(value), key))
        elif dataclasses.is_dataclass(value):
            found.update(input_file_fingerprints(value, key))
    return found


def stage_key(stage: str, cfg: Any, input_keys: dict[str, str], code_paths: tuple[str, ...]) -> str:
    payload = {
        "stage": stage,
        "config": output_relevant(cfg),
        "inputs": dict(sorted(input_keys.items())),
        "code": code_fingerprint(code_paths),
    }
    files = input_file_fingerprints(cfg, stage)  # fields declared with input_files()
    if callable(getattr(cfg, "source_files", None)):  # a config that resolves its own file list (data)
        files[f"{stage}.sources"] = files_fingerprint(cfg.source_files())
    if files:  # only then: stages without input files keep their keys
        payload["files"] = files
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:KEY_LENGTH]


def artifact_dir(root: Path, stage: str, key: str) -> Path:
    return Path(root) / stage / key


def is_complete(path: Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def read_manifest(path: Path) -> dict:
    return json.loads((Path(path) / MANIFEST).read_text())


@contextlib.contextmanager
def _key_lock(lock_path: Path):
    """One builder per key, across processes (parallel Hydra sweeps share the cache)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def _keep_only_checkpoints(partial: Path) -> None:
    """Clear a partial build, keeping checkpoints/ so training resumes after a crash or kill."""
    if not partial.exists():
        return
    for child in partial.iterdir():
        if child.name != "checkpoints":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    if not any(partial.iterdir()):
        partial.rmdir()


def build(
    root: Path,
    stage: str,
    key: str,
    cfg: Any,
    inputs: dict[str, Path],
    run: Callable[[Any, dict[str, Path], StageContext], dict],
) -> tuple[Path, bool]:
    """Return (artifact dir, built). Runs `run(cfg, inputs, ctx)` only when no complete artifact exists;
    ctx.out_dir is the temporary sibling renamed into place once the manifest is written."""
    final = artifact_dir(root, stage, key)
    if is_complete(final):
        return final, False
    with _key_lock(final.parent / f".{key}.lock"):
        if is_complete(final):  # another process built it while we waited
            return final, False
        tmp = final.parent / f".{key}.partial"  # fixed name: a rerun finds the training checkpoints
        _keep_only_checkpoints(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            started = time.time()
            metrics = run(cfg, dict(inputs), StageContext(stage=stage, key=key, out_dir=tmp))
            manifest = {
                "stage": stage,
                "key": key,
                "config": as_dict(cfg),
                "inputs": {name: {"key": Path(p).name, "path": str(p)} for name, p in inputs.items()},
                "files": sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()),
                "metrics": metrics or {},
                "timings": {"started": started, "seconds": round(time.time() - started, 3)},
                "versions": _versions(),
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
            if final.exists():  # a directory without a manifest is never trusted
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            _keep_only_checkpoints(tmp)
            raise
    log.info("%s: built %s", stage, final)
    return final, True
