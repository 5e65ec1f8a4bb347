"""The stage contract on disk: cache keys and atomic artifact directories.

This is the one place that computes cache keys. A key is the sha256 of the stage
name, the output-relevant part of its config, its input artifacts' keys and a
fingerprint of the stage's code (its import closure and libraries: code_version.py), plus the content of the input files its config names
(fields declared with `input_files()`, or a config's own `source_files()`). An artifact is `<root>/<stage>/<key>/` and counts
only once its manifest.json exists: stages write into a temporary sibling that is
renamed into place after the manifest is written. It is trusted only while the files its
manifest lists are intact (damage()); a damaged one is moved aside and rebuilt. One builder
per key holds a lock that names its owner (key_lock()).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from components.code_version import Closure, git_state, library_versions
from components.config import READS_FILES, as_dict, expand_paths, output_relevant, resolved_input
from components.context import StageContext

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = "manifest.json"
KEY_LENGTH = 16
_VERSIONED_PACKAGES = ("torch", "transformers", "accelerate", "datatrove", "sentencepiece", "tokenizers")

# In every key besides the stage's own closure: components/config.py decides which config goes into
# the key (output_relevant), artifacts.py what an artifact is (its manifest, which files are trusted):
# an artifact built under other rules is not this one. Its closure brings code_version.py too.
SHARED_CODE = ("components.config", "components.artifacts")
# Libraries no output depends on, so upgrading one rebuilds nothing (the manifest still records their
# versions): wandb only shows progress (components/train/tracking.py); ray only decides where the data
# stage's tasks run (tests/test_scale_out.py: the same output as the local executor).
KEYLESS_LIBRARIES = frozenset({"wandb", "ray"})
_key_code: dict[str, Closure] = {}  # key -> the code hashed into it, for the manifest of the build of that key
_key_files: dict[str, dict[str, str]] = {}  # key -> its input files' fingerprints, for the manifest too


def stage_closure(module: str, overrides: dict[str, str] | None = None) -> Closure:
    """The repo files and libraries that compute a stage: the import closure of `<module>.run` and
    `<module>.config` plus SHARED_CODE. `overrides` {repo-relative path: text} stands in for files."""
    if not isinstance(module, str):  # the hand-kept path tuples this replaced
        raise TypeError(f"the stage's code is its package's name (e.g. 'components.sft'), not {module!r}")
    return Closure((f"{module}.run", f"{module}.config", *SHARED_CODE), REPO_ROOT, overrides)


def code_fingerprint(closure: Closure) -> str:
    """sha256 over the stage's closure (each file's bytecode without docstrings or line numbers:
    comments and layout do not count), the Python version (the stdlib is a library too: the embedded corpus is
    its documentation) and the installed versions of the third-party libraries the closure imports."""
    payload = {"files": closure.digest(), "python": platform.python_version(),
               "libraries": library_versions(closure.libraries - KEYLESS_LIBRARIES)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


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
            found[key] = fingerprint_paths(list(resolved_input(cfg, f.name, key)))  # globbed once per config
        elif dataclasses.is_dataclass(value):
            found.update(input_file_fingerprints(value, key))
    return found


def stage_key(stage: str, cfg: Any, input_keys: dict[str, str], module: str) -> str:
    """`module`: the stage's package (`components.sft`), whose run and config modules' closure is its code."""
    closure = stage_closure(module)
    payload = {
        "stage": stage,
        "config": output_relevant(cfg),
        "inputs": dict(sorted(input_keys.items())),
        "code": code_fingerprint(closure),
    }
    files = key_input_files(stage, cfg)
    if files:  # only then: stages without input files keep their keys
        payload["files"] = files
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    key = hashlib.sha256(blob).hexdigest()[:KEY_LENGTH]
    _key_code[key] = closure
    _key_files[key] = files
    return key


def key_input_files(stage: str, cfg: Any) -> dict[str, str]:
    """{dotted key: fingerprint} of the input files a stage's config names (in its key, and its manifest)."""
    files = input_file_fingerprints(cfg, stage)  # fields declared with input_files()
    if callable(getattr(cfg, "source_files", None)):  # a config that resolves its own file list (data)
        files[f"{stage}.sources"] = files_fingerprint(cfg.source_files())
    return files


def key_closure(key: str, module: str) -> Closure:
    """The code hashed into `key` when this process computed it; else the stage's closure as it is now."""
    return _key_code.get(key) or stage_closure(module)


def artifact_dir(root: Path, stage: str, key: str) -> Path:
    return Path(root) / stage / key


HASH_LIMIT = 1 << 20  # files up to this size get a sha256 in the manifest; larger ones (weights) count by size
HASH_BUDGET = 32 << 20  # bytes hashed per artifact at most (smallest files first): a cached rerun stays ~seconds
RESUME_STATE = ("checkpoints", "log.jsonl", "wandb")  # kept when a build restarts: training resumes, history continues
UNLISTED = ("checkpoints", "wandb")  # not in "files": checkpoints leave after the rename; wandb's service writes late


def file_records(directory: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256" where cheap}} for the regular files an artifact ships."""
    directory = Path(directory)
    files = [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()]
    names = sorted(str(p.relative_to(directory)) for p in files
                   if p.relative_to(directory).parts[0] not in UNLISTED and p.name != MANIFEST)
    records = {name: {"size": (directory / name).stat().st_size} for name in names}
    budget = HASH_BUDGET
    for name, record in sorted(records.items(), key=lambda item: item[1]["size"]):
        if record["size"] > min(HASH_LIMIT, budget):
            break
        record["sha256"] = file_digest(directory / name)
        budget -= record["size"]
    return records


def damage(path: Path) -> str | None:
    """Why the artifact at `path` cannot be trusted (naming the file), or None when it can: its
    manifest parses and every file it lists is there with its recorded size (and sha256)."""
    manifest_file = Path(path) / MANIFEST
    if not manifest_file.is_file():
        return f"{manifest_file}: missing"
    try:
        files = json.loads(manifest_file.read_text()).get("files", {})
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        return f"{manifest_file}: not a valid manifest ({err})"
    if isinstance(files, list):  # manifests written before sizes were recorded: names only
        files = {name: {} for name in files}
    for name, record in files.items():
        file = Path(path) / name
        if not file.is_file():
            return f"{file}: listed in the manifest, missing"
        size = file.stat().st_size
        if "size" in record and size != record["size"]:
            return f"{file}: {size} bytes, the manifest says {record['size']}"
        if "sha256" in record and file_digest(file) != record["sha256"]:
            return f"{file}: content differs from the manifest's sha256"
    return None


def is_complete(path: Path) -> bool:
    """The artifact exists and is intact (see damage())."""
    return damage(path) is None


def read_manifest(path: Path) -> dict:
    file = Path(path) / MANIFEST
    try:
        return json.loads(file.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no manifest (the artifact is incomplete or was deleted)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: damaged manifest ({err}); rerun the pipeline to rebuild {path}") from None


def _owner_record() -> bytes:
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since,
                       "command": " ".join(sys.argv)[:300]}).encode()


def _read_owner(fd: int) -> dict | None:
    try:
        owner = json.loads(os.pread(fd, 4096, 0) or b"null")
    except ValueError:  # being written by its owner
        return None
    return owner if isinstance(owner, dict) else None


def describe_owner(owner: dict | None, holding: bool = True) -> str:
    if not owner:
        return "an unknown owner"
    where = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"
    if holding and owner.get("host") == socket.gethostname() and not _pid_alive(owner.get("pid")):
        where += " (no such process here: another pid namespace? delete the lock file if no run is active)"
    return f"{where} ({owner.get('command', '')})"


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()
LOCK_POLL_SECONDS = 0.2
LOCK_REMIND_SECONDS = 60.0


@contextlib.contextmanager
def key_lock(lock_path: Path, what: str = ""):
    """One builder per key, across processes (parallel Hydra sweeps share the cache) and threads.

    A POSIX record lock (lockf), not flock: a forked child (a datatrove worker) does not inherit
    it, and the kernel drops it when its owner dies, so a killed run never blocks the next. The
    file names the owner (pid, host, start) so a waiting run says what it waits for.
    """
    lock_path = Path(lock_path)
    with _thread_locks_guard:
        in_process = _thread_locks.setdefault(str(lock_path.resolve()), threading.Lock())
    with in_process:  # lockf does not exclude threads of one process, and closing any fd of the file drops it
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _acquire(fd, lock_path, what)
            os.ftruncate(fd, 0)
            os.pwrite(fd, _owner_record(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)  # no owner: a later run sees a clean release
                fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _acquire(fd: int, lock_path: Path, what: str) -> None:
    """Take the lock, saying at once (and every LOCK_REMIND_SECONDS) whom we wait for."""
    waiting_since = noted = None
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        now = time.monotonic()
        waiting_since = waiting_since or now
        if noted is None or now - noted >= LOCK_REMIND_SECONDS:
            log.warning("%swaiting for %s, held by %s (waited %.0f s)", f"{what}: " if what else "", lock_path,
                        describe_owner(_read_owner(fd)), now - waiting_since)
            noted = now
        time.sleep(LOCK_POLL_SECONDS)
    previous = _read_owner(fd)
    if previous:  # its owner ended without releasing it: killed (SIGKILL, OOM) or crashed hard
        log.warning("%s: took over the lock of %s, which ended without releasing it", lock_path,
                    describe_owner(previous, holding=False))


def _versions(key: str) -> dict[str, str]:
    """Python, the engines the pipeline runs on (_VERSIONED_PACKAGES, also where a stage reaches them
    only through another library: tokenizers under transformers) and the libraries in the key's code."""
    found = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    closure = _key_code.get(key)
    return {**found, **(library_versions(closure.libraries) if closure else {})}


def code_record(key: str) -> dict:
    """For the manifest: the git commit, whether the key's code (its closure; the whole checkout
    for a key not made in this process) differs from it, and its files with their code digests; None
    where git is missing."""
    closure = _key_code.get(key)
    files = sorted(closure.files) if closure else None
    digests = dict(sorted(closure.files.items())) if closure else None  # per file: `make plan` names the edited ones
    return {**git_state(REPO_ROOT, files), "files": files, "digests": digests}


def _set_aside(path: Path, kind: str) -> Path:
    """Move `path` to a hidden sibling `.<name>.<kind>-<UTC time>`: out of the way, kept as evidence."""
    base = f".{path.name.lstrip('.').removesuffix('.partial')}.{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    aside, n = path.parent / base, 1
    while aside.exists():  # two in one second
        aside, n = path.parent / f"{base}-{n}", n + 1
    os.rename(path, aside)
    return aside


def keep_evidence(partial: Path) -> Path | None:
    """Move a partial build's files, except its resume state (checkpoints, log.jsonl, wandb runs), to a
    `.<key>.failed-<time>` sibling, where nothing moves them again (evidence: quarantine.jsonl, rejected/,
    report, logs; and a half-written model must not ship). Returns that folder; None: nothing to keep."""
    if not partial.exists() or all(child.name in RESUME_STATE for child in partial.iterdir()):
        return None
    resume = [child.name for child in partial.iterdir() if child.name in RESUME_STATE]
    aside = _set_aside(partial, "failed")
    if resume:
        partial.mkdir()
    for name in resume:
        os.rename(aside / name, partial / name)
    return aside


def _restart(partial: Path) -> None:
    """Prepare a partial build left by a killed run (a failed one set its evidence aside already): training
    resumes with its history; everything else is kept aside (keep_evidence)."""
    aside = keep_evidence(partial)
    if aside is None:
        return
    kept = sorted(p.name for p in partial.iterdir()) if partial.exists() else []
    log.warning("%s: a previous build did not finish; %s; its other files are kept in %s", partial,
                f"resuming with {', '.join(kept)}" if kept else "starting again", aside)


def _failure_note(stage: str, key: str, partial: Path) -> str:
    """Where a failed build's files are: its evidence set aside at once (a path the next run leaves alone),
    its resume state in the partial."""
    try:
        aside = keep_evidence(partial)
    except OSError as err:  # keep the stage's own error; say why the files stayed
        return f"stage {stage} ({key}) failed; its files are kept in {partial} (not set aside: {err})"
    if aside is None:
        files = partial.exists() and any(partial.iterdir())
        return f"stage {stage} ({key}) failed; " + (f"its files are kept in {partial}" if files else "it wrote no file")
    names = ", ".join(sorted(p.name + ("/" if p.is_dir() else "") for p in aside.iterdir()))
    resume = f"; {partial} keeps what a rerun resumes from" if partial.exists() else ""
    return f"stage {stage} ({key}) failed; its files are kept in {aside} ({names}){resume}"


def build(
    root: Path,
    stage: str,
    key: str,
    cfg: Any,
    inputs: dict[str, Path],
    run: Callable[[Any, dict[str, Path], StageContext], dict],
    run_group: str = "",
) -> tuple[Path, bool]:
    """Return (artifact dir, built). Runs `run(cfg, inputs, ctx)` only when no intact artifact exists
    (ctx.out_dir: the temporary sibling renamed into place once the manifest is written); a damaged one
    (see damage()) is moved aside as `.<key>.damaged-<time>` and rebuilt."""
    final = artifact_dir(root, stage, key)
    if is_complete(final):
        return final, False
    with key_lock(final.parent / f".{key}.lock", f"{stage} {key}"):
        reason = damage(final)
        if reason is None:  # another process built it while we waited
            return final, False
        if final.exists():
            log.warning("%s: artifact %s is damaged (%s): moved to %s, rebuilding", stage, final, reason,
                        _set_aside(final, "damaged"))
        tmp = final.parent / f".{key}.partial"  # fixed name: a rerun finds the training checkpoints
        _restart(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            started = time.time()
            ctx = StageContext(stage=stage, key=key, out_dir=tmp, run_group=run_group,
                               upstream={name: Path(p).name for name, p in inputs.items()})
            metrics = run(cfg, dict(inputs), ctx)
            manifest = {
                "stage": stage,
                "key": key,
                "config": as_dict(cfg),
                "inputs": {name: {"key": Path(p).name, "path": str(p)} for name, p in inputs.items()},
                "files": file_records(tmp),
                "metrics": metrics or {},
                "timings": {"started": started, "seconds": round(time.time() - started, 3)},
                "versions": _versions(key),
                "code": code_record(key),
                "input_files": _key_files.get(key),  # fingerprints of the files its config names (None: unknown here)
            }
            _write_atomically(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str))
            os.rename(tmp, final)
        except BaseException as err:  # evidence set aside now; the checkpoints a rerun resumes from stay
            err.add_note(_failure_note(stage, key, tmp))
            raise
        shutil.rmtree(final / "checkpoints", ignore_errors=True)  # only now: a kill before the rename resumes
    log.info("%s: built %s", stage, final)
    return final, True


FOLLOW_POLL_SECONDS = 2.0
FOLLOW_REMIND_SECONDS = 300.0


def follow(
    root: Path,
    stage: str,
    key: str,
    cfg: Any,
    inputs: dict[str, Path],
    join: Callable[[Any, dict[str, Path], StageContext], dict] | None,
    timeout_s: float,
) -> tuple[Path, bool]:
    """build() as a machine of rank > 0 does it (multi-node): machine 0 builds, holding the key's
    lock, and writes the manifest. Taking that lock here would deadlock the rendezvous of a launched
    stage, so this machine only runs `join` (its share of the launch, into machine 0's temporary
    dir) and then waits, at most timeout_s, for machine 0's manifest; `join` None (a stage that is
    not launched: data, tokenizer, eval) only waits. Returns (artifact dir, False)."""
    final = artifact_dir(root, stage, key)
    if join is not None and not is_complete(final):
        join(cfg, dict(inputs), StageContext(stage=stage, key=key, out_dir=final.parent / f".{key}.partial"))
    started = time.monotonic()
    reminded = started - FOLLOW_REMIND_SECONDS  # say at once whom we wait for
    while not is_complete(final):
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise TimeoutError(f"{stage} {key}: machine rank 0 wrote no manifest in {final} within "
                               f"launcher.follow_timeout_s={timeout_s:g} s; did its run fail or stop? (see its log)")
        if time.monotonic() - reminded >= FOLLOW_REMIND_SECONDS:
            log.info("%s: waiting for machine rank 0 to build %s (waited %.0f of %g s)", stage, final, waited,
                     timeout_s)
            reminded = time.monotonic()
        time.sleep(FOLLOW_POLL_SECONDS)
    return final, False


def _write_atomically(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    with open(scratch, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(scratch, path)
