"""Plain text files (.txt, .md, optionally gzipped), made into documents by the source's `mode`:

    file       one document per file (a chapter, a README); a bad line quarantines the whole file
    line       one document per non-empty line (Wikipedia dumps: an article a line)
    paragraph  paragraphs (split on blank lines) grouped in file order up to chunk_chars; a longer
               paragraph stays whole
    chunk      the same, but a paragraph longer than chunk_chars is cut at sentence ends (else at a
               space) into pieces of at most chunk_chars: a 1 MB book becomes ~270 documents of
               ~4000 characters, not one document the length rules drop

In the line, paragraph and chunk modes a document's id is `<file>@<byte offset>` of its first
character (stable while the file is), its metadata has that `offset` and its first `line`; a bad
line (invalid UTF-8, longer than data.max_line_bytes) is quarantined alone and ends a paragraph.
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from components.data.ingest.records import (DEFAULT_CHUNK_CHARS, UNREADABLE, WHOLE, Outcome, Stripe, issue, open_binary,
                                            unreadable)

SENTENCE_END = re.compile(r"(?<=[.!?\u2026\u3002])[\"'\u201d\u2019)\]]*\s+")  # where a sentence may end


@dataclass(frozen=True)
class Piece:
    """Text from the file: its first line (from 1), its byte offset, the text."""
    line: int
    offset: int
    text: str


def read_text(path: Path, source: str, max_line_bytes: int, file: str, mode: str = "file",
              chunk_chars: int = DEFAULT_CHUNK_CHARS, stripe: Stripe = WHOLE) -> Iterator[Outcome]:
    """`stripe`: in line mode, the lines another task owns are not decoded (the other modes need them all)."""
    if mode == "file":
        yield from _read_whole(path, source, max_line_bytes, file)
        return
    lines = _lines(path, file, max_line_bytes, stripe if mode == "line" else WHOLE)
    if mode == "line":
        pieces = (p for p in lines if isinstance(p, tuple) or p.text.strip())
    else:
        pieces = _grouped(_paragraphs(lines, max_line_bytes), chunk_chars, split_long=mode == "chunk")
    for piece in pieces:
        if isinstance(piece, tuple):  # an issue
            yield piece
            continue
        text = piece.text.rstrip("\r\n") if mode == "line" else piece.text
        yield {"text": text, "id": f"{file}@{piece.offset}",
               "metadata": {"source": source, "file": file, "line": piece.line, "offset": piece.offset}}, None


def _read_whole(path: Path, source: str, max_line_bytes: int, file: str) -> Iterator[Outcome]:
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


def _lines(path: Path, file: str, max_line_bytes: int, stripe: Stripe = WHOLE) -> Iterator[Piece | tuple]:
    """Each line (of the stripe) as a Piece, or the issue of a bad line; a read error (a truncated .gz)
    ends the file."""
    number, offset = 0, 0
    try:
        with open_binary(path) as handle:
            for number, raw in enumerate(handle, 1):
                start, offset = offset, offset + len(raw)
                if not stripe.owns(number - 1):
                    continue
                if len(raw) > max_line_bytes:
                    yield issue(file, f"line_too_long ({len(raw)} bytes > data.max_line_bytes)", line=number)
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    yield issue(file, f"invalid_utf8 (byte {start + err.start})", line=number)
                    continue
                if start == 0 and text.startswith("\ufeff"):  # a byte-order mark is no text
                    text, start = text[1:], 3
                yield Piece(number, start, text)
    except UNREADABLE as err:
        yield unreadable(file, err, line=number + 1)


def _paragraphs(lines: Iterator[Piece | tuple], max_chars: int) -> Iterator[Piece | tuple]:
    """Runs of non-blank lines (their line ends kept inside, the last one dropped); issues pass. A run
    is also ended at a line end once over `max_chars` (data.max_line_bytes): a file with no blank
    line is not held in memory whole."""
    run: list[Piece] = []
    size = 0

    def flush() -> Iterator[Piece]:
        if run:
            yield Piece(run[0].line, run[0].offset, "".join(p.text for p in run).rstrip())
            run.clear()

    for line in lines:
        if isinstance(line, tuple) or not line.text.strip():
            yield from flush()
            if isinstance(line, tuple):
                yield line
            continue
        size = len(line.text) + (size if run else 0)
        run.append(line)
        if size > max_chars:
            yield from flush()
    yield from flush()


def _grouped(paragraphs: Iterator[Piece | tuple], limit: int, split_long: bool) -> Iterator[Piece | tuple]:
    """Consecutive paragraphs joined by a blank line while the document stays within `limit` characters."""
    group: list[Piece] = []
    size = 0

    def flush() -> Iterator[Piece]:
        if group:
            yield Piece(group[0].line, group[0].offset, "\n\n".join(p.text for p in group))
            group.clear()

    for paragraph in paragraphs:
        if isinstance(paragraph, tuple):
            yield paragraph
            continue
        room = limit - size - 2 if group else limit
        if split_long and len(paragraph.text) > limit:  # its first piece fills the room left, if that is not small
            pieces = cut(paragraph, limit, room if room >= limit // 4 else limit)
        else:
            pieces = [paragraph]
        for piece in pieces:
            if group and size + 2 + len(piece.text) > limit:
                yield from flush()
            size = len(piece.text) if not group else size + 2 + len(piece.text)
            group.append(piece)
    yield from flush()


def cut(paragraph: Piece, limit: int, first: int | None = None) -> list[Piece]:
    """A long paragraph in pieces of at most `limit` characters (the first at most `first`), each ending
    at the last sentence end in its second half, else at the last space, else at its size (a run
    with no space at all)."""
    text, bounds, start, size = paragraph.text, [], 0, first or limit
    ends = [m.end() for m in SENTENCE_END.finditer(text)]
    while len(text) - start > size:
        window = start + size
        best = max((e for e in ends[bisect.bisect_left(ends, start + size // 2):bisect.bisect_right(ends, window)]),
                   default=None)
        if best is None:
            space = text.rfind(" ", start + 1, window + 1)
            best = space + 1 if space > start else window
        bounds.append((start, best))
        start, size = best, limit
        while start < len(text) and text[start].isspace():
            start += 1
    if start < len(text):
        bounds.append((start, len(text)))
    return [p for p in _pieces(paragraph, bounds) if p.text]


def _pieces(paragraph: Piece, bounds: list[tuple[int, int]]) -> Iterator[Piece]:
    """The pieces text[start:end] with their line and byte offset, counted on from the previous piece."""
    line, offset, done = paragraph.line, paragraph.offset, 0
    for start, end in bounds:
        skipped = paragraph.text[done:start]
        line, offset = line + skipped.count("\n"), offset + len(skipped.encode("utf-8", errors="surrogatepass"))
        piece = paragraph.text[start:end]
        yield Piece(line, offset, piece.rstrip())
        line, offset, done = line + piece.count("\n"), offset + len(piece.encode("utf-8", errors="surrogatepass")), end
