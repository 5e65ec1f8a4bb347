"""`python -m flows.cache ls | verify | gc`: what the artifact cache holds, whether it is intact, and
removing what no config reaches any more.

    ls       every artifact (stage, key, created, size, the config keys it was built with that differ
             from the defaults) and the leftovers beside them: `.partial` (an unfinished build, which
             a rerun resumes; `building` while its lock is held), `.failed-*` and `.damaged-*`
             (evidence set aside by a build)
    verify   every file an artifact's manifest lists, by its size and its recorded sha256; exits 1
             naming the file when one is damaged
    gc       removes the artifacts no given config's plan reaches (default: the default config; one set
             of overrides after `--`, more with `--config 'a=1 b=2'`); a dry run unless `--yes`; evidence
             (failed, damaged, partial builds) only with `--evidence`; an artifact whose key lock is held
             (a build of that key is running) is never touched

The root is `--root`, else the config's `run.artifacts_dir` (default `<repo>/artifacts`).
Pure file work beside Hydra's compose API: no Prefect, no stage runs.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.artifacts import MANIFEST, artifact_dir, damage, describe_owner, read_manifest
from components.stages import STAGES
from flows.explain import config_changes, shown
from flows.plan import artifacts_root, make_plan

CONF = Path(__file__).resolve().parents[1] / "conf"
LEFTOVER = re.compile(r"^\.(?P<key>[^.]+)\.(?P<state>partial|failed|damaged|removing|machine)(-.*)?$")
EVIDENCE = ("partial", "failed", "damaged", "machine")  # machine-<rank>: a joining machine's launch log
MAX_CONFIG_KEYS = 3  # config keys shown per artifact by `ls` (all of them with --json)


@dataclass(frozen=True)
class Entry:
    """One folder under <root>/<stage>/: an artifact (complete or not) or a leftover beside one."""

    stage: str
    key: str
    state: str  # complete | incomplete (no manifest) | partial | failed | damaged | removing (an interrupted gc) | machine
    path: Path

    @property
    def lock(self) -> Path:
        return self.path.parent / f".{self.key}.lock"


def compose_config(overrides: list[str]) -> Any:
    """The pipeline config for these Hydra overrides, validated as `make pipeline` validates it."""
    from hydra import compose, initialize_config_dir

    from flows.config import register, to_pipeline_config
    from flows.pipeline import check_top_level_overrides

    check_top_level_overrides(overrides)  # `foo=1`: the one-line unknown-key error, not Hydra's own
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return to_pipeline_config(compose("config", overrides=list(overrides)))


def entries(root: Path) -> list[Entry]:
    """Every artifact and leftover folder under `root`, by stage then name (lock files are no entries)."""
    found = []
    root = Path(root)
    stage_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []
    for stage_dir in stage_dirs:
        for path in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            if not path.name.startswith("."):
                state = "complete" if (path / MANIFEST).is_file() else "incomplete"
                found.append(Entry(stage_dir.name, path.name, state, path))
            elif match := LEFTOVER.match(path.name):
                found.append(Entry(stage_dir.name, match["key"], match["state"], path))
    return found


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def manifest_of(entry: Entry) -> dict | None:
    if entry.state != "complete":
        return None
    try:
        return read_manifest(entry.path)
    except ValueError:  # a damaged manifest: verify names it
        return None


def created(entry: Entry, manifest: dict | None) -> float:
    started = (manifest or {}).get("timings", {}).get("started")
    return float(started) if started else entry.path.stat().st_mtime


def built_with(entry: Entry, manifest: dict | None, defaults: Any) -> list[str]:
    """`key=value` for the config keys the artifact was built with that differ from the defaults."""
    stage_default = getattr(defaults, entry.stage, None) if defaults is not None else None
    if manifest is None or stage_default is None:
        return []
    return [f"{key}={shown(before)}" for key, before, _ in config_changes(entry.stage, stage_default, manifest.get("config"))]


def describe_config(entry: Entry, manifest: dict | None, defaults: Any) -> str:
    if manifest is None:
        return f"({entry.state}: {entry.path})"
    if getattr(defaults, entry.stage, None) is None:
        return str(entry.path / MANIFEST)  # a stage the default config has no section for
    changed = built_with(entry, manifest, defaults)
    more = f" +{len(changed) - MAX_CONFIG_KEYS} more" if len(changed) > MAX_CONFIG_KEYS else ""
    return (" ".join(changed[:MAX_CONFIG_KEYS]) + more) if changed else "defaults"


def shown_state(entry: Entry) -> str:
    """The entry's state; a partial build whose key lock is held is being built right now."""
    if entry.state != "partial":
        return entry.state
    with unless_building(entry.lock, create=False) as free:
        return "partial" if free else "building"


def ls(root: Path, as_json: bool, defaults: Any) -> int:
    rows = []
    for entry in entries(root):
        manifest = manifest_of(entry)
        rows.append({"stage": entry.stage, "key": entry.key, "state": shown_state(entry), "path": str(entry.path),
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created(entry, manifest))),
                     "size": size_of(entry.path), "config": (manifest or {}).get("config"),
                     "differs_from_defaults": built_with(entry, manifest, defaults),
                     "inputs": {role: i.get("key") for role, i in ((manifest or {}).get("inputs") or {}).items()},
                     "short": describe_config(entry, manifest, defaults)})
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{'stage':<10} {'key':<17} {'state':<10} {'created':<20} {'size':>10}  config (vs defaults)")
    for r in rows:
        print(f"{r['stage']:<10} {r['key']:<17} {r['state']:<10} {r['created']:<20} {human(r['size']):>10}  {r['short']}")
    print(f"{len(rows)} entries under {root}, {human(sum(r['size'] for r in rows))}")
    return 0


def verify(root: Path) -> int:
    """Every listed file by size and, where the manifest records one, sha256; exit 1 if any is damaged."""
    checked, hashed, by_size, damaged = 0, 0, 0, []
    for entry in entries(root):
        if entry.state not in ("complete", "incomplete"):
            continue  # leftovers are evidence, not artifacts: nothing trusts them
        checked += 1
        reason = damage(entry.path)
        if reason is not None:
            damaged.append(f"damaged: {entry.stage}/{entry.key}: {reason}")
            continue
        files = read_manifest(entry.path).get("files", {})
        records = files.values() if isinstance(files, dict) else ()
        hashed += sum("sha256" in r for r in records)
        by_size += sum("sha256" not in r for r in records)
    print("\n".join(damaged + [f"{checked} artifacts under {root}: {checked - len(damaged)} intact ({hashed} files by "
                               f"sha256, {by_size} large files by size only), {len(damaged)} damaged"]))
    return 1 if damaged else 0


@contextlib.contextmanager
def unless_building(lock: Path, create: bool):
    """Yields True holding the key's lock (no build of the key can start meanwhile), False while another
    process holds it (a build is running). The same POSIX record lock as components.artifacts.key_lock."""
    if not lock.exists() and not create:
        yield True
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def holder(lock: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        owner = json.loads(lock.read_text() or "null")
        return describe_owner(owner if isinstance(owner, dict) else None)
    return describe_owner(None)


def remove(entry: Entry) -> None:
    """Out of the artifact's place first (a rename), then deleted: a half-deleted artifact never looks complete."""
    aside = entry.path.parent / f".{entry.key}.removing-{os.getpid()}-{time.time_ns()}"
    os.rename(entry.path, aside)
    shutil.rmtree(aside)


def reachable(config_sets: list[list[str]], root: Path | None) -> tuple[Path, set[tuple[str, str]]]:
    """The artifacts root and every (stage, key) the plans of these config sets reach."""
    keep: set[tuple[str, str]] = set()
    roots = set()
    for overrides in config_sets:
        cfg = compose_config(overrides)
        roots.add(artifacts_root(cfg.run))
        keep |= {(step.stage, step.key) for step in make_plan(cfg)}
    if root is None and len(roots) > 1:
        raise ValueError(f"the config sets name different artifact roots ({sorted(map(str, roots))}): pass --root")
    return (Path(root).resolve() if root else roots.pop()), keep


def unreachable(root: Path, keep: set[tuple[str, str]], evidence: bool) -> tuple[list[Entry], list[str]]:
    """(what gc removes, notes on what it leaves that a user may expect gone)."""
    chosen, notes = [], []
    for entry in entries(root):
        if entry.stage not in STAGES:
            notes.append(f"kept {entry.path}: {entry.stage!r} is not in the stage table")
        elif entry.state == "removing":  # an interrupted gc's own leftover
            chosen.append(entry)
        elif entry.state in EVIDENCE:
            if evidence and (entry.state != "partial" or (entry.stage, entry.key) not in keep):
                chosen.append(entry)
            elif not evidence:
                notes.append(f"kept {entry.state} evidence {entry.path} (pass --evidence to remove it)")
        elif (entry.stage, entry.key) not in keep:
            chosen.append(entry)
    return chosen, notes


def gc(config_sets: list[list[str]], root: Path | None, yes: bool, evidence: bool) -> int:
    root, keep = reachable(config_sets, root)
    chosen, notes = unreachable(root, keep, evidence)
    total, skipped = 0, 0
    for entry in chosen:
        size = size_of(entry.path)
        with unless_building(entry.lock, create=yes) as free:
            if not free:
                skipped += 1
                print(f"skipped {entry.path}: a build of {entry.key} holds its lock ({holder(entry.lock)})")
                continue
            if yes:
                remove(entry)
            print(f"{'removed' if yes else 'would remove'} {entry.state} {entry.path} ({human(size)})")
            total += size
    for note in notes:
        print(note)
    on_disk = sum(artifact_dir(root, stage, key).is_dir() for stage, key in keep)
    verb = "removed" if yes else "would remove"
    print(f"{verb} {len(chosen) - skipped} entries, {total} bytes ({human(total)}) under {root}; kept the {on_disk} "
          f"planned artifacts on disk (the configs plan {len(keep)} keys)"
          + ("" if yes else "; nothing removed: pass --yes to delete"))
    return 0


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", type=Path, help="artifacts root (default: the config's run.artifacts_dir)")
    top = argparse.ArgumentParser(prog="python -m flows.cache", description=__doc__.split("\n\n")[0])
    commands = top.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("ls", parents=[common], help="list artifacts and leftovers")
    listing.add_argument("--json", action="store_true", help="everything, with each artifact's full config")
    commands.add_parser("verify", parents=[common], help="check every file against its manifest")
    collect = commands.add_parser("gc", parents=[common], help="remove artifacts no given config reaches")
    collect.add_argument("--config", action="append", default=[], metavar="'OVERRIDES'",
                         help="one config set, as Hydra overrides in one string; repeat for several")
    collect.add_argument("--yes", action="store_true", help="delete (default: a dry run that only prints)")
    collect.add_argument("--evidence", action="store_true", help="remove failed, damaged and unreachable partial builds too")
    collect.add_argument("overrides", nargs="*", help="a config set after `--` (e.g. -- experiment=smoke)")
    return top


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    args = parser().parse_args(argv)
    try:
        if args.command == "gc":
            sets = [shlex.split(c) for c in args.config] + ([args.overrides] if args.overrides else [])
            return gc(sets or [[]], args.root, args.yes, args.evidence)
        defaults = compose_config([])
        root = Path(args.root).resolve() if args.root else artifacts_root(defaults.run)
        return ls(root, args.json, defaults) if args.command == "ls" else verify(root)
    except (ValueError, FileNotFoundError, HydraException, OmegaConfBaseException) as err:
        # a bad override, a missing data source, a config set without a root: one line
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
