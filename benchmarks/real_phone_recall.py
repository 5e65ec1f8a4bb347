"""Phone-number recall of the PII block on the real samples in ../shared/samples, labelled by hand:

    .venv/bin/python -m benchmarks.real_phone_recall [--samples ../shared/samples]   # ~2 s

Every digit span of 7-15 digits in the visible text (tags, scripts and styles removed) of the 25 raw news
pages, the Common Crawl WARC's response, the StackExchange, HH-RLHF, Alpaca, LIMA and CCNet samples was
read in its context (helper h13, issue 13). Three are phone numbers, all in raw HTML (none survives into
the hand-extracted article bodies, and the other samples hold none): a US office line and fax in a
footer, and an Indonesian mobile number in a classified ad. The rest are years, dates, timestamps, ids,
a bank account and hit counters. Prints recall (labelled phones replaced) and the PHONE spans that are no
labelled phone (false positives), with the default regions and with Indonesia added.
"""
from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

from components.data.pii import PHONE_REGIONS, PhoneRules, find_pii

REPO = Path(__file__).resolve().parents[1]
# page (first 8 hex digits of web/html/<sha256>.html) -> the phone numbers in its visible text
PHONES = {"156770d6": ["202-628-8500", "202-628-8503"],  # thehill.com footer: "... 20006 | 202-628-8500 tel | 202-628-8503 fax"
          "21486419": ["085920594986"]}  # Indonesian blog sidebar: "Jual Beli Sepeda Motor EVA 085920594986" (0859: a mobile prefix)


def visible_text(raw: str) -> str:
    raw = re.sub(r"(?is)<(script|style)[^>]*>.*?</\1>", " ", raw)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", raw)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=Path, default=REPO.parent / "shared" / "samples")
    args = parser.parse_args()
    pages = sorted((args.samples / "web" / "html").glob("*.html"))
    for regions in (PHONE_REGIONS, (*PHONE_REGIONS, "ID")):
        rules, found, false_positives = PhoneRules(regions=tuple(regions)), 0, []
        for page in pages:
            text = visible_text(page.read_text(errors="replace"))
            spans = {text[s:e] for s, e, kind in find_pii(text, phones=rules) if kind == "PHONE"}
            labelled = PHONES.get(page.name[:8], [])
            found += sum(any(phone in span for span in spans) for phone in labelled)
            false_positives += [(page.name[:8], s) for s in spans if not any(p in s for p in labelled)]
        total = sum(len(v) for v in PHONES.values())
        print(f"regions {','.join(regions)}: recall {found}/{total} = {found / total:.2f}, "
              f"false positives {len(false_positives)} {false_positives}")


if __name__ == "__main__":
    main()
