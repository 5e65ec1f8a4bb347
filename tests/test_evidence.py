"""Nothing lost when a stage fails or drops everything: a data stage whose filters drop every document is a
valid artifact saying so (and the tokenizer's error names it and why); a failed build's quarantine, rejected
records, report and logs are set aside at once where its error says, and stay there after the next run; the
error quotes the top reasons; every record a data source holds is in the output, rejected/ or the quarantine."""
import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from components.artifacts import build, is_complete, read_manifest
from components.context import StageContext
from components.data.config import DataConfig
from components.data.run import run as data_run
from components.evidence import count_kinds, reason_kind, top_reasons
from flows.failure import failure_reason

# What a crawl is full of and every quality rule drops: navigation, cookie banners, listings (each < 50 words).
BOILERPLATE = [
    "Home | About us | Services | Blog | Contact | Login",
    "We use cookies to improve your experience. By continuing to browse you agree to our use of cookies. Accept",
    "Skip to main content. Search this site. Menu. Shop all. New arrivals. Sale. Gift cards.",
    "Copyright 2019 Riverside Dental Group. All rights reserved. Privacy policy. Terms of use. Sitemap.",
    "Posted by admin on March 3, 2018 in Uncategorized. 0 comments. Share on Facebook. Tweet this.",
    "Price: $24.99. In stock. Add to cart. Free shipping on orders over $50. Reviews (0).",
    "Page 1 of 12. Next page. Previous page. Jump to page. Results per page: 10 25 50.",
    "Subscribe to our newsletter. Email address. Sign up. No spam, unsubscribe at any time.",
    "Click here to download the brochure (PDF, 2.4 MB). Opens in a new window.",
    "Related posts: Ten tips for spring cleaning; How to choose a vacuum; Our favourite mops.",
    "Tags: travel, europe, budget, backpacking, hostels, trains, summer 2017",
    "Error 404. The page you are looking for cannot be found. Return to the homepage.",
]


def _jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _docs(folder: Path) -> list[dict]:
    found = []
    for path in sorted(folder.rglob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            found += [json.loads(line) for line in handle]
    return found


def _aside(root: Path, stage: str, key: str) -> list[Path]:
    return sorted((root / stage).glob(f".{key}.failed-*"))


# --- everything dropped: a valid artifact that says so; the tokenizer's error names it and the reasons ---


@pytest.fixture(scope="module")
def all_dropped(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dropped")
    src = _jsonl(tmp / "crawl.jsonl", [json.dumps({"text": t, "id": f"page{i}"}) for i, t in enumerate(BOILERPLATE)])
    path, built = build(tmp / "artifacts", "data", "k", DataConfig(sources=[str(src)], workers=1), {}, data_run)
    return tmp, path, built


def test_filters_dropping_every_document_end_as_a_valid_artifact_saying_so(all_dropped):
    _, path, built = all_dropped
    assert built and is_complete(path)
    m = read_manifest(path)["metrics"]
    assert (m["docs_in"], m["docs_out"], m["train_docs"], m["validation_docs"]) == (len(BOILERPLATE), 0, 0, 0)
    assert m["drop_reasons"]["gopher_quality"]["gopher_short_doc"] >= 1
    assert sum(sum(r.values()) for r in m["drop_reasons"].values()) == len(BOILERPLATE)  # every drop has its reason
    rejected = _docs(path / "rejected")
    assert sorted(d["id"] for d in rejected) == sorted(f"page{i}" for i in range(len(BOILERPLATE)))
    assert all(d["metadata"]["filter_reason"] for d in rejected)
    report = (path / "report.md").read_text()
    assert "No document survived" in report and "gopher_short_doc" in report
    assert "| gopher_quality | gopher_short_doc |" in report


def test_the_tokenizer_refuses_an_empty_corpus_naming_the_artifact_and_the_reasons(all_dropped):
    from tokenizer.config import TokenizerConfig
    from tokenizer.run import run as tokenizer_run

    tmp, path, _ = all_dropped
    with pytest.raises(ValueError) as raised:
        build(tmp / "artifacts", "tokenizer", "t", TokenizerConfig(), {"data": path}, tokenizer_run)
    message = str(raised.value)
    assert str(path) in message and "0 train and 0 validation documents" in message
    assert f"of {len(BOILERPLATE)} documents read" in message and "gopher_quality: gopher_short_doc" in message
    assert "report.md" in message


def test_a_corpus_without_validation_documents_says_how_to_get_some(tmp_path):
    from tokenizer.config import TokenizerConfig
    from tokenizer.run import run as tokenizer_run

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    with gzip.open(data / "train" / "00000.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"id": "a", "text": "One document only."}) + "\n")
    metrics = {"docs_in": 5, "docs_out": 1, "exact_dedup_dropped": 4, "drop_reasons": {"exact_dedup": {"exact_duplicate": 4}}}
    (data / "manifest.json").write_text(json.dumps({"metrics": metrics}))
    with pytest.raises(ValueError, match=r"1 train and 0 validation.*4 exact_dedup: exact_duplicate.*validation_fraction"):
        tokenizer_run(TokenizerConfig(), {"data": data}, StageContext.local(tmp_path / "tok"))


# --- every staged record accounted for, a lone surrogate among them ---


def _source_lines(name: str, texts: list[str], tmp_path: Path) -> tuple[Path, int]:
    """Real-shaped records (prose and boilerplate) and the bad ones a dump has."""
    lines = [json.dumps({"text": t, "id": f"{name}-{i}"}) for i, t in enumerate(texts)]
    lines += [json.dumps({"text": texts[0], "id": f"{name}-copy"}),  # an exact duplicate
              '{"text": "cut off',  # invalid JSON
              json.dumps({"body": "no text field"}),
              '{"text": "' + "Text split from a UTF-16 pair, " * 12 + '\\ud83d the rest.", "id": "' + name + '-surrogate"}']
    return _jsonl(tmp_path / f"{name}.jsonl", lines), len(lines)


def test_every_staged_record_is_in_the_output_rejected_or_the_quarantine(tmp_path):
    from components.data.embedded import prose_documents

    prose = prose_documents()[:40]  # real English prose: the standard library's documentation
    a, a_lines = _source_lines("a", prose[:20] + BOILERPLATE[:3], tmp_path)
    b, b_lines = _source_lines("b", prose[20:] + BOILERPLATE[3:6], tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    m = data_run(DataConfig(sources=[str(a), str(b)], workers=1), {}, StageContext.local(out))
    kept = Counter(d["metadata"]["source"] for d in _docs(out / "train") + _docs(out / "validation"))
    rejected = Counter(d["metadata"]["source"] for d in _docs(out / "rejected"))
    quarantine = [json.loads(line) for line in (out / "quarantine.jsonl").read_text().splitlines()]
    quarantined = Counter(q["source"] for q in quarantine)
    for src, lines in ((a, a_lines), (b, b_lines)):
        name = str(src)
        assert kept[name] + rejected[name] + quarantined[name] == lines, name
        counts = m["sources"][name]
        assert (counts["docs_in"] + counts["quarantined"], counts["docs_out"]) == (lines, kept[name])
        assert kept[name] and rejected[name] and quarantined[name] == 3
    surrogates = [q for q in quarantine if q["reason"].startswith("invalid_unicode")]
    assert [(q["file"], q["line"]) for q in surrogates] == [(str(a), a_lines), (str(b), b_lines)]
    assert "lone surrogate U+D83D" in surrogates[0]["reason"] and m["quarantined_invalid_unicode"] == 2


def test_strict_names_the_lone_surrogate_by_file_and_line(tmp_path):
    from components.data.ingest.records import InputError

    src, lines = _source_lines("s", ["A plain line of text."], tmp_path)
    src.write_text("\n".join(l for l in src.read_text().splitlines() if "cut off" not in l and "body" not in l) + "\n")
    with pytest.raises(InputError, match=rf"{src}, line 3: invalid_unicode \(lone surrogate"):
        data_run(DataConfig(sources=[str(src)], strict=True, workers=1), {}, StageContext.local(tmp_path / "out"))


# --- a failed stage keeps its evidence where its error says, also after the next run ---


def test_a_data_stage_without_a_valid_document_keeps_its_quarantine_and_quotes_the_reasons(tmp_path):
    src = _jsonl(tmp_path / "bad.jsonl", ['{"text": "cut', "{oops", json.dumps({"body": "x"}), json.dumps({"text": ""})])
    root = tmp_path / "artifacts"
    cfg = DataConfig(sources=[str(src)], workers=1)
    with pytest.raises(ValueError, match=r"no valid document .*: 4 records quarantined \(2 invalid_json, 1 empty_field, "
                                         r"1 missing_field\); see quarantine.jsonl") as raised:
        build(root, "data", "k", cfg, {}, data_run)
    (aside,) = _aside(root, "data", "k")
    assert f"its files are kept in {aside}" in raised.value.__notes__[0] and str(aside) in failure_reason(raised.value)
    assert len((aside / "quarantine.jsonl").read_text().splitlines()) == 4
    assert (aside / "logs" / "1_quality.log").is_file()
    with pytest.raises(ValueError, match="no valid document"):  # the next run: a new folder, the first one stays
        build(root, "data", "k", cfg, {}, data_run)
    assert len(_aside(root, "data", "k")) == 2 and len((aside / "quarantine.jsonl").read_text().splitlines()) == 4
    assert not (root / "data" / ".k.partial").exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from transformers import AutoTokenizer

    from components.model.build import build_model
    from components.model.config import ModelConfig
    from tests.tiny import make_tokenizer_artifact

    tmp = tmp_path_factory.mktemp("tiny")
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_artifact(tmp / "tok") / "hf")
    model = build_model(ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64),
                        tokenizer, seed=0)
    model.save_pretrained(tmp / "stage" / "model")
    tokenizer.save_pretrained(tmp / "stage" / "model")
    return tmp / "stage"  # a pretrain (or sft) artifact's shape: model/


def test_sft_with_every_record_quarantined_keeps_them_and_quotes_the_reasons(tiny_model, tmp_path):
    from components.sft.config import SFTConfig
    from components.sft.run import run as sft_run

    rows = [json.dumps({"instruction": f"Summarise note {i}.", "input": "", "output": ""}) for i in range(5)]
    rows += ['{"instruction": "cut', '{"messages": [', json.dumps({"foo": "2+2?", "bar": "4"})]
    src = _jsonl(tmp_path / "chat.jsonl", rows)
    root = tmp_path / "artifacts"
    cfg = SFTConfig(sources=[str(src)], max_steps=1, warmup_steps=0, mixed_precision="no")
    with pytest.raises(ValueError) as raised:
        build(root, "sft", "k", cfg, {"pretrain": tiny_model}, sft_run)
    first = str(raised.value).splitlines()[0]
    assert first.startswith(f"sft: no usable training example in ['{src}']: 8 quarantined (5 field 'output' must be a "
                            "non-empty string, 2 invalid JSON, 1 ") and first.endswith("; see quarantine.jsonl")
    (aside,) = _aside(root, "sft", "k")
    quarantine = [json.loads(line) for line in (aside / "quarantine.jsonl").read_text().splitlines()]
    assert [q["where"] for q in quarantine] == [f"{src}:{n}" for n in range(1, 9)]
    assert f"kept in {aside}" in failure_reason(raised.value)
    with pytest.raises(ValueError, match="no usable training example"):
        build(root, "sft", "k", cfg, {"pretrain": tiny_model}, sft_run)
    assert (aside / "quarantine.jsonl").is_file() and len(_aside(root, "sft", "k")) == 2


def test_align_with_every_pair_quarantined_keeps_them_and_quotes_the_reasons(tiny_model, tmp_path):
    from components.align.config import AlignConfig
    from components.align.run import run as align_run

    rows = [json.dumps({"prompt": f"What is {i} + {i}?", "chosen": str(2 * i)}) for i in range(3)] + ["{not json"]
    src = _jsonl(tmp_path / "prefs.jsonl", rows)
    root = tmp_path / "artifacts"
    cfg = AlignConfig(sources=[str(src)], max_steps=1, warmup_steps=0, num_val_pairs=1, mixed_precision="no", replay=0)
    with pytest.raises(ValueError, match=r"align: no usable training pair in .*: 4 left out \(3 .*rejected.*, "
                                         r"1 invalid JSON\); see quarantine.jsonl") as raised:
        build(root, "align", "k", cfg, {"sft": tiny_model}, align_run)
    (aside,) = _aside(root, "align", "k")
    assert len((aside / "quarantine.jsonl").read_text().splitlines()) == 4
    assert f"kept in {aside}" in failure_reason(raised.value)


def test_resume_state_stays_for_the_rerun_and_the_rest_is_set_aside(tmp_path):
    def fails_after_a_checkpoint(cfg, inputs, ctx):
        (ctx.out_dir / "checkpoints" / "step_1").mkdir(parents=True)
        (ctx.out_dir / "log.jsonl").write_text('{"step": 1}\n')
        (ctx.out_dir / "quarantine.jsonl").write_text('{"reason": "x"}\n')
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError) as raised:
        build(tmp_path, "toy", "k", DataConfig(), {}, fails_after_a_checkpoint)
    partial = tmp_path / "toy" / ".k.partial"
    (aside,) = _aside(tmp_path, "toy", "k")
    assert sorted(p.name for p in partial.iterdir()) == ["checkpoints", "log.jsonl"]  # what a rerun resumes from
    assert sorted(p.name for p in aside.iterdir()) == ["quarantine.jsonl"]
    assert raised.value.__notes__[0].endswith(f"kept in {aside} (quarantine.jsonl); {partial} keeps what a rerun "
                                              "resumes from")


def test_reasons_are_counted_by_kind_without_their_record_or_values():
    rows = [{"where": "a.jsonl:3", "reason": "a.jsonl:3: field 'messages' must be a list of turns, got 'hi'"},
            {"where": "a.jsonl:9", "reason": "a.jsonl:9: field 'messages' must be a list of turns, got 3"},
            {"where": "a.jsonl:4", "reason": "70 tokens, longer than the model's context of 64"},
            {"reason": "invalid_json (Expecting value)"}]
    assert count_kinds(rows) == {"field 'messages' must be a list of turns": 2,
                                 "N tokens, longer than the model's context of N": 1, "invalid_json": 1}
    assert top_reasons(count_kinds(rows), n=2) == "2 field 'messages' must be a list of turns, 1 N tokens, longer than " \
                                                  "the model's context of N, 1 more"
    assert reason_kind("") == "no reason given" and top_reasons({}) == "none"
