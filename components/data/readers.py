"""Validating input reader: every line becomes a document or a quarantine record, never nothing."""
from __future__ import annotations

import glob
import gzip
import json
from pathlib import Path
from typing import Iterator


def expand_sources(sources: list[str], embedded_file: Path) -> list[tuple[Path, str]]:
    """(file, name kept in document metadata): the embedded corpus is named "embedded", not by
    its path inside the artifact, so outputs do not depend on where the artifact is built."""
    paths: list[tuple[Path, str]] = []
    for source in sources:
        if source == "embedded":
            paths.append((embedded_file, "embedded"))
            continue
        matches = sorted(glob.glob(str(Path(source).expanduser())))
        if not matches:
            raise FileNotFoundError(f"data.sources: no file matches {source!r}")
        paths += [(Path(m), m) for m in matches]
    return paths


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_jsonl(path: Path, text_key: str, max_line_bytes: int,
               source_name: str | None = None) -> Iterator[tuple[dict | None, dict | None]]:
    """Yield (document, None) for good lines and (None, quarantine record) for bad ones."""
    with _open(path) as handle:
        for number, raw in enumerate(handle, 1):
            where = {"file": str(path), "line": number}
            if not raw.strip():
                continue
            if len(raw) > max_line_bytes:
                yield None, {**where, "reason": f"line_too_long ({len(raw)} bytes > data.max_line_bytes)"}
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield None, {**where, "reason": "invalid_utf8"}
                continue
            except json.JSONDecodeError as err:
                yield None, {**where, "reason": f"invalid_json ({err.msg})"}
                continue
            if not isinstance(row, dict) or text_key not in row:
                yield None, {**where, "reason": f"missing_field '{text_key}'"}
                continue
            text = row[text_key]
            if not isinstance(text, str):
                yield None, {**where, "reason": f"non_string_field '{text_key}' ({type(text).__name__})"}
                continue
            if not text.strip():
                yield None, {**where, "reason": f"empty_field '{text_key}'"}
                continue
            doc_id = str(row.get("id", f"{path.name}:{number}"))
            yield {"text": text, "id": doc_id, "metadata": {"source": source_name or str(path), "line": number}}, None
