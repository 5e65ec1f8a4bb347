"""Which fields of a record (a JSON line, a table row) a document keeps: its text, its id, and metadata.

A source entry may name them: `{path: x.jsonl, text_key: content, id_key: doc_id,
metadata_keys: [lang, metadata.title]}` (a list keeps each field under its last name; a mapping
{name: field} renames, e.g. {origin: source}, as `source` is the pipeline's own key). A dotted field
reads inside a nested object (dolma's `metadata.url`). Without declarations the url and the date are
still picked up from their common names (URL_KEYS, DATE_KEYS), at the top level first, then inside
`metadata` / `meta`: the url blocklist needs `metadata.url`.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from components.config import check

URL_KEYS = ("url", "URL", "source_url", "warc_target_uri", "WARC-Target-URI", "target_uri", "warc-target-uri")
DATE_KEYS = ("date", "timestamp", "created", "date_download", "crawl_date", "WARC-Date", "warc_date", "published")
NESTED_KEYS = ("metadata", "meta")  # objects searched for a url / date when the top level has none
RESERVED_NAMES = ("source", "file", "line", "row", "record", "offset", "file_path")  # the pipeline's own metadata
TEXT_MODES = ("file", "line", "paragraph", "chunk")
DEFAULT_CHUNK_CHARS = 4000  # about 1000 tokens: long enough for the length rules, short enough for a context


@dataclass(frozen=True)
class RowFields:
    text_key: str
    id_key: str | None = None  # None: the `id` field when there is one
    metadata_keys: tuple[tuple[str, str], ...] = ()  # (name in metadata, dotted field)

    def columns(self, available: list[str]) -> list[str]:
        """The top-level columns a table reader must load (the others stay on disk)."""
        wanted = [self.text_key, self.id_key or "id", *URL_KEYS, *DATE_KEYS, *NESTED_KEYS,
                  *(field.split(".")[0] for _, field in self.metadata_keys)]
        return [c for c in dict.fromkeys(wanted) if c in available]


def as_fields(fields: RowFields | str) -> RowFields:
    """A bare text key (the callers that read text and id only) as RowFields."""
    return RowFields(fields) if isinstance(fields, str) else fields


def lookup(row: dict, field: str) -> Any:
    """row[field], or the value at a dotted path inside nested objects; None when absent."""
    if field in row:
        return row[field]
    value: Any = row
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def plain(value: Any) -> Any:
    """A value the output's JSON can hold: dates as ISO text, other objects as their text."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime, datetime.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def _first(row: dict, names: tuple[str, ...]) -> Any:
    for scope in (row, *(row.get(n) for n in NESTED_KEYS)):
        if isinstance(scope, dict):
            for name in names:
                if scope.get(name) not in (None, ""):
                    return scope[name]
    return None


def row_metadata(row: dict, fields: RowFields) -> dict:
    """The url and date found under their common names, then each declared field present in the row."""
    found = {"url": _first(row, URL_KEYS), "date": _first(row, DATE_KEYS)}
    for name, field in fields.metadata_keys:
        found[name] = lookup(row, field)
    return {k: plain(v) for k, v in found.items() if v is not None}


def row_id(row: dict, fields: RowFields, fallback: str) -> tuple[str | None, str | None]:
    """(id, None), or (None, reason) when a declared id field is missing or empty."""
    value = lookup(row, fields.id_key or "id")
    if value is None or value == "":
        return (None, f"missing_field '{fields.id_key}' (the source's id_key)") if fields.id_key else (fallback, None)
    return str(value), None


def _metadata_keys(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    where = f"{key}.metadata_keys"
    if isinstance(value, str):
        value = [value]
    check(isinstance(value, (list, tuple, dict)), where, value, "give a list of field names or a mapping {name: field}")
    pairs = list(value.items()) if isinstance(value, dict) else [(str(f).split(".")[-1], f) for f in value]
    for name, field in pairs:
        check(isinstance(field, str) and field.strip() != "", where, value, "field names must be non-empty strings")
        check(name not in RESERVED_NAMES, where, value,
              f"{name!r} is the pipeline's own metadata ({', '.join(RESERVED_NAMES)}): rename it, e.g. {{{name}_field: {field}}}")
    names = [name for name, _ in pairs]
    check(len(set(names)) == len(names), where, value, "two fields land under one name: use a mapping {name: field}")
    return tuple((str(name), field) for name, field in pairs)


def reader_options(entry: dict, key: str, kind: str) -> dict:
    """The reader fields of a source entry (id_key, metadata_keys, mode, chunk_chars), checked."""
    options: dict = {}
    if "id_key" in entry or "metadata_keys" in entry:
        check(kind in ("jsonl", "parquet", "hf"), f"{key}.id_key", entry.get("id_key", entry.get("metadata_keys")),
              f"id_key and metadata_keys are for jsonl, parquet and hf sources (this one is {kind})")
    id_key = entry.get("id_key")
    check(id_key is None or (isinstance(id_key, str) and id_key != ""), f"{key}.id_key", id_key, "must be a non-empty string")
    options["id_key"] = id_key
    if entry.get("metadata_keys") is not None:
        options["metadata_keys"] = _metadata_keys(entry["metadata_keys"], key)
    mode = entry.get("mode", "file")
    check(kind == "text" or "mode" not in entry, f"{key}.mode", mode, f"only for type: text (this one is {kind})")
    check(mode in TEXT_MODES, f"{key}.mode", mode,
          "one of file (a document per file), line (per non-empty line), paragraph (blank-line paragraphs "
          "grouped up to chunk_chars), chunk (pieces of about chunk_chars at paragraph / sentence ends)")
    options["mode"] = mode
    chars = entry.get("chunk_chars")
    check(chars is None or mode in ("paragraph", "chunk"), f"{key}.chunk_chars", chars, "only with mode: paragraph or chunk")
    check(chars is None or (isinstance(chars, int) and not isinstance(chars, bool) and chars >= 100),
          f"{key}.chunk_chars", chars, "must be an integer >= 100 (characters)")
    options["chunk_chars"] = chars or DEFAULT_CHUNK_CHARS
    return options
