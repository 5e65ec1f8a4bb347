"""Source specs: what `data.sources` entries mean, checked before any work. Light: no heavy imports.

An entry is a string (a path, a glob or "embedded") or a mapping
{type, path, text_key, weight, split, subset, revision, name, blocks, settings}, the reader's
{id_key, metadata_keys, mode, chunk_chars} (components/data/ingest/fields.py) and per-source block
settings (blocks, e.g. {c4: false}; checked by DataConfig). Without `type`, the
type comes from the extension (see SUFFIX_TYPES) or, for a directory written by
`datasets.save_to_disk`, is `hf`. A path that is neither a file, a glob nor a
directory is read by `hf` as a Hugging Face hub id.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.config import check, check_choice, check_known_keys, expand_paths
from components.data.ingest.fields import DEFAULT_CHUNK_CHARS, reader_options

SOURCE_TYPES = ("embedded", "jsonl", "parquet", "text", "html", "hf", "warc")
SUFFIX_TYPES = {  # longest suffix first wins
    ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".txt": "text", ".txt.gz": "text", ".md": "text", ".text": "text",
    ".html": "html", ".htm": "html",
    ".warc": "warc", ".warc.gz": "warc",
}
SPEC_KEYS = ("type", "path", "text_key", "weight", "split", "subset", "revision", "name", "blocks", "settings")
READER_KEYS = ("id_key", "metadata_keys", "mode", "chunk_chars")  # checked by ingest/fields.py
HF_ONLY_KEYS = ("split", "subset", "revision")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class SourceSpec:
    key: str  # where it came from in the config, for messages: data.sources[2]
    type: str
    name: str  # label in document metadata and in the manifest's per-source counts
    path: str | None = None
    text_key: str | None = None  # None: data.text_key
    weight: float | None = None
    split: str = "train"
    subset: str | None = None  # hf configuration name (load_dataset's `name`)
    revision: str | None = None  # hf hub revision; pin it for a reproducible cache key
    # the reader's fields (components/data/ingest/fields.py): which record fields a document keeps ...
    id_key: str | None = None  # None: the record's `id`, else file and position
    metadata_keys: tuple[tuple[str, str], ...] = ()  # (name, dotted field); url and date are found anyway
    # ... and how a text file becomes documents: file, line, paragraph or chunk (of about chunk_chars)
    mode: str = "file"
    chunk_chars: int = DEFAULT_CHUNK_CHARS
    # per-source block settings: {block: False (off for this source) | {rule: value} (its own rules)};
    # names and rules are checked by DataConfig, which knows the blocks
    blocks: dict = field(default_factory=dict, hash=False)


def suffix_type(path: str) -> str | None:
    lowered = path.lower()
    for suffix in sorted(SUFFIX_TYPES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return SUFFIX_TYPES[suffix]
    return None


def infer_type(path: str) -> str | None:
    if suffix_type(path):
        return suffix_type(path)
    if is_saved_dataset(Path(path).expanduser()):
        return "hf"
    return None


def is_saved_dataset(path: Path) -> bool:
    """A directory written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json"))


def is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def is_hub_id(path: str) -> bool:
    """Not a local file, directory or glob, no data-file extension, and shaped like `owner/name` or `name`."""
    return (not is_glob(path) and suffix_type(path) is None and not Path(path).expanduser().exists()
            and bool(_HUB_ID.match(path)))


def hub_offline() -> bool:
    """Read at call time: huggingface_hub and datasets read it once, at import."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE") for v in _OFFLINE_VARS)


def check_hub_reachable(spec: SourceSpec) -> None:
    if spec.type == "hf" and spec.path and is_hub_id(spec.path) and hub_offline():
        raise ValueError(
            f"config error: {spec.key}.path={spec.path!r} (source {spec.name!r}) is a Hugging Face hub id, "
            "but the hub is offline (HF_HUB_OFFLINE=1): use a local save_to_disk directory or local files, "
            "or go online with HF_HUB_OFFLINE=0")


def parse_source(entry: Any, index: int) -> SourceSpec:
    key = f"data.sources[{index}]"
    if isinstance(entry, str):
        entry = {"type": "embedded"} if entry == "embedded" else {"path": entry}
    check(isinstance(entry, dict), key, entry, "give a path, a glob, 'embedded' or a mapping {type, path, ...}")
    check_known_keys(entry, SPEC_KEYS + READER_KEYS, key)
    path = entry.get("path")
    check(path is None or (isinstance(path, str) and path.strip() != ""), f"{key}.path", path, "must be a non-empty string")
    kind = entry.get("type") or (infer_type(path) if path else None)
    check(kind is not None, f"{key}.type", entry.get("type"),
          f"cannot infer the type of {path!r} from its extension; set type: one of {list(SOURCE_TYPES)}")
    check_choice(f"{key}.type", kind, SOURCE_TYPES)
    check((kind == "embedded") == (path is None), f"{key}.path", path,
          "the embedded source takes no path" if kind == "embedded" else f"a {kind} source needs a path")
    for name in HF_ONLY_KEYS:
        check(kind == "hf" or name not in entry, f"{key}.{name}", entry.get(name), "only for type: hf")
    text_key = entry.get("text_key")
    check(text_key is None or (isinstance(text_key, str) and text_key != ""), f"{key}.text_key", text_key,
          "must be a non-empty string (or omitted: data.text_key)")
    weight = entry.get("weight")
    check(weight is None or (isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0),
          f"{key}.weight", weight, "must be a number > 0 (or omitted)")
    name = entry.get("name") or ("embedded" if kind == "embedded" else path)
    check(isinstance(name, str), f"{key}.name", name, "must be a string")
    spec = SourceSpec(key=key, type=kind, name=name, path=path, text_key=text_key,
                      weight=None if weight is None else float(weight), split=str(entry.get("split", "train")),
                      subset=entry.get("subset"), revision=entry.get("revision"),
                      blocks=parse_block_settings(entry, key), **reader_options(entry, key, kind))
    check_hub_reachable(spec)
    return spec


def parse_block_settings(entry: dict, key: str) -> dict:
    """`blocks: {c4: false, gopher_quality: {min_doc_words: 20}}` and `settings: {c4: {...}}` (the same as
    a mapping under blocks) -> {block: False | {rule: value}}; true is {} (on, with the global rules)."""
    merged: dict = {}
    for part in ("blocks", "settings"):
        given = entry.get(part) or {}
        check(isinstance(given, dict), f"{key}.{part}", given, "must be a mapping {block: ...}")
        for block, value in given.items():
            where = f"{key}.{part}.{block}"
            if part == "settings":
                check(isinstance(value, dict), where, value, "must be a mapping {rule: value}")
            check(isinstance(value, (bool, dict)), where, value, "give true, false or a mapping {rule: value}")
            check(block not in merged or isinstance(value, dict) and merged[block] is not False, where, value,
                  "the block is switched off for this source in blocks:")
            merged[block] = {**merged.get(block, {}), **value} if isinstance(value, dict) else ({} if value else False)
    return merged


def parse_sources(entries: list[Any]) -> list[SourceSpec]:
    check(isinstance(entries, (list, tuple)) and len(entries) > 0, "data.sources", entries, "name at least one source")
    specs = [parse_source(e, i) for i, e in enumerate(entries)]
    seen: dict[str, str] = {}
    for spec in specs:
        check(spec.name not in seen, f"{spec.key}.name", spec.name, f"already used by {seen.get(spec.name)}: names must be unique")
        seen[spec.name] = spec.key
    unweighted = [s for s in specs if s.weight is None]
    if unweighted and len(unweighted) < len(specs):
        check(False, f"{unweighted[0].key}.weight", None, "give every source a weight, or none")
    return specs


def expand_files(spec: SourceSpec) -> list[Path]:
    """The local files a spec reads, sorted; [] for the embedded corpus and hub ids."""
    if spec.type == "embedded" or (spec.type == "hf" and is_hub_id(spec.path)):
        return []
    path = Path(spec.path).expanduser()
    if spec.type == "hf" and path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    matches = [p for p in expand_paths([spec.path], f"{spec.key} ({spec.name})") if p.is_file()]
    if not matches:  # a plain directory that is no saved dataset
        raise FileNotFoundError(f"{spec.key} ({spec.name}): no file matches {spec.path!r}")
    return matches
