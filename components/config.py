"""Helpers shared by every stage's config dataclass.

A stage config is a frozen `@dataclass(frozen=True, kw_only=True)` mirrored one to one by
`conf/<stage>/default.yaml`. Every field is part of the stage's cache key unless it
is declared with `log_only(...)`: settings that cannot change the artifact
(logging cadence, progress bars, worker counts for order-independent work).
Its `__post_init__` only checks; values derived from fields are properties, or are
resolved once at the flow boundary (`resolve_paths`), never assigned to the config.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import glob
import hashlib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

AFFECTS_OUTPUT = "affects_output"
READS_FILES = "reads_files"
ABSOLUTE = "absolute"  # an input_path made absolute at the flow boundary (the launcher's workers run elsewhere)
NAMES = "names"  # a name_or_file field's built-in names: any other value is a file


def log_only(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field kept out of the cache key: changing it never rebuilds the artifact."""
    return dataclasses.field(default=default, metadata={AFFECTS_OUTPUT: False}, **kwargs)


def input_files(**kwargs: Any) -> Any:
    """A list of input file paths or globs: their content, not only their names, is in the cache key."""
    return dataclasses.field(default_factory=list, metadata={READS_FILES: True}, **kwargs)


def input_path(default: Any = None, absolute: bool = False, **kwargs: Any) -> Any:
    """One input file or directory (or None), e.g. a checkpoint: its content is in the cache key.
    absolute: `resolve_paths` turns the value into an absolute path before the config is built."""
    return dataclasses.field(default=default, metadata={READS_FILES: True, ABSOLUTE: absolute}, **kwargs)


def name_or_file(default: str, names: tuple[str, ...], **kwargs: Any) -> Any:
    """One of `names`, or a path to a file: the file's content, not its path, is in the cache key
    (output_relevant), and the path is made absolute at the flow boundary (resolve_paths)."""
    return dataclasses.field(default=default, metadata={NAMES: tuple(names), ABSOLUTE: True}, **kwargs)


def check(condition: bool, key: str, value: Any, fix: str) -> None:
    """Raise a ValueError naming the dotted key, the bad value and how to fix it."""
    if not condition:
        raise ValueError(f"config error: {key}={value!r}: {fix}")


def check_choice(key: str, value: Any, choices: tuple | list) -> None:
    check(value in choices, key, value, f"choose one of {sorted(choices)}")


def unknown_key_error(key: str, valid: list[str] | tuple[str, ...]) -> ValueError:
    """`key` (dotted) is no field of its section: name it and the valid keys nearest to it."""
    section, _, name = key.rpartition(".")
    near = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.5)
    shown = ", ".join(f"{section}.{n}" if section else n for n in (near or sorted(valid)))
    hint = f"did you mean {shown}?" if near else f"valid keys here: {shown}"
    return ValueError(f"config error: unknown key {key}: {hint}")


def check_known_keys(keys: Any, valid: list[str] | tuple[str, ...], section: str) -> None:
    for name in keys:
        if name not in valid:
            raise unknown_key_error(f"{section}.{name}" if section else str(name), valid)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def nested_config_type(cls: type, name: str) -> type | None:
    """The dataclass a field holds (`X` or `X | None`), or None for plain values, lists and free dicts."""
    hint = _field_types(cls)[name]
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def check_config_keys(values: Mapping, cls: type, section: str = "") -> None:
    """Every key in `values` (a DictConfig or dict, nested) must be a field of `cls`, at every level.

    Why here and not only in OmegaConf's struct mode: Hydra's `+key=` and `++key=` add keys with
    `force_add` (struct off), and `OmegaConf.to_object` then sets unknown keys as plain attributes
    of the dataclass, outside every check and every cache key."""
    names = [f.name for f in dataclasses.fields(cls)]
    check_known_keys(values.keys(), names, section)
    for name in names:
        nested = nested_config_type(cls, name)
        child = values.get(name) if nested is not None else None
        if isinstance(child, Mapping):
            check_config_keys(child, nested, f"{section}.{name}" if section else name)


def resolve_paths(values: Any, cls: type) -> None:
    """Make the `input_path(absolute=True)` values in `values` (a DictConfig, nested) absolute, in place."""
    for f in dataclasses.fields(cls):
        nested = nested_config_type(cls, f.name)
        child = values.get(f.name)
        if nested is not None and isinstance(child, Mapping):
            resolve_paths(child, nested)
        elif f.metadata.get(ABSOLUTE) and isinstance(child, str) and child not in f.metadata.get(NAMES, ()):
            values[f.name] = str(Path(child).expanduser().resolve())


def writable_schema(cls: type) -> Any:
    """`cls` as an OmegaConf node Hydra can compose into, frozen dataclass or not.

    OmegaConf marks the node of a frozen dataclass read-only (omegaconf/dictconfig.py: a frozen
    structured config sets the `readonly` flag), so no yaml or override could set its values;
    the frozen dataclasses are built only at the end, by `OmegaConf.to_object`. `struct` is off
    too: an unknown key then reaches `check_config_keys`, which rejects every form of it
    (`key=`, `+key=`, `++key=`, a yaml typo) with one message."""
    from omegaconf import DictConfig, OmegaConf

    def open_up(node: Any) -> Any:
        if isinstance(node, DictConfig):
            OmegaConf.set_readonly(node, False)
            OmegaConf.set_struct(node, False)
            for key in node:
                open_up(node[key])
        return node

    return open_up(OmegaConf.structured(cls))


def expand_paths(patterns: list[str] | tuple[str, ...], key: str) -> list[Path]:
    """The paths named by paths or globs, in a stable order: the one glob helper of the project.

    A glob matches files only, and `**` is recursive (any depth, this directory included); a plain
    path is taken as it is (a file, or a directory such as a checkpoint). A pattern that matches
    nothing fails naming `key`."""
    found: list[Path] = []
    for pattern in patterns:
        path = str(Path(pattern).expanduser())
        if any(c in path for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(path, recursive=True) if Path(m).is_file())
        else:
            matches = [Path(path)] if Path(path).exists() else []
        if not matches:
            raise FileNotFoundError(f"{key}: no file matches {pattern!r}")
        found += matches
    return found


def resolved_input(cfg: Any, name: str, key: str) -> tuple[Path, ...]:
    """The paths an `input_files()` / `input_path()` field names, expanded once per config object and
    kept with it (as functools.cached_property keeps a value: a frozen config never changes), so the
    stage's key and its run read the same files. `key`: the dotted name, for the error."""
    cache = cfg.__dict__.setdefault("_resolved_inputs", {})
    if name not in cache:
        value = getattr(cfg, name)
        entries = [value] if isinstance(value, str) else [v.get("path", "") if isinstance(v, Mapping) else v for v in value]
        cache[name] = tuple(expand_paths(entries, key)) if value else ()  # a mapping entry {path, ...}: its path
    return cache[name]


def output_relevant(cfg: Any) -> Any:
    """The part of a config dataclass that can change the output, as plain JSON data."""
    if dataclasses.is_dataclass(cfg):
        return {
            f.name: file_content_digest(getattr(cfg, f.name)) if _names_a_file(f, getattr(cfg, f.name))
            else output_relevant(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if f.metadata.get(AFFECTS_OUTPUT, True)
        }
    if isinstance(cfg, (list, tuple)):
        return [output_relevant(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): output_relevant(v) for k, v in sorted(cfg.items())}
    return cfg


def _names_a_file(f: dataclasses.Field, value: Any) -> bool:
    return NAMES in f.metadata and isinstance(value, str) and value not in f.metadata[NAMES]


def file_content_digest(path: str) -> dict:
    """What a name_or_file field's file contributes to the cache key: its bytes, so moving it rebuilds nothing."""
    return {"file_sha256": hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()}


def as_dict(cfg: Any) -> Any:
    """The whole config (logging fields included) as plain JSON data, for manifests."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
