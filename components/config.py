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
READS_FILES = "reads_files"


def log_only(default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field kept out of the cache key: changing it never rebuilds the artifact."""
    return dataclasses.field(default=default, metadata={AFFECTS_OUTPUT: False}, **kwargs)


def input_files(**kwargs: Any) -> Any:
    """A list of input file paths or globs: their content, not only their names, is in the cache key."""
    return dataclasses.field(default_factory=list, metadata={READS_FILES: True}, **kwargs)


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
