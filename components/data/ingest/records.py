"""What a reader yields: every record becomes a document or an issue, never nothing.

A reader yields (document, None) or (None, issue). A document is
{id, text, metadata{source, file, line | row | record, url, date ...}}. An issue is
{file, line | row | record, reason} and goes to the quarantine, or, with
`"skip": True`, marks a record that is not a document at all (a WARC request, an
image): counted by reason, not quarantined. Reasons start with a code
(invalid_json, invalid_utf8, missing_field, ...) followed by details.

Numbering: `line` counts from 1 (text lines), `row` and `record` from 0 (table rows,
WARC records). HTML files are one document per file (a page); plain text files too by
default (a chapter, a README), or, by the source's `mode`, one per line, paragraphs or
chunks (components/data/ingest/text.py). Which record fields a document keeps besides
its text: components/data/ingest/fields.py.
"""
from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

# re-exported: the format readers import records.py only (no cycles among siblings)
from components.data.ingest.fields import DEFAULT_CHUNK_CHARS, RowFields, as_fields, row_id, row_metadata  # noqa: F401

Outcome = tuple[dict | None, dict | None]
UNREADABLE = (OSError, EOFError, zlib.error)  # permission, missing, corrupt gzip (BadGzipFile is an OSError)
WHERE_KEYS = ("line", "row", "record")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds one only when decoded from an escape (JSON) or surrogateescape


class InputError(ValueError):
    """A bad record under data.strict: the message names file, line and field. Raised inside a datatrove
    task, passed up unchanged by the stage (it is the user's answer, not a pipeline failure)."""


@dataclass(frozen=True)
class Stripe:
    """Records i with i % count == index (0-based record positions): how several tasks share one big file."""
    index: int = 0
    count: int = 1

    def owns(self, position: int | None) -> bool:
        """position: 0-based; None (a whole-file document or issue) belongs to stripe 0."""
        return (0 if position is None else position) % self.count == self.index


WHOLE = Stripe()


def position(where: dict) -> int | None:
    """The 0-based record position of an issue or a document's metadata (lines count from 1)."""
    if where.get("line") is not None:
        return where["line"] - 1
    for key in ("row", "record"):
        if where.get(key) is not None:
            return where[key]
    return None


def owned(outcomes: Iterable[Outcome], stripe: Stripe) -> Iterator[Outcome]:
    """The outcomes of one stripe: each record's document or issue is yielded by exactly one stripe."""
    for doc, bad in outcomes:
        if stripe.owns(position(bad if doc is None else doc["metadata"])):
            yield doc, bad


def issue(file: str, reason: str, **where) -> tuple[None, dict]:
    return None, {"file": file, **where, "reason": reason}


def unreadable(file: str, err: BaseException, **where) -> tuple[None, dict]:
    return issue(file, f"unreadable_file ({type(err).__name__}: {err})", **where)


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def text_bytes(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def check_text(record, text_key: str, file: str, max_bytes: int, **where) -> tuple[str | None, dict | None]:
    """(text, None) when record[text_key] is a non-empty string of at most max_bytes, else (None, issue)."""
    if not isinstance(record, dict) or text_key not in record:
        return issue(file, f"missing_field '{text_key}'", **where)
    text = record[text_key]
    if not isinstance(text, str):
        return issue(file, f"non_string_field '{text_key}' ({type(text).__name__})", **where)
    if not text.strip():
        return issue(file, f"empty_field '{text_key}'", **where)
    surrogate = LONE_SURROGATE.search(text)
    if surrogate:  # valid JSON ("\\ud800"), but no UTF-8 writer or tokenizer takes it
        return issue(file, f"invalid_unicode (lone surrogate U+{ord(surrogate.group()):04X} at character "
                           f"{surrogate.start()} of '{text_key}')", **where)
    size = text_bytes(text)
    if size > max_bytes:
        return issue(file, f"text_too_long ({size} bytes > data.max_line_bytes)", **where)
    return text, None


def row_document(record: dict, fields: RowFields, text: str, fallback_id: str, **where) -> Outcome:
    """The document of a valid row: its id (fields.id_key, `id`, or `fallback_id`) and metadata
    (url, date, declared fields; then the pipeline's own source, file and position)."""
    doc_id, reason = row_id(record, fields, fallback_id)
    if reason:
        return issue(where["file"], reason, **{k: v for k, v in where.items() if k in WHERE_KEYS})
    return {"text": text, "id": doc_id, "metadata": {**row_metadata(record, fields), **where}}, None


def rows_as_documents(rows: Iterable[dict], fields: RowFields | str, file: str, source: str, max_bytes: int,
                      stripe: Stripe = WHOLE) -> Iterator[Outcome]:
    """Rows (of a JSON array, a table) as documents, each bad row quarantined with its number."""
    fields = as_fields(fields)
    for number, row in enumerate(rows):
        if not stripe.owns(number):
            continue
        text, bad = check_text(row, fields.text_key, file, max_bytes, row=number)
        if bad:
            yield None, bad
            continue
        yield row_document(row, fields, text, f"{Path(file).name}:{number}", source=source, file=file, row=number)


def read_table_rows(rows: Iterable[dict], columns: list[str], fields: RowFields | str, file: str, source: str,
                    max_bytes: int, stripe: Stripe = WHOLE) -> Iterator[Outcome]:
    """Rows of a table (parquet, a Hugging Face dataset); a missing text column is one issue for the table."""
    text_key = as_fields(fields).text_key
    if text_key not in columns:
        yield issue(file, f"missing_field '{text_key}' (no such column; columns: {', '.join(columns)})")
        return
    yield from rows_as_documents(rows, fields, file, source, max_bytes, stripe)
