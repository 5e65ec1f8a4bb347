"""Web sources: WARC captures (Common Crawl) and HTML files -> plain text with datatrove's
Trafilatura extractor, run in datatrove's sandbox process (a per-page timeout, and a
crash on a pathological page costs that page, not the run), inside the first pass's tasks.

A WARC file holds requests, responses and metadata records; only HTML responses (and
WET "conversion" records, already text) are documents. The others are skips counted by
reason. An HTML page whose extraction fails or yields nothing is quarantined with its
record number, URL and reason.

Extraction is a pure function of the page: trafilatura runs with ``deduplicate=False`` (datatrove's
default, True, keeps a cache of seen text segments in the extractor process, so a page's output
depended on the pages before it: 3 of 40 real pages changed when re-extracted, one came out empty).
Near-duplicate pages are MinHash's job, later. Raw HTML has its own size limit (data.max_html_bytes,
pages carry markup and scripts); the extracted text is held to data.max_line_bytes like any text.
"""
from __future__ import annotations

import contextlib
import gzip
import zlib
from pathlib import Path
from typing import Iterator

from components.data.ingest.records import UNREADABLE, WHOLE, Outcome, Stripe, issue, text_bytes, unreadable

HTML_TYPES = ("text/html", "application/xhtml+xml")
# A safety net against pathological pages, not a filter: generous, so that which pages
# are kept does not depend on how loaded the machine is.
EXTRACTION_TIMEOUT_S = 30.0
MAX_HTML_BYTES = 8 << 20  # data.max_html_bytes' default: real news pages pass 1 MB


class HtmlExtractor:
    """`with HtmlExtractor() as ex: text, reason = ex(html)`; text is None when extraction failed."""

    def __init__(self, favour_precision: bool = True, timeout: float = EXTRACTION_TIMEOUT_S,
                 max_html_bytes: int = MAX_HTML_BYTES):
        from datatrove.pipeline.extractors import Trafilatura

        self.extractor = Trafilatura(favour_precision=favour_precision, timeout=timeout, deduplicate=False)
        self.timeout, self.max_html_bytes = timeout, max_html_bytes

    def __enter__(self) -> "HtmlExtractor":
        from datatrove.pipeline.extractors.base import ExtractorSandbox
        from datatrove.utils.logging import logger

        logger.disable("datatrove.pipeline.extractors")  # process bookkeeping at INFO; left off (extractors nest)
        self.sandbox = ExtractorSandbox(timeout=self.timeout)
        return self

    def __exit__(self, *exc) -> None:
        self.sandbox.__exit__(*exc)

    def __call__(self, html: str) -> tuple[str | None, str | None]:
        try:
            text = self.sandbox.process_document(html, self.extractor.extract)
        except TimeoutError:
            return None, f"extraction_timeout (> {self.timeout:g} s)"
        except EOFError:
            return None, "extraction_crashed (the extractor process died)"
        except Exception as err:  # trafilatura / lxml errors on a broken page
            return None, f"extraction_failed ({type(err).__name__}: {err})"
        if not text or not text.strip():
            return None, "extraction_empty (no main text found)"
        return text, None


def decode_html(payload: bytes, content_type: str | None) -> str | None:
    """The declared charset, then UTF-8, then a detected one; None if nothing decodes."""
    declared = None
    if content_type and "charset=" in content_type.lower():
        declared = content_type.lower().split("charset=")[-1].split(";")[0].strip(" \"'")
    for charset in dict.fromkeys(c for c in (declared, "utf-8") if c):
        with contextlib.suppress(UnicodeDecodeError, LookupError):
            return payload.decode(charset)
    import cchardet

    detected = cchardet.detect(payload).get("encoding")
    with contextlib.suppress(UnicodeDecodeError, LookupError, TypeError):
        return payload.decode(detected)
    return None


def _payload_type(record) -> str:
    identified = record.rec_headers.get_header("WARC-Identified-Payload-Type")
    if identified:
        return identified.lower()
    declared = record.http_headers.get_header("Content-Type") if record.http_headers else None
    return (declared or "unknown").split(";")[0].strip().lower()


def read_warc_files(paths: list[Path], source: str, max_bytes: int, favour_precision: bool = True,
                    max_html_bytes: int = MAX_HTML_BYTES) -> Iterator[Outcome]:
    with HtmlExtractor(favour_precision, max_html_bytes=max_html_bytes) as extract:
        for path in paths:
            yield from read_warc(path, source, max_bytes, str(path), extract)


def read_warc(path: Path, source: str, max_bytes: int, file: str, extract: HtmlExtractor,
              stripe: Stripe = WHOLE) -> Iterator[Outcome]:
    """warcio stops quietly at a truncated gzip and reads any text as old-style ARC records:
    both are checked here, so a damaged file is reported, not silently short. Records outside
    `stripe` are passed over without extraction (another task owns them); each issue is
    reported by the stripe owning its record number."""
    from warcio.archiveiterator import ArchiveIterator

    number = -1
    try:
        with open(path, "rb") as handle:
            for number, record in enumerate(ArchiveIterator(handle)):
                if record.format != "warc":
                    if stripe.owns(number):
                        yield issue(file, f"not_warc (record parsed as {record.format}: not a WARC file)", record=number)
                    return
                if stripe.owns(number):
                    yield _warc_outcome(record, number, extract, source, max_bytes, file)
        damage = gzip_damage(path) if stripe.owns(number + 1) else None
        if damage:
            yield issue(file, f"unreadable_file (truncated or corrupt gzip, {damage}: records from {number + 1} on are lost)", record=number + 1)
    except UNREADABLE + (_archive_error(),) as err:
        if stripe.owns(number + 1):
            yield unreadable(file, err, record=number + 1)


def gzip_damage(path: Path) -> str | None:
    """None if a .gz file decompresses to its end, else the error (a truncated download)."""
    if path.suffix != ".gz":
        return None
    try:
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass
    except (OSError, EOFError, zlib.error) as err:
        return f"{type(err).__name__}: {err}"
    return None


def _archive_error() -> type:
    from warcio.recordloader import ArchiveLoadFailed

    return ArchiveLoadFailed


def _warc_outcome(record, number: int, extract: HtmlExtractor, source: str, max_bytes: int, file: str) -> Outcome:
    headers = record.rec_headers
    url, date = headers.get_header("WARC-Target-URI"), headers.get_header("WARC-Date")
    where = {"record": number, "url": url}
    if record.rec_type not in ("response", "conversion"):
        return None, {"file": file, **where, "reason": f"not_a_page (WARC {record.rec_type} record)", "skip": True}
    payload_type = _payload_type(record)
    is_text = record.rec_type == "conversion" and payload_type in ("text/plain", "unknown")
    if payload_type not in HTML_TYPES and not is_text:
        return None, {"file": file, **where, "reason": f"not_html ({payload_type})", "skip": True}
    payload = record.content_stream().read()
    if len(payload) > extract.max_html_bytes:
        return issue(file, f"page_too_long ({len(payload)} bytes > data.max_html_bytes)", **where)
    content_type = record.http_headers.get_header("Content-Type") if record.http_headers else None
    html = decode_html(payload, content_type)
    if html is None:
        return issue(file, "undecodable (no charset decodes the page)", **where)
    text, reason = (html, None) if is_text else extract(html)
    if text is None:
        return issue(file, reason, **where)
    if text_bytes(text) > max_bytes:
        return issue(file, f"text_too_long ({text_bytes(text)} bytes > data.max_line_bytes)", **where)
    doc_id = headers.get_header("WARC-Record-ID") or f"{Path(file).name}:{number}"
    return {"text": text, "id": doc_id,
            "metadata": {"source": source, "file": file, "record": number, "url": url, "date": date}}, None


def read_html_files(paths: list[Path], source: str, max_bytes: int, favour_precision: bool = True,
                    max_html_bytes: int = MAX_HTML_BYTES) -> Iterator[Outcome]:
    """One local HTML page per file (saved pages, a mirror)."""
    with HtmlExtractor(favour_precision, max_html_bytes=max_html_bytes) as extract:
        for path in paths:
            yield read_html(path, source, max_bytes, str(path), extract)


def read_html(path: Path, source: str, max_bytes: int, file: str, extract: HtmlExtractor) -> Outcome:
    try:
        payload = path.read_bytes()
    except UNREADABLE as err:
        return unreadable(file, err)
    if len(payload) > extract.max_html_bytes:
        return issue(file, f"page_too_long ({len(payload)} bytes > data.max_html_bytes)")
    html = decode_html(payload, None)
    if html is None:
        return issue(file, "undecodable (no charset decodes the page)")
    text, reason = extract(html)
    if text is None:
        return issue(file, reason)
    if text_bytes(text) > max_bytes:
        return issue(file, f"text_too_long ({text_bytes(text)} bytes > data.max_line_bytes)")
    return {"text": text, "id": file, "metadata": {"source": source, "file": file}}, None
