"""Validating input readers: every record becomes a document or an issue, never nothing.

A reader yields (document, None) or (None, issue). A document is
{id, text, metadata{source, file, line | row | record, url, date ...}}. An issue is
{file, line | row | record, reason} and goes to quarantine.jsonl, or, with
`"skip": True`, marks a record that is not a document at all (a WARC request, an
image): counted by reason, not quarantined. Reasons start with a code
(invalid_json, invalid_utf8, missing_field, ...) followed by details.

Numbering: `line` counts from 1 (text lines), `row` and `record` from 0 (table rows,
WARC records). Plain text files (.txt, .md) are one document per file: a file is
the unit a writer meant as a whole (a page, a chapter, a README).
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Callable, Iterator

from components.data.sources import SourceSpec, expand_files

Outcome = tuple[dict | None, dict | None]
UNREADABLE = (OSError, EOFError, zlib.error)  # permission, missing, corrupt gzip (BadGzipFile is an OSError)


def issue(file: str, reason: str, **where) -> tuple[None, dict]:
    return None, {"file": file, **where, "reason": reason}


def unreadable(file: str, err: BaseException, **where) -> tuple[None, dict]:
    return issue(file, f"unreadable_file ({type(err).__name__}: {err})", **where)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def check_text(record, text_key: str, file: str, max_bytes: int, **where) -> tuple[str | None, dict | None]:
    """(text, None) when record[text_key] is a non-empty string of at most max_bytes, else (None, issue)."""
    if not isinstance(record, dict) or text_key not in record:
        return issue(file, f"missing_field '{text_key}'", **where)
    text = record[text_key]
    if not isinstance(text, str):
        return issue(file, f"non_string_field '{text_key}' ({type(text).__name__})", **where)
    if not text.strip():
        return issue(file, f"empty_field '{text_key}'", **where)
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        return issue(file, f"text_too_long ({size} bytes > data.max_line_bytes)", **where)
    return text, None


def read_jsonl(path: Path, text_key: str, max_line_bytes: int, source_name: str | None = None,
               file_label: str | None = None) -> Iterator[Outcome]:
    """JSON lines (optionally gzipped); a .json file holding one JSON array is read as its elements."""
    file = file_label or str(path)
    number = 0
    try:
        with _open(path) as handle:
            head = handle.read(64).lstrip()
            handle.seek(0)
            if path.name.lower().endswith((".json", ".json.gz")) and head.startswith(b"["):
                yield from _read_json_array(handle.read(), file, text_key, max_line_bytes, source_name)
                return
            for number, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                if len(raw) > max_line_bytes:
                    yield issue(file, f"line_too_long ({len(raw)} bytes > data.max_line_bytes)", line=number)
                    continue
                try:
                    row = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield issue(file, "invalid_utf8", line=number)
                    continue
                except json.JSONDecodeError as err:
                    yield issue(file, f"invalid_json ({err.msg})", line=number)
                    continue
                text, bad = check_text(row, text_key, file, max_line_bytes, line=number)
                if bad:
                    yield None, bad
                    continue
                doc_id = str(row.get("id", f"{path.name}:{number}"))
                yield {"text": text, "id": doc_id, "metadata": {"source": source_name or str(path), "file": file, "line": number}}, None
    except UNREADABLE as err:
        yield unreadable(file, err, line=number + 1)


def _read_json_array(blob: bytes, file: str, text_key: str, max_bytes: int, source: str | None) -> Iterator[Outcome]:
    try:
        rows = json.loads(blob.decode("utf-8"))
    except UnicodeDecodeError as err:
        yield issue(file, f"invalid_utf8 (byte {err.start})", line=blob[:err.start].count(b"\n") + 1)
        return
    except json.JSONDecodeError as err:
        yield issue(file, f"invalid_json ({err.msg})", line=err.lineno)
        return
    yield from _documents(rows, text_key, file, source or file, max_bytes)


def read_text(path: Path, source: str, max_line_bytes: int, file: str) -> Iterator[Outcome]:
    """One document per file; the file is quarantined whole if a line is invalid UTF-8 or too long."""
    try:
        with _open(path) as handle:
            lines = []
            for number, raw in enumerate(handle, 1):
                if len(raw) > max_line_bytes:
                    yield issue(file, f"line_too_long ({len(raw)} bytes > data.max_line_bytes)", line=number)
                    return
                try:
                    lines.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    yield issue(file, "invalid_utf8", line=number)
                    return
    except UNREADABLE as err:
        yield unreadable(file, err)
        return
    text = "".join(lines)
    if not text.strip():
        yield issue(file, "empty_text", line=1)
        return
    yield {"text": text, "id": file, "metadata": {"source": source, "file": file}}, None


def read_table_rows(rows: Iterator[dict], columns: list[str], text_key: str, file: str, source: str,
                    max_bytes: int) -> Iterator[Outcome]:
    """Rows of a table (parquet, a Hugging Face dataset); a missing text column is one issue for the table."""
    if text_key not in columns:
        yield issue(file, f"missing_field '{text_key}' (no such column; columns: {', '.join(columns)})")
        return
    yield from _documents(rows, text_key, file, source, max_bytes)


def _documents(rows: Iterator[dict], text_key: str, file: str, source: str, max_bytes: int) -> Iterator[Outcome]:
    """Rows (of a JSON array, a table) as documents, each bad row quarantined with its number."""
    for number, row in enumerate(rows):
        text, bad = check_text(row, text_key, file, max_bytes, row=number)
        if bad:
            yield None, bad
            continue
        doc_id = row.get("id")
        doc_id = str(doc_id) if doc_id is not None else f"{Path(file).name}:{number}"
        yield {"text": text, "id": doc_id, "metadata": {"source": source, "file": file, "row": number}}, None


def read_parquet(path: Path, text_key: str, max_bytes: int, source: str, file: str) -> Iterator[Outcome]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        columns = table.schema_arrow.names
        wanted = [c for c in (text_key, "id") if c in columns]

        def rows() -> Iterator[dict]:
            for batch in table.iter_batches(batch_size=1024, columns=wanted):
                yield from batch.to_pylist()

        yield from read_table_rows(rows(), columns, text_key, file, source, max_bytes)
    except UNREADABLE + (_arrow_error(),) as err:
        yield unreadable(file, err)


def _arrow_error() -> type:
    import pyarrow

    return pyarrow.ArrowException


def read_source(spec: SourceSpec, text_key: str, max_line_bytes: int, embedded_file: Path) -> Iterator[Outcome]:
    """Every outcome of one source spec, file by file in sorted order."""
    key = spec.text_key or text_key
    if spec.type == "embedded":
        yield from read_jsonl(embedded_file, "text", max_line_bytes, "embedded", file_label="embedded")
    elif spec.type == "hf":
        from components.data.hf import read_hf

        yield from read_hf(spec, key, max_line_bytes)
    elif spec.type in ("warc", "html"):  # one extractor process for all the files of the source
        from components.data import web

        read_files = web.read_warc_files if spec.type == "warc" else web.read_html_files
        yield from read_files(expand_files(spec), spec.name, max_line_bytes)
    else:
        for path in expand_files(spec):
            yield from FILE_READERS[spec.type](path, spec, key, max_line_bytes)


FILE_READERS: dict[str, Callable[[Path, SourceSpec, str, int], Iterator[Outcome]]] = {
    "jsonl": lambda path, spec, key, max_bytes: read_jsonl(path, key, max_bytes, spec.name, str(path)),
    "parquet": lambda path, spec, key, max_bytes: read_parquet(path, key, max_bytes, spec.name, str(path)),
    "text": lambda path, spec, key, max_bytes: read_text(path, spec.name, max_bytes, str(path)),
}
