"""Plain text files (.txt, .md, optionally gzipped): one document per file."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from components.data.ingest.records import UNREADABLE, Outcome, issue, open_binary, unreadable


def read_text(path: Path, source: str, max_line_bytes: int, file: str) -> Iterator[Outcome]:
    """The file is quarantined whole if a line is invalid UTF-8 or too long."""
    try:
        with open_binary(path) as handle:
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
