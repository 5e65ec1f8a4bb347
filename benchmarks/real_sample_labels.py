"""A small real labelled sample for benchmarks/data_quality.py, built from ../shared/samples (the
texts stay there; only our labels live here):

    .venv/bin/python benchmarks/real_sample_labels.py [--samples ../shared/samples] [--out outputs/data_quality_real.jsonl]

Sources (real public text): pretrain/ccnet_en_head-0091_dolma.jsonl (10 CCNet web documents) and
the 25 hand-extracted article bodies of web/ground-truth.json.
Labels were given by reading each document (helper `blocks`, issue 13), as a data engineer building an
English pretraining corpus: keep = coherent prose worth training on; drop = fragments, tables,
teasers, or not English (the default corpus is data.languages=[en]; the note says why).
PII: every email / phone / id value found by reading the text and by a loose regex scan for digit runs
and '@' (only one real PII value is present in these 35 documents: an author's email).
"""
import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CCNET_DROP = {1: "category page: three sentence fragments cut mid-sentence, then one unrelated paragraph"}
NEWS_DROP = {
    "042bb7b5": "paywall teaser: two short paragraphs (369 chars)",
    "0ec95c72": "not English (Korean)",
    "11ea381a": "not English (Portuguese) and a standings table",
    "20b2b649": "not English (Italian)",
    "21486419": "not English (Indonesian)",
    "23aaecd1": "not English (Portuguese)",
}
PII = {"0ec95c72": [{"type": "EMAIL", "value": "thekian1@entermedia.co.kr"}]}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--samples", type=Path, default=REPO.parent / "shared" / "samples")
parser.add_argument("--out", type=Path, default=REPO / "outputs" / "data_quality_real.jsonl")
args = parser.parse_args()
S = args.samples
rows = []
for i, line in enumerate((S / "pretrain" / "ccnet_en_head-0091_dolma.jsonl").read_text().splitlines()):
    d = json.loads(line)
    rows.append({"id": d["id"], "text": d["text"], "keep": i not in CCNET_DROP, "note": CCNET_DROP.get(i, "prose"),
                 "pii": [], "url": d["metadata"].get("url"), "source": "ccnet"})
for key, v in json.loads((S / "web" / "ground-truth.json").read_text()).items():
    short = key[:8]
    rows.append({"id": key, "text": v["articleBody"], "keep": short not in NEWS_DROP,
                 "note": NEWS_DROP.get(short, "news article"), "pii": PII.get(short, []), "url": v["url"],
                 "source": "web ground truth"})
args.out.parent.mkdir(parents=True, exist_ok=True)
args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
print(args.out, len(rows), "documents,", sum(not r["keep"] for r in rows), "labelled drop")
