"""JSON lines (optionally gzipped); a .json file holding one JSON array is read as its elements."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from components.data.ingest.records import (UNREADABLE, WHOLE, Outcome, RowFields, Stripe, as_fields, check_text, issue,
                                            open_binary, row_document, rows_as_documents, unreadable)


def read_jsonl(path: Path, fields: RowFields | str, max_line_bytes: int, source_name: str | None = None,
               file_label: str | None = None, stripe: Stripe = WHOLE) -> Iterator[Outcome]:
    """Lines outside `stripe` are skipped unparsed (another task owns them). `fields`: the text key, or
    which fields a document keeps (components/data/ingest/fields.py)."""
    file, fields = file_label or str(path), as_fields(fields)
    number = 0
    try:
        with open_binary(path) as handle:
            head = handle.read(64).lstrip()
            handle.seek(0)
            if path.name.lower().endswith((".json", ".json.gz")) and head.startswith(b"["):
                yield from _read_json_array(handle.read(), file, fields, max_line_bytes, source_name, stripe)
                return
            for number, raw in enumerate(handle, 1):
                if not stripe.owns(number - 1) or not raw.strip():
                    continue
                yield _line_outcome(raw, number, path, file, fields, max_line_bytes, source_name)
    except UNREADABLE as err:
        if stripe.owns(number):  # the record after the last one read: reported once, by its stripe
            yield unreadable(file, err, line=number + 1)


def _line_outcome(raw: bytes, number: int, path: Path, file: str, fields: RowFields, max_line_bytes: int,
                  source_name: str | None) -> Outcome:
    if len(raw) > max_line_bytes:
        return issue(file, f"line_too_long ({len(raw)} bytes > data.max_line_bytes)", line=number)
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return issue(file, "invalid_utf8", line=number)
    except json.JSONDecodeError as err:
        return issue(file, f"invalid_json ({err.msg})", line=number)
    text, bad = check_text(row, fields.text_key, file, max_line_bytes, line=number)
    if bad:
        return None, bad
    return row_document(row, fields, text, f"{path.name}:{number}", source=source_name or str(path), file=file, line=number)


def _read_json_array(blob: bytes, file: str, fields: RowFields, max_bytes: int, source: str | None,
                     stripe: Stripe) -> Iterator[Outcome]:
    try:
        rows = json.loads(blob.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = blob[:err.start].count(b"\n") + 1
        if stripe.owns(line - 1):
            yield issue(file, f"invalid_utf8 (byte {err.start})", line=line)
        return
    except json.JSONDecodeError as err:
        if stripe.owns(err.lineno - 1):
            yield issue(file, f"invalid_json ({err.msg})", line=err.lineno)
        return
    yield from rows_as_documents(rows, fields, file, source or file, max_bytes, stripe)
