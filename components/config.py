"""Helpers shared by every stage's config dataclass.

A stage config is a plain `@dataclass(kw_only=True)` mirrored one to one by
`conf/<stage>/default.yaml`. Every field is part of the stage's cache key unless it
is declared with `log_only(...)`: settings that cannot change the artifact
(logging cadence, progress bars, worker counts for order-independent work).
"""
from __future__ import annotations

import dataclasses
from typing import Any

AFFECTS_OUTPUT = "affects_output"


def log_only(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field kept out of the cache key: changing it never rebuilds the artifact."""
    return dataclasses.field(default=default, metadata={AFFECTS_OUTPUT: False}, **kwargs)


CONTENT_PATH = "content_path"


def content_path(default: Any = None, **kwargs: Any) -> Any:
    """A path field whose files' content is part of the cache key, not only the path (artifacts.py)."""
    return dataclasses.field(default=default, metadata={CONTENT_PATH: True}, **kwargs)


def content_paths(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Dotted field name -> path, for every content_path field that is set (nested dataclasses too)."""
    found: dict[str, str] = {}
    if dataclasses.is_dataclass(cfg):
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if f.metadata.get(CONTENT_PATH) and value:
                found[prefix + f.name] = str(value)
            found.update(content_paths(value, f"{prefix}{f.name}."))
    return found


def check(condition: bool, key: str, value: Any, fix: str) -> None:
    """Raise a ValueError naming the dotted key, the bad value and how to fix it."""
    if not condition:
        raise ValueError(f"config error: {key}={value!r}: {fix}")


def check_choice(key: str, value: Any, choices: tuple | list) -> None:
    check(value in choices, key, value, f"choose one of {sorted(choices)}")


def output_relevant(cfg: Any) -> Any:
    """The part of a config dataclass that can change the output, as plain JSON data."""
    if dataclasses.is_dataclass(cfg):
        return {
            f.name: output_relevant(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if f.metadata.get(AFFECTS_OUTPUT, True)
        }
    if isinstance(cfg, (list, tuple)):
        return [output_relevant(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): output_relevant(v) for k, v in sorted(cfg.items())}
    return cfg


def as_dict(cfg: Any) -> Any:
    """The whole config (logging fields included) as plain JSON data, for manifests."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else cfg
