"""HTML main-text extraction quality on ../shared/samples/web, against hand-extracted article bodies.

    .venv/bin/python benchmarks/extraction_f1.py [--samples DIR]

For each of the 25 pages: token-level precision, recall and F1 of the extracted text
against the ground truth's articleBody (tokens: lowercased words, compared as bags),
for the data stage's extractor (datatrove's Trafilatura, favour_precision on: the
default) and for two references measured in the same run: Trafilatura with
favour_precision off, and all of the page's visible text (trafilatura's html2txt), the
baseline any extractor must beat on precision. Then the real Common Crawl WARC record
through the WARC reader (no ground truth: its url, date and text length).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's components, run as a script
from components.data.ingest.web import HtmlExtractor, decode_html, read_warc_files

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
WORD = re.compile(r"\w+", re.UNICODE)


def tokens(text: str) -> Counter:
    return Counter(WORD.findall(text.lower()))


def prf(predicted: str, truth: str) -> tuple[float, float, float]:
    pred, gold = tokens(predicted), tokens(truth)
    overlap = sum((pred & gold).values())
    p = overlap / max(1, sum(pred.values()))
    r = overlap / max(1, sum(gold.values()))
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def all_visible_text(html: str) -> str:
    from trafilatura import html2txt

    return html2txt(html) or ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=SAMPLES)
    web = parser.parse_args().samples / "web"
    truth = json.loads((web / "ground-truth.json").read_text())
    pages = {p.stem: decode_html(p.read_bytes(), None) for p in sorted((web / "html").glob("*.html"))}
    scores: dict[str, dict[str, tuple]] = {"precision (default)": {}, "recall-leaning": {}, "all visible text": {}}
    with HtmlExtractor(favour_precision=True) as precise, HtmlExtractor(favour_precision=False) as loose:
        for page_id, html in pages.items():
            gold = truth[page_id]["articleBody"]
            scores["precision (default)"][page_id] = prf(precise(html)[0] or "", gold)
            scores["recall-leaning"][page_id] = prf(loose(html)[0] or "", gold)
            scores["all visible text"][page_id] = prf(all_visible_text(html), gold)

    print(f"{'page':<14} {'P':>6} {'R':>6} {'F1':>6}   (Trafilatura, favour_precision=True: the data stage's default)")
    for page_id, (p, r, f) in scores["precision (default)"].items():
        print(f"{page_id[:12]:<14} {p:6.3f} {r:6.3f} {f:6.3f}")
    print(f"\n{'extractor':<22} {'P mean':>7} {'R mean':>7} {'F1 mean':>8} {'F1 median':>10}   over {len(pages)} pages")
    for name, per_page in scores.items():
        p, r, f = zip(*per_page.values())
        print(f"{name:<22} {statistics.mean(p):7.3f} {statistics.mean(r):7.3f} {statistics.mean(f):8.3f} {statistics.median(f):10.3f}")

    warc = web / "cc_whirlwind.warc.gz"
    print(f"\nWARC {warc.name}:")
    for doc, issue in read_warc_files([warc], "web", 10_000_000):
        if doc:
            meta = doc["metadata"]
            print(f"  document  record {meta['record']} {meta['url']} {meta['date']}: {len(doc['text'])} chars")
        else:
            print(f"  {'skipped' if issue.get('skip') else 'quarantined':<9} record {issue['record']}: {issue['reason']}")


if __name__ == "__main__":
    main()
