"""How right the data blocks decide, on a labelled jsonl of yours: precision and recall of each block's drops, PII recall by type.

    .venv/bin/python benchmarks/data_quality.py LABELLED.jsonl [--set gopher_alpha_words=tokens ...]

Each line of LABELLED.jsonl is one document:
    {"text": "...", "keep": true, "pii": [{"type": "PHONE", "value": "(02) 9876 5432"}, ...]}
`keep` (bool): would a data engineer keep it for pretraining. `pii` (optional): every PII value the
text holds, typed as the scrubber types them (EMAIL, IP, PHONE, CREDIT_CARD, SSN, IBAN, SECRET); a
document without the field is left out of the PII table. Other fields (id, url, metadata) are kept
and `metadata.url` feeds the URL blocklist when one is configured.

Every quality block of the data stage's config (DataConfig, changed by --set key=value with YAML
values) judges every document on its own, and then all of them in pipeline order (C4's line removal
feeds FineWeb, as in the stage). A drop is "right" when the label says drop: precision = right drops /
drops, recall = right drops / labelled drops. Dedup blocks need a corpus, not a label, and are not
scored here. PII: a labelled value is found when a span of its type covers one of its occurrences;
spans of a type that cover no labelled value are counted as false positives.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's components, run as a script
from components.data.config import DataConfig
from components.data.pii import PII_TYPES, PhoneRules, find_pii


@dataclass
class Labelled:
    text: str
    keep: bool
    pii: list[dict] | None
    metadata: dict = field(default_factory=dict)
    id: str = ""


def read_labelled(path: Path) -> list[Labelled]:
    """The labelled documents; a bad line is an error naming file, line and field."""
    docs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"{path}:{number}: not JSON ({err})")
        where = f"{path}:{number}"
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise SystemExit(f"{where}: field 'text' must be a string")
        if not isinstance(row.get("keep"), bool):
            raise SystemExit(f"{where}: field 'keep' must be true or false (got {row.get('keep')!r})")
        pii = row.get("pii")
        if pii is not None and not (isinstance(pii, list) and all(
                isinstance(p, dict) and p.get("type") in PII_TYPES and isinstance(p.get("value"), str) for p in pii)):
            raise SystemExit(f"{where}: field 'pii' must be a list of {{type: one of {', '.join(PII_TYPES)}, value: str}}")
        metadata = dict(row.get("metadata") or {})
        if row.get("url") and "url" not in metadata:
            metadata["url"] = row["url"]
        docs.append(Labelled(row["text"], row["keep"], pii, metadata, str(row.get("id", f"line {number}"))))
    if not docs:
        raise SystemExit(f"{path}: no labelled document")
    return docs


def parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set {pair!r}: write key=value, e.g. --set gopher_alpha_words=tokens")
        out[key.removeprefix("data.")] = yaml.safe_load(value)
    return out


def block_verdicts(cfg: DataConfig, docs: list[Labelled]) -> dict[str, list[str | None]]:
    """block -> the drop reason (None: kept) of every document, each block alone, then the chain."""
    from datatrove.data import Document

    from components.data.pipelines import quality_blocks

    blocks = quality_blocks(cfg, lambda block: None)

    def judge(block, doc: Document) -> str | None:
        verdict = block.filter(doc)
        if verdict is True or verdict == (True, None):
            return None
        return verdict[1] if isinstance(verdict, tuple) else "dropped"

    verdicts: dict[str, list[str | None]] = {name: [] for name, _ in blocks}
    verdicts["all (pipeline order)"] = []
    for i, labelled in enumerate(docs):
        for name, block in blocks:
            verdicts[name].append(judge(block, Document(text=labelled.text, id=str(i), metadata=dict(labelled.metadata))))
        chained, reason = Document(text=labelled.text, id=str(i), metadata=dict(labelled.metadata)), None
        for name, block in blocks:  # C4 rewrites chained.text in place, as in the stage
            reason = judge(block, chained)
            if reason is not None:
                reason = f"{name}: {reason}"
                break
        verdicts["all (pipeline order)"].append(reason)
    return verdicts


def drop_table(docs: list[Labelled], verdicts: dict[str, list[str | None]]) -> list[str]:
    should_drop = sum(not d.keep for d in docs)
    rows = [f"{'block':<24} {'drops':>6} {'right':>6} {'precision':>10} {'recall':>7}   wrong drops (reasons)"]
    for name, reasons in verdicts.items():
        drops = [(d, r) for d, r in zip(docs, reasons) if r is not None]
        right = sum(not d.keep for d, _ in drops)
        precision = f"{right / len(drops):.3f}" if drops else "-"
        recall = f"{right / should_drop:.3f}" if should_drop else "-"
        wrong = Counter(r for d, r in drops if d.keep)
        rows.append(f"{name:<24} {len(drops):>6} {right:>6} {precision:>10} {recall:>7}   "
                    + ", ".join(f"{r} x{n}" for r, n in wrong.most_common()))
    return rows


def pii_table(cfg: DataConfig, docs: list[Labelled]) -> list[str]:
    phones = PhoneRules(tuple(r.upper() for r in cfg.pii_phone_regions), cfg.pii_phone_leniency)
    labelled, found, false_pos = Counter(), Counter(), Counter()
    missed: list[str] = []
    for doc in (d for d in docs if d.pii is not None):
        spans = find_pii(doc.text, cfg.pii_keep_private_ips, phones)
        used = set()
        for item in doc.pii:
            kind, value = item["type"], item["value"]
            labelled[kind] += 1
            starts = [i for i in range(len(doc.text)) if doc.text.startswith(value, i)]
            hit = next((s for s in spans if s[2] == kind and any(s[0] <= i and i + len(value) <= s[1] for i in starts)), None)
            if hit:
                found[kind] += 1
                used.add(hit)
            else:
                missed.append(f"{kind} {value!r}")
        false_pos.update(kind for s in spans if s not in used for kind in [s[2]])
    rows = [f"{'PII type':<12} {'labelled':>8} {'found':>6} {'recall':>7} {'false pos':>10}"]
    for kind in PII_TYPES:
        if labelled[kind] or false_pos[kind]:
            recall = f"{found[kind] / labelled[kind]:.3f}" if labelled[kind] else "-"
            rows.append(f"{kind:<12} {labelled[kind]:>8} {found[kind]:>6} {recall:>7} {false_pos[kind]:>10}")
    return rows + [f"missed: {m}" for m in missed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("labelled", type=Path, help="jsonl: text, keep, [pii]")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="data.* options, e.g. gopher_alpha_words=tokens")
    parser.add_argument("--show", action="store_true", help="list every document the pipeline decides against its label")
    args = parser.parse_args()
    cfg = DataConfig(**parse_overrides(args.set))
    docs = read_labelled(args.labelled)
    print(f"{args.labelled}: {len(docs)} documents, {sum(not d.keep for d in docs)} labelled drop, "
          f"{sum(d.pii is not None for d in docs)} with PII labels")
    verdicts = block_verdicts(cfg, docs)
    print("\n".join(drop_table(docs, verdicts)))
    if args.show:
        for doc, reason in zip(docs, verdicts["all (pipeline order)"]):
            if (reason is None) != doc.keep:
                print(f"  labelled {'keep' if doc.keep else 'drop'}, {'dropped by ' + reason if reason else 'kept'}: {doc.id}")
    print()
    print("\n".join(pii_table(cfg, docs)))


if __name__ == "__main__":
    main()
