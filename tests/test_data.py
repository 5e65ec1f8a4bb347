"""Data stage: quarantine, PII scrubbing, planted contamination removed, determinism, real samples."""
import gzip
import json

import pytest

from components.context import StageContext
from components.data.blocks import PIIScrubber, normalise
from components.data.pii import find_pii
from components.data.config import DataConfig
from components.data.ingest.jsonl import read_jsonl
from components.data.pipelines import COUNTED_BLOCKS, DROPPING_BLOCKS, rejected_dir
from components.data.run import run


def _lines(path):
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as f:
        return [json.loads(l) for l in f]


def test_bad_lines_are_quarantined_with_file_line_and_reason(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([
        json.dumps({"text": "fine document"}),
        '{"text": "broken',
        json.dumps({"body": "no text field"}),
        json.dumps({"text": ""}),
        json.dumps({"text": 42}),
    ]) + "\n")
    results = list(read_jsonl(src, "text", 1_000_000))
    good = [d for d, bad in results if d]
    bad = [b for d, b in results if b]
    assert [d["text"] for d in good] == ["fine document"]
    assert [(b["line"], b["reason"].split(" ")[0]) for b in bad] == [
        (2, "invalid_json"), (3, "missing_field"), (4, "empty_field"), (5, "non_string_field")]
    assert all(b["file"] == str(src) for b in bad)


def test_custom_text_key_and_long_lines(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"content": "hello there"}) + "\n" + json.dumps({"content": "x" * 500}) + "\n")
    results = list(read_jsonl(src, "content", 200))
    assert results[0][0]["text"] == "hello there"
    assert results[1][1]["reason"].startswith("line_too_long")


@pytest.mark.parametrize("text, expected", [
    ("mail alice.smith@example.org now", "mail <EMAIL> now"),
    ("server at 203.0.113.7 answered", "server at <IP> answered"),
    ("call +1 415 555 0199 today", "call <PHONE> today"),
    ("call (415) 555-0199 today", "call <PHONE> today"),
    ("call 415-555-0199 today", "call <PHONE> today"),
    ("ring +44 20 7946 0958 now", "ring <PHONE> now"),
    ("card 4111 1111 1111 1111 used", "card <CREDIT_CARD> used"),
    ("SSN 123-45-6789 on file", "SSN <SSN> on file"),
    ("pay DE89 3704 0044 0532 0130 00 soon", "pay <IBAN> soon"),
    ("export AWS_KEY=AKIAIOSFODNN7EXAMPLE", "export AWS_KEY=<SECRET>"),
])
def test_pii_is_replaced_with_typed_placeholders(text, expected):
    assert PIIScrubber().format(text) == expected


@pytest.mark.parametrize("text", [
    "Python 3.11.2 was released", "on 2024-01-15 at 10:30:00", "order id 48213977 shipped",
    "see section 4.2.1 for details", "ISBN 978-0-306-40615-7", "@decorator applies here",
])
def test_look_alikes_survive(text):
    assert PIIScrubber().format(text) == text
    assert find_pii(text) == []


def test_normalise_folds_case_punctuation_and_space():
    assert normalise("Hello,   WORLD!\n") == normalise("hello world")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    metrics = run(DataConfig(max_documents=60, validation_fraction=0.2, workers=1), {}, StageContext.local(out))
    return out, metrics


def test_embedded_run_removes_planted_contamination_and_keeps_prose(small_run):
    out, m = small_run
    assert m["quarantined"] == 3 and (out / "quarantine.jsonl").is_file()
    assert m["exact_dup_recall"] == 1.0
    assert m["junk_removed_frac"] >= 0.9
    assert m["pii_recall"] == 1.0
    per_type = {k: v for k, v in m.items() if k.startswith("pii_recall_")}
    assert len(per_type) >= 4 and set(per_type.values()) == {1.0}  # types whose planted document survived
    assert m["pii_look_alikes_altered_frac"] == 0.0
    assert m["prose_kept_frac"] >= 0.6
    assert m["train_docs"] > 0 and m["validation_docs"] > 0
    assert m["docs_out"] == m["train_docs"] + m["validation_docs"]
    dropped = sum(m[f"{b}_dropped"] for b in DROPPING_BLOCKS)
    assert m["docs_in"] == m["docs_out"] + dropped  # nothing lost silently
    ran = [b for b in COUNTED_BLOCKS if f"{b}_docs_in" in m]
    assert ran == ["language", "toxicity", "gopher_quality", "gopher_repetition", "c4", "fineweb", "exact_dedup", "minhash", "pii"]
    for block, following in zip(ran, ran[1:]):  # each block's output is the next one's input
        assert m[f"{block}_docs_out"] == m[f"{following}_docs_in"] and m[f"{block}_bytes_out"] == m[f"{following}_bytes_in"]
    for block in ran[:-1]:
        assert m[f"{block}_docs_in"] - m[f"{block}_docs_out"] == m[f"{block}_dropped"]
    assert m["pii_bytes_out"] < m["pii_bytes_in"] and m["pii_docs_changed"] > 0  # placeholders are shorter
    assert m["minhash_removed"] == m["minhash_dropped"] and m["minhash_clusters"] >= 1
    assert m["near_dup_pairs_target"] >= 3 and m["near_dup_recall"] >= 0.95 and m["near_dup_precision"] >= 0.99
    rejected = _lines(next((out / "rejected" / rejected_dir("exact_dedup")).glob("*.jsonl.gz")))
    assert all(r["metadata"]["filter_reason"] == "exact_duplicate" for r in rejected)
    assert "Data report" in (out / "report.md").read_text()


def test_runs_are_deterministic(small_run, tmp_path):
    out, _ = small_run
    again = tmp_path / "again"
    again.mkdir()
    run(DataConfig(max_documents=60, validation_fraction=0.2, workers=2), {}, StageContext.local(again))
    for split in ("train", "validation"):
        a = sorted(p.name for p in (out / split).glob("*.jsonl.gz"))
        assert a == sorted(p.name for p in (again / split).glob("*.jsonl.gz"))
        for name in a:
            assert _lines(out / split / name) == _lines(again / split / name)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        run(DataConfig(sources=[str(tmp_path / "nope.jsonl")]), {}, StageContext.local(tmp_path))


def test_real_ccnet_sample_is_read(samples, tmp_path):
    src = samples / "pretrain" / "ccnet_en_head-0091_dolma.jsonl"
    results = list(read_jsonl(src, "text", 10_000_000))
    assert len(results) == 10 and all(doc is not None for doc, _ in results)
    out = tmp_path / "out"
    out.mkdir()
    m = run(DataConfig(sources=[str(src)], minhash=False, validation_fraction=0.3, workers=1), {}, StageContext.local(out))
    assert m["docs_in"] == 10 and m["quarantined"] == 0
    assert m["docs_out"] + sum(m[f"{b}_dropped"] for b in DROPPING_BLOCKS) == 10


def _assert_same_as_datatrove_fineweb_order(cfg, ours, m, reference):
    """The stage's order, passes and faster blocks against the same blocks as datatrove ships them, in its
    FineWeb example's order with exact dedup and the guard where the stage had them before
    (components/data/reference.py): the same documents, with the same text, in each split."""
    from components.data.reference import run_reference, stage_sources
    from components.data.report import read_docs

    reference.mkdir()
    staged = stage_sources(cfg, reference)
    run_reference(cfg, staged, reference)
    for split in ("train", "validation"):
        kept = {d["id"]: d["text"] for d in read_docs(ours / split)}
        assert kept == {d["id"]: d["text"] for d in read_docs(reference / split)}, split
    removed = {block: sum(1 for _ in read_docs(reference / "removed" / block)) for block in ("exact_dedup", "minhash")}
    assert removed == {"exact_dedup": m["exact_dedup_dropped"], "minhash": m["minhash_dropped"]}
    assert m["docs_out"] > 0 and m["minhash_dropped"] > 0 and m["exact_dedup_dropped"] > 0


def test_stage_keeps_the_documents_datatrove_fineweb_order_keeps(small_run, tmp_path):
    out, m = small_run
    _assert_same_as_datatrove_fineweb_order(DataConfig(max_documents=60, validation_fraction=0.2, workers=1), out, m,
                                            tmp_path / "reference")


@pytest.mark.slow
def test_stage_keeps_the_documents_datatrove_fineweb_order_keeps_on_the_whole_embedded_default(tmp_path):
    cfg = DataConfig(workers=2)
    (tmp_path / "stage").mkdir()
    m = run(cfg, {}, StageContext.local(tmp_path / "stage"))
    assert m["docs_out"] > 300
    _assert_same_as_datatrove_fineweb_order(cfg, tmp_path / "stage", m, tmp_path / "reference")
