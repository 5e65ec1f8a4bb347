"""Why a planned stage will build: what differs from the nearest artifact of that stage on disk.

Pure: reads manifests and the code's import closure, runs no stage and imports no Prefect. The
nearest artifact is the complete one (a manifest that parses) whose recorded config differs from the
planned one in the fewest output-relevant dotted keys; against it the plan names each part of the
key that changed: config values (old -> new), inputs (another key upstream), code files, library or
Python versions, input files. A manifest written before per-file code digests were recorded names
only the files that entered or left the closure.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.artifacts import (MANIFEST, KEYLESS_LIBRARIES, damage, key_closure, key_input_files,
                                  read_manifest)
from components.code_version import Closure, library_versions
from components.config import as_dict, output_relevant
from components.stages import STAGES

if TYPE_CHECKING:
    from flows.plan import Step

MAX_CONFIG_LINES = 6  # config changes shown per stage; the rest are counted ("+N more")
MAX_VALUE_CHARS = 60
_ABSENT = object()  # a key one side of the comparison does not have


@dataclass(frozen=True)
class Artifact:
    """A complete artifact on disk: its directory and its manifest."""

    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def created(self) -> float:
        return float((self.manifest.get("timings") or {}).get("started") or 0.0)


def short(key: str | None) -> str:
    return f"{key[:8]}.." if key else "none"


def shown(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."


def flatten(value: Any, prefix: str) -> dict[str, Any]:
    """{dotted key: leaf value} of nested dicts (lists are leaves: compared whole)."""
    if isinstance(value, dict) and value:
        found: dict[str, Any] = {}
        for name, child in value.items():
            found.update(flatten(child, f"{prefix}.{name}"))
        return found
    return {prefix: value}


def _as_json(value: Any) -> Any:
    """As the manifest stores it (tuples become lists, paths strings), so equal values compare equal."""
    return json.loads(json.dumps(value, default=str))


def artifacts_of(root: Path, stage: str) -> list[Artifact]:
    """The complete artifacts of `stage` under `root` (hidden leftovers and manifest-less folders skipped)."""
    folder = Path(root) / stage
    found = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else ():
        if path.name.startswith(".") or not (path / MANIFEST).is_file():
            continue
        try:
            found.append(Artifact(path, read_manifest(path)))
        except ValueError:  # a damaged manifest: `python -m flows.cache verify` names it
            continue
    return found


def config_changes(stage: str, cfg: Any, recorded: dict | None) -> list[tuple[str, Any, Any]]:
    """(dotted key, recorded value, planned value) for each output-relevant key that differs; a key the
    recorded config has and the planned one lacks entirely (a removed field) counts too."""
    planned = flatten(_as_json(output_relevant(cfg)), stage)
    every_field = flatten(_as_json(as_dict(cfg)), stage)  # log-only fields too: their changes do not count
    old = flatten(recorded or {}, stage)
    keys = set(planned) | (set(old) - set(every_field))
    changes = [(k, old.get(k, _ABSENT), planned.get(k, _ABSENT)) for k in sorted(keys)]
    return [(k, before, after) for k, before, after in changes if before != after]


def input_changes(step: Step, artifact: Artifact, to_build: set[str]) -> list[str]:
    recorded = artifact.manifest.get("inputs") or {}
    lines = []
    for role, key in step.inputs.items():
        source = step.sources[role]
        old = (recorded.get(role) or {}).get("key")
        if old != key:
            named = f"input {role}" if role == source else f"input {role} (from {source})"
            lines.append(f"{named}: {short(old)} -> {short(key)} ({'rebuilds too' if key in to_build else 'cached'})")
    lines += [f"input {role}: read by {short(artifact.key)}, no longer read" for role in recorded if role not in step.inputs]
    return lines


def code_changes(closure: Closure, manifest: dict) -> list[str]:
    """The repo files whose code differs from what the manifest records (comments and docstrings never count)."""
    code = manifest.get("code") or {}
    digests = code.get("digests")
    old_files = set(digests) if isinstance(digests, dict) else set(code.get("files") or ())
    lines = []
    if isinstance(digests, dict):
        lines += [f"code changed: {rel}" for rel, digest in sorted(closure.files.items())
                  if rel in digests and digests[rel] != digest]
    if old_files:  # a manifest with no code record at all names no files
        lines += [f"code added to the stage's imports: {rel}" for rel in sorted(set(closure.files) - old_files)]
        lines += [f"code no longer imported: {rel}" for rel in sorted(old_files - set(closure.files))]
    return lines


def version_changes(closure: Closure, manifest: dict) -> list[str]:
    """Python and the libraries in the key (the stage's imports, tracking-only ones aside) that differ."""
    recorded = manifest.get("versions") or {}
    current = {"python": platform.python_version(), **library_versions(closure.libraries - KEYLESS_LIBRARIES)}
    return [f"{name}: {recorded.get(name, 'not recorded')} -> {version}"
            for name, version in current.items() if recorded.get(name) != version]


def input_file_changes(step: Step, manifest: dict) -> list[str]:
    recorded = manifest.get("input_files")
    if recorded is None:  # written before the manifest recorded them
        return []
    current = key_input_files(step.stage, step.cfg)
    return [f"input files changed: {name}" for name in sorted(set(current) | set(recorded))
            if current.get(name) != recorded.get(name)]


def nearest(step: Step, artifacts: list[Artifact]) -> tuple[Artifact, list] | None:
    """The artifact with the fewest config changes (then fewest input changes, then the newest)."""
    scored = []
    for artifact in artifacts:
        changes = config_changes(step.stage, step.cfg, artifact.manifest.get("config"))
        recorded = artifact.manifest.get("inputs") or {}
        moved = sum((recorded.get(role) or {}).get("key") != key for role, key in step.inputs.items())
        scored.append(((len(changes), moved, -artifact.created), artifact, changes))
    if not scored:
        return None
    _, artifact, changes = min(scored, key=lambda item: item[0])
    return artifact, changes


def config_lines(changes: list[tuple[str, Any, Any]]) -> list[str]:
    lines = [f"{key}: {shown(before)} -> {shown(after)}" for key, before, after in changes[:MAX_CONFIG_LINES]]
    if len(changes) > MAX_CONFIG_LINES:
        lines.append(f"+{len(changes) - MAX_CONFIG_LINES} more config keys")
    return lines


def leftover_lines(step: Step, root: Path) -> list[str]:
    """What sits at or beside the planned key's own path: a damaged artifact, a partial build."""
    path = step.path(root)
    lines = [f"the artifact {step.key} is there but damaged: {damage(path)}"] if path.exists() else []
    partial = path.parent / f".{step.key}.partial"
    if partial.is_dir():
        lines.append(f"a previous build did not finish: resumes from {partial}")
    return lines


def why(step: Step, root: Path, to_build: set[str]) -> tuple[str, list[str]]:
    """(headline, reasons) for a step that will build."""
    leftovers = leftover_lines(step, root)
    if step.path(root).exists():  # this very key was built and is damaged: that is the whole reason
        return "its artifact is damaged (the build moves it aside as evidence)", leftovers
    found = nearest(step, [a for a in artifacts_of(root, step.stage) if a.key != step.key])
    if found is None:
        return "no artifact of this stage yet", leftovers
    artifact, changes = found
    closure = key_closure(step.key, STAGES[step.stage].module)
    reasons = leftovers + config_lines(changes) + input_changes(step, artifact, to_build)
    reasons += code_changes(closure, artifact.manifest) + version_changes(closure, artifact.manifest)
    reasons += input_file_changes(step, artifact.manifest)
    if len(reasons) == len(leftovers):
        reasons.append("no recorded difference: the manifest predates what the key covers now (code digests, "
                       "input files); see components/artifacts.py stage_key")
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(artifact.created)) if artifact.created else "unknown time"
    return f"nearest artifact {artifact.key} (built {built})", reasons


def explain(plan: list[Step], root: Path, to_build: set[str]) -> list[str]:
    """Lines saying why each step in `to_build` (their keys) builds, in plan order."""
    lines = []
    for step in plan:
        if step.key not in to_build:
            continue
        headline, reasons = why(step, root, to_build)
        lines.append(f"{step.stage} {step.key}: {headline}")
        lines += [f"  {reason}" for reason in reasons]
    return lines
