"""Data sources: specs and presets, one reader per type, nothing lost silently, weighted mixing, cache keys."""
import gzip
import io
import json
import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from components.artifacts import stage_key
from components.context import StageContext
from components.data.config import DataConfig
from components.data.mix import plan_mix
from components.data.ingest.jsonl import read_jsonl
from components.data.ingest.parquet import read_parquet
from components.data.ingest.text import read_text
from components.data.ingest.units import read_source
from components.data.run import run
from components.data.sources import parse_sources
from flows.config import register, to_pipeline_config

REPO = Path(__file__).resolve().parents[1]
TEXT = "A plain sentence about rivers, hills and the weather in spring. " * 3


def _reasons(outcomes):
    return [(b.get("line", b.get("row", b.get("record"))), b["reason"].split(" ")[0]) for d, b in outcomes if b]


def _docs(outcomes):
    return [d for d, _ in outcomes if d]


# --- specs and presets -------------------------------------------------------------------------


def test_specs_infer_types_and_name_sources():
    specs = parse_sources(["embedded", "a/*.jsonl.gz", "b.parquet", "notes.md", "crawl.warc.gz", "page.html",
                           {"type": "hf", "path": "some_dir_that_is_local.jsonl", "name": "h", "weight": None}])
    assert [s.type for s in specs] == ["embedded", "jsonl", "parquet", "text", "warc", "html", "hf"]
    assert [s.name for s in specs][:2] == ["embedded", "a/*.jsonl.gz"] and specs[-1].name == "h"


@pytest.mark.parametrize("sources, key", [
    (["embedded", {"type": "csv", "path": "x.csv"}], r"data.sources\[1\].type"),
    (["data.csv"], r"data.sources\[0\].type"),
    ([{"path": "a.jsonl", "colour": "red"}], r"data.sources\[0\].colour"),
    ([{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl"}], r"data.sources\[1\].weight"),
    ([{"path": "a.jsonl", "weight": -1}], r"data.sources\[0\].weight"),
    (["a.jsonl", {"path": "a.jsonl"}], r"data.sources\[1\].name"),
    ([{"type": "jsonl"}], r"data.sources\[0\].path"),
    ([{"path": "a.jsonl", "split": "test"}], r"data.sources\[0\].split"),
    ([], r"data.sources"),
])
def test_bad_specs_fail_at_config_time_naming_the_key(sources, key):
    with pytest.raises(ValueError, match=key):
        DataConfig(sources=sources)


def test_mix_options_are_checked():
    weighted = [{"path": "a.jsonl", "weight": 1}, {"path": "b.jsonl", "weight": 1}]
    with pytest.raises(ValueError, match="data.mix_by"):
        DataConfig(sources=weighted, mix_by="tokens")
    with pytest.raises(ValueError, match="data.mix_total"):
        DataConfig(sources=["a.jsonl"], mix_total=10)
    with pytest.raises(ValueError, match="data.mix_repeat.*exact_dedup"):
        DataConfig(sources=weighted, mix_total=10, mix_repeat=True)
    DataConfig(sources=weighted, mix_total=10, mix_repeat=True, exact_dedup=False, minhash=False)


def test_source_presets_select_into_data_sources():
    register()
    warc = "/somewhere/crawl.warc.gz"
    presets = sorted(p.stem for p in (REPO / "conf" / "data" / "source").glob("*.yaml"))
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        def data(*overrides):
            return to_pipeline_config(compose("config", overrides=list(overrides))).data

        assert data().sources == ["embedded"]
        assert [(s.type, s.path) for s in data("data/source=warc", f"data.sources.0.path={warc}").source_specs()] == [("warc", warc)]
        mix = data("data/source=mix").source_specs()
        assert [(s.name, s.type, s.weight) for s in mix] == [("web", "warc", 0.7), ("docs", "text", 0.3)]
        for preset in presets:
            assert data(f"data/source={preset}").source_specs()  # every preset composes and validates
    assert {"embedded", "jsonl", "parquet", "text", "hf", "warc", "mix"} <= set(presets)


# --- readers: every malformed record is quarantined with file, line and reason -------------------


def test_jsonl_reader_quarantines_each_kind_of_bad_line(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join([
        json.dumps({"text": "good one", "id": "g1"}).encode(),
        b'{"text": "broken',
        json.dumps({"body": "x"}).encode(),
        json.dumps({"text": "   "}).encode(),
        json.dumps({"text": ["a"]}).encode(),
        b'{"text": "caf\xe9"}',
        json.dumps({"text": "y" * 300}).encode(),
    ]) + b"\n")
    out = list(read_jsonl(src, "text", 200, "s"))
    assert [d["id"] for d in _docs(out)] == ["g1"]
    assert _docs(out)[0]["metadata"] == {"source": "s", "file": str(src), "line": 1}
    assert _reasons(out) == [(2, "invalid_json"), (3, "missing_field"), (4, "empty_field"), (5, "non_string_field"),
                             (6, "invalid_utf8"), (7, "line_too_long")]


def test_json_array_and_truncated_gzip(tmp_path):
    arr = tmp_path / "rows.json"
    arr.write_text(json.dumps([{"text": "first"}, {"text": 3}, {"content": "x"}]))
    out = list(read_jsonl(arr, "text", 10_000))
    assert [d["text"] for d in _docs(out)] == ["first"] and _reasons(out) == [(1, "non_string_field"), (2, "missing_field")]
    gz = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(200)))
    gz.write_bytes(whole[: len(whole) // 2])  # a download cut short
    out = list(read_jsonl(gz, "text", 10_000))
    assert len(_docs(out)) > 0 and _reasons(out)[-1][1] == "unreadable_file"


def test_text_reader_one_document_per_file(tmp_path):
    good, bad, empty = tmp_path / "a.md", tmp_path / "b.txt", tmp_path / "c.txt"
    good.write_text("# Title\n\nFirst paragraph.\n\nSecond paragraph.\n")
    bad.write_bytes(b"fine line\nbad \xff byte\n")
    empty.write_text("\n  \n")
    out = [o for p in (good, bad, empty) for o in read_text(p, "notes", 1000, str(p))]
    assert [d["text"] for d in _docs(out)] == [good.read_text()]
    assert _reasons(out) == [(2, "invalid_utf8"), (1, "empty_text")]


def test_parquet_reader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"content": ["hello world", None, "", "fine again"], "id": ["a", "b", "c", "d"]}), path)
    out = list(read_parquet(path, "content", 1000, "p", str(path)))
    assert [(d["id"], d["metadata"]["row"]) for d in _docs(out)] == [("a", 0), ("d", 3)]
    assert _reasons(out) == [(1, "non_string_field"), (2, "empty_field")]
    assert _reasons(read_parquet(path, "text", 1000, "p", str(path))) == [(None, "missing_field")]
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[:40])
    assert _reasons(read_parquet(broken, "content", 1000, "p", str(broken))) == [(None, "unreadable_file")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_quarantined(tmp_path):
    path = tmp_path / "locked.jsonl"
    path.write_text(json.dumps({"text": "x"}) + "\n")
    path.chmod(0)
    assert _reasons(read_jsonl(path, "text", 100))[0][1] == "unreadable_file"


def test_a_source_that_cannot_be_opened_is_quarantined(tmp_path):
    """The same path as a permission error, without needing a non-root user: open() fails."""
    path = tmp_path / "folder.jsonl"
    path.mkdir()
    (reason,) = _reasons(read_jsonl(path, "text", 100))  # one record: the file, reported where it failed
    assert reason[1] == "unreadable_file"


# --- Hugging Face datasets ---------------------------------------------------------------------


def test_hf_save_to_disk_and_local_files(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict({"body": ["one document", "", "another document"]})
    DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(sources=[str(tmp_path / "saved")], text_key="body")
    (spec,) = cfg.source_specs()
    assert spec.type == "hf"
    out = list(read_source(spec, cfg.text_key, 1000, tmp_path))
    assert [d["text"] for d in _docs(out)] == ["one document", "another document"] and _reasons(out) == [(1, "empty_field")]
    test_split = DataConfig(sources=[{"type": "hf", "path": str(tmp_path / "saved"), "split": "test", "text_key": "body"}])
    assert len(_docs(read_source(test_split.source_specs()[0], "text", 1000, tmp_path))) == 1
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "via datasets"}) + "\n")
    local = DataConfig(sources=[{"type": "hf", "path": str(tmp_path / "rows.jsonl")}]).source_specs()[0]
    assert [d["text"] for d in _docs(read_source(local, "text", 1000, tmp_path))] == ["via datasets"]


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"data.sources\[0\].*'fineweb'.*offline"):
        DataConfig(sources=[{"type": "hf", "path": "HuggingFaceFW/fineweb-edu", "name": "fineweb"}])


# --- WARC and HTML -----------------------------------------------------------------------------


def _warc(path: Path, pages: list[tuple[str, str, bytes]]) -> None:
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=True)
        for url, ctype, body in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=http))


ARTICLE = ("<html><head><title>Rivers</title></head><body><nav>Home | About</nav><article><h1>Rivers</h1>"
           + "".join(f"<p>Paragraph {i}: rivers carry water from the hills down to the sea, shaping valleys "
                     "and feeding towns along their banks for many centuries.</p>" for i in range(6))
           + "</article><footer>Copyright</footer></body></html>").encode()


def test_warc_reader_keeps_url_and_date_and_counts_the_rest(tmp_path):
    path = tmp_path / "crawl.warc.gz"
    _warc(path, [("https://example.org/rivers", "text/html; charset=utf-8", ARTICLE),
                 ("https://example.org/logo.png", "image/png", b"\x89PNG...."),
                 ("https://example.org/empty", "text/html", b"<html><body></body></html>")])
    (spec,) = DataConfig(sources=[str(path)]).source_specs()
    out = list(read_source(spec, "text", 1_000_000, tmp_path))
    (doc,) = _docs(out)
    assert "rivers carry water" in doc["text"] and "Copyright" not in doc["text"]
    assert doc["metadata"]["url"] == "https://example.org/rivers" and doc["metadata"]["date"]
    skips = [b for _, b in out if b and b.get("skip")]
    bad = [b for _, b in out if b and not b.get("skip")]
    assert [b["reason"].split(" ")[0] for b in skips] == ["not_html"]
    assert [(b["url"], b["reason"].split(" ")[0]) for b in bad] == [("https://example.org/empty", "extraction_empty")]


def test_damaged_warc_is_reported_not_silently_short(tmp_path, samples):
    whole = (samples / "web" / "cc_whirlwind.warc.gz").read_bytes()
    cut, junk = tmp_path / "cut.warc.gz", tmp_path / "junk.warc"
    cut.write_bytes(whole[: len(whole) // 2])  # a download cut short: warcio itself stops quietly
    junk.write_bytes(b"this is not a warc file\n" * 4)
    for path, reason in ((cut, "unreadable_file"), (junk, "not_warc")):
        (spec,) = DataConfig(sources=[str(path)]).source_specs()
        out = list(read_source(spec, "text", 10_000_000, tmp_path))
        assert [b["reason"].split(" ")[0] for _, b in out if b and not b.get("skip")] == [reason]


def test_real_common_crawl_warc(samples):
    (spec,) = DataConfig(sources=[str(samples / "web" / "cc_whirlwind.warc.gz")]).source_specs()
    out = list(read_source(spec, "text", 10_000_000, samples))
    (doc,) = _docs(out)
    assert doc["metadata"]["url"] == "https://an.wikipedia.org/wiki/Escopete"
    assert doc["metadata"]["date"] == "2024-05-18T01:58:10Z" and len(doc["text"]) > 200
    assert sorted(b["reason"] for _, b in out if b) == [f"not_a_page (WARC {t} record)" for t in ("metadata", "request", "warcinfo")]


# --- mixing, strictness, staging ---------------------------------------------------------------


def test_plan_mix_by_documents_and_bytes():
    sizes = {"web": [10] * 100, "docs": [10] * 100}
    plan = plan_mix(sizes, {"web": 0.7, "docs": 0.3})
    assert sum(plan["web"].values()) == 100 and sum(plan["docs"].values()) == 43  # 100/0.7 = 142.9 in all
    assert max(plan["docs"].values()) == 1 and plan == plan_mix(sizes, {"web": 0.7, "docs": 0.3})  # seeded
    assert plan["docs"] != plan_mix(sizes, {"web": 0.7, "docs": 0.3}, seed=1)["docs"]
    by_bytes = plan_mix({"big": [100] * 10, "small": [1] * 500}, {"big": 1, "small": 1}, "bytes")
    assert sum(100 * n for n in by_bytes["big"].values()) == 500 and sum(by_bytes["small"].values()) == 500
    with pytest.raises(ValueError, match="'web' has 100 documents.*mix_repeat"):
        plan_mix(sizes, {"web": 0.5, "docs": 0.5}, total=300)
    repeated = plan_mix(sizes, {"web": 0.5, "docs": 0.5}, total=300, repeat=True)
    assert sum(repeated["docs"].values()) == 150 and max(repeated["docs"].values()) == 2


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


NO_BLOCKS = {"gopher_quality": False, "gopher_repetition": False, "c4": False, "fineweb": False, "exact_dedup": False,
             "minhash": False, "pii": False}


def _kept(out: Path) -> list[dict]:
    return [json.loads(line) for split in ("train", "validation") for path in sorted((out / split).glob("*.jsonl.gz"))
            for line in gzip.open(path, "rt")]


def test_reading_pass_mixes_by_weight_and_quarantines(tmp_path):
    """The weighted mix inside the datatrove passes (a counting pass, then the reading pass): the same
    exact totals and seeded sample as planned over the whole sources (plan_mix)."""
    web = _jsonl(tmp_path / "web.jsonl", [f"web page {i}" for i in range(70)] + [""])
    docs = _jsonl(tmp_path / "docs.jsonl", [f"doc page {i}" for i in range(90)])
    cfg = DataConfig(sources=[{"path": str(web), "name": "web", "weight": 7}, {"path": str(docs), "name": "docs", "weight": 3}],
                     tasks=3, workers=1, **NO_BLOCKS)
    out = tmp_path / "out"
    m = run(cfg, {}, StageContext.local(out))
    per_source = m["sources"]
    assert (per_source["web"]["docs_taken"], per_source["docs"]["docs_taken"], m["docs_in"]) == (70, 30, 100)
    assert per_source["web"]["quarantined"] == 1 and m["quarantined"] == 1 and m["quarantined_empty_field"] == 1
    (line,) = (out / "quarantine.jsonl").read_text().splitlines()
    assert json.loads(line) == {"file": str(web), "line": 71, "reason": "empty_field 'text'", "source": "web"}
    plan = plan_mix({"web": [10] * 70, "docs": [10] * 90}, {"web": 7, "docs": 3})  # the sizes do not matter by documents
    taken = sorted(d["text"] for d in _kept(out) if d["metadata"]["source"] == "docs")
    assert taken == sorted(f"doc page {i}" for i in plan["docs"])
    assert m["docs_out"] == 100 and not (out / "quarantine").exists() and not (out / "work").exists()


def test_repeats_get_unique_ids_inside_the_pass(tmp_path):
    small = _jsonl(tmp_path / "small.jsonl", [f"small page {i}" for i in range(10)])
    big = _jsonl(tmp_path / "big.jsonl", [f"big page {i}" for i in range(40)])
    cfg = DataConfig(sources=[{"path": str(small), "name": "small", "weight": 1}, {"path": str(big), "name": "big", "weight": 1}],
                     mix_total=50, mix_repeat=True, tasks=2, workers=1, **NO_BLOCKS)
    m = run(cfg, {}, StageContext.local(tmp_path / "out"))
    ids = [d["id"] for d in _kept(tmp_path / "out")]
    assert m["sources"]["small"]["docs_taken"] == 25 and m["sources"]["big"]["docs_taken"] == 25
    assert len(ids) == len(set(ids)) == 50 and sum("#" in i for i in ids) == 15  # 10 small pages, 2 or 3 times each


def test_strict_turns_quarantine_into_an_error(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match=rf"{src}, line 2: missing_field 'text'"):
        run(DataConfig(sources=[str(src)], strict=True, workers=2, **NO_BLOCKS), {}, StageContext.local(tmp_path / "out"))


def test_no_valid_document_is_one_clear_error(tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", ["", "  "])
    with pytest.raises(ValueError, match="no valid document"):
        run(DataConfig(sources=[str(src)], **NO_BLOCKS), {}, StageContext.local(tmp_path / "out"))
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == 2  # the evidence stays


def test_one_big_file_is_shared_by_the_tasks_and_read_once(tmp_path):
    """Fewer files than tasks: each file is striped by record, every record read by exactly one task,
    issues reported once (by the stripe owning the line), in file and line order once merged."""
    rows = [json.dumps({"text": f"page {i}", "id": f"p{i}"}) for i in range(30)]
    rows[7], rows[20] = '{"text": "cut', json.dumps({"body": "no text"})
    src = tmp_path / "one.jsonl"
    src.write_text("\n".join(rows) + "\n")
    m = run(DataConfig(sources=[str(src)], tasks=4, workers=2, **NO_BLOCKS), {}, StageContext.local(tmp_path / "out"))
    ids = sorted(d["id"] for d in _kept(tmp_path / "out"))
    assert ids == sorted(f"p{i}" for i in range(30) if i not in (7, 20)) and m["docs_in"] == 28
    lines = [json.loads(l)["line"] for l in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert lines == [8, 21] and m["quarantined"] == 2


def test_cache_key_follows_source_content(tmp_path):
    src = _jsonl(tmp_path / "a.jsonl", ["one", "two"])
    cfg = DataConfig(sources=[str(tmp_path / "*.jsonl")])

    def key():
        return stage_key("data", cfg, {}, "components.data")

    first = key()
    _jsonl(src, ["one", "two"])  # rewritten, same content
    assert key() == first
    _jsonl(src, ["one", "three"])
    changed = key()
    assert changed != first
    _jsonl(tmp_path / "b.jsonl", ["new file matching the glob"])
    assert key() == changed  # one config object globs once: its plan and its run read the same files
    assert stage_key("data", DataConfig(sources=[str(tmp_path / "*.jsonl")]), {}, "components.data") != changed


def test_mixed_sources_through_the_whole_stage(tmp_path, samples):
    prose = [f"{TEXT} Document number {i} tells of {w}." for i, w in enumerate(["boats", "trees", "roads", "birds"] * 5)]
    docs = _jsonl(tmp_path / "docs.jsonl", prose)
    warc = samples / "web" / "cc_whirlwind.warc.gz"
    cfg = DataConfig(sources=[str(docs), str(warc)], gopher_repetition=False, gopher_quality=False, c4=False, fineweb=False,
                     minhash=False, validation_fraction=0.2, tasks=1, workers=1,
                     language=False)  # the WARC's page is Aragonese Wikipedia: language id (on by default) drops it
    m = run(cfg, {}, StageContext.local(tmp_path / "out"))
    sources = m["sources"]
    assert sources[str(docs)]["docs_in"] == 20 and sources[str(warc)]["docs_in"] == 1
    assert m["skipped"] == 3 and m["skipped_not_a_page"] == 3 and m["quarantined"] == 0
    assert sum(s["docs_out"] for s in sources.values()) == m["docs_out"] == m["docs_in"] - m["exact_dedup_dropped"]
    assert "| " + str(warc) + " | warc |" in (tmp_path / "out" / "report.md").read_text()


def test_cli_missing_source_fails_before_any_work(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "flows.pipeline", f"data.sources=[{tmp_path}/nope/*.jsonl]",
                          f"run.artifacts_dir={tmp_path / 'a'}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "data.sources[0]" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr and not (tmp_path / "a").exists()


def test_format_readers_import_no_sibling_but_records():
    """One module per format, each importing only records.py from the package: no import cycle
    (readers, hf and web imported each other before)."""
    import ast

    folder = REPO / "components" / "data" / "ingest"
    for name in ("jsonl", "parquet", "text", "web", "hf"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        siblings = {m for m in imported if m.startswith("components.data.ingest")}
        assert siblings == {"components.data.ingest.records"}, name


def _stripes_of(spec, stripes: int, embedded_file: Path) -> list:
    from dataclasses import replace

    from components.data.ingest.records import Stripe
    from components.data.ingest.units import plan_units, read_unit
    from components.data.ingest.web import HtmlExtractor

    out = []
    with HtmlExtractor() as extract:
        for unit in plan_units([spec], 1, embedded_file):
            for s in range(stripes):
                out += list(read_unit(replace(unit, stripe=Stripe(s, stripes)), "text", 10_000_000, extract))
    return out


def test_stripes_of_a_file_together_read_it_once(tmp_path, samples):
    """Every format split into 3 stripes yields exactly the outcomes of one whole read: each document
    once, each issue (a cut gzip, a damaged WARC, a bad row, a missing column) once."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    whole = gzip.compress(b"".join(json.dumps({"text": f"line {i}"}).encode() + b"\n" for i in range(200)))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    warc = (samples / "web" / "cc_whirlwind.warc.gz").read_bytes()
    (tmp_path / "cut.warc.gz").write_bytes(warc[: len(warc) // 2])
    pq.write_table(pa.table({"text": ["a", None, "", "b", "c"]}), tmp_path / "t.parquet")
    pq.write_table(pa.table({"body": ["a"]}), tmp_path / "nocol.parquet")
    Dataset.from_dict({"text": ["x", "", "y", "z"]}).save_to_disk(str(tmp_path / "saved"))
    paths = ["cut.jsonl.gz", "cut.warc.gz", "t.parquet", "nocol.parquet", "saved"]
    for path in [str(tmp_path / p) for p in paths] + [str(samples / "web" / "cc_whirlwind.warc.gz")]:
        (spec,) = parse_sources([path])
        one = list(read_source(spec, "text", 10_000_000, tmp_path))
        assert one, path
        key = lambda o: json.dumps(o, sort_keys=True)  # noqa: E731
        assert sorted(map(key, _stripes_of(spec, 3, tmp_path))) == sorted(map(key, one)), path


# --- which fields a document keeps; text modes (issue 13) --------------------------------------


def _dolma_row(i: int, **extra) -> dict:
    """The shape of a dolma / CCNet line: the url inside `metadata`, dates at the top level."""
    return {"id": f"doc-{i}", "text": f"{TEXT} Page {i}.", "source": "common-crawl", "created": "2020-03-29T09:04:10Z",
            "metadata": {"url": f"https://site{i}.example.org/a", "language": "en", "title": f"Title {i}"}, **extra}


def test_jsonl_reader_keeps_url_date_and_declared_fields(tmp_path):
    src = tmp_path / "crawl.jsonl"
    rows = [_dolma_row(0), {"text": TEXT, "doc_id": "x1", "URL": "http://upper.example/b", "timestamp": 1700000000},
            {"text": TEXT, "source_url": "http://s.example/c"}, {"text": TEXT, "doc_id": ""}, {"text": TEXT}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = _docs(read_jsonl(src, "text", 10_000, "crawl"))
    assert [d["metadata"].get("url") for d in plain] == ["https://site0.example.org/a", "http://upper.example/b",
                                                          "http://s.example/c", None, None]
    assert plain[0]["metadata"]["date"] == "2020-03-29T09:04:10Z" and plain[1]["metadata"]["date"] == 1700000000
    assert plain[0]["metadata"]["source"] == "crawl"  # the record's own `source` never replaces the source name
    (spec,) = parse_sources([{"path": str(src), "id_key": "doc_id",
                              "metadata_keys": {"lang": "metadata.language", "origin": "source", "title": "metadata.title"}}])
    out = list(read_source(spec, "text", 10_000, tmp_path))
    kept = _docs(out)
    assert [d["id"] for d in kept] == ["x1"]  # a declared id field missing or empty is the record's error
    assert _reasons(out) == [(1, "missing_field"), (3, "missing_field"), (4, "missing_field"), (5, "missing_field")]
    assert "doc_id" in [b for _, b in out if b][0]["reason"]
    (spec,) = parse_sources([{"path": str(src), "metadata_keys": ["metadata.language", "metadata.title"]}])
    first = _docs(read_source(spec, "text", 10_000, tmp_path))[0]["metadata"]
    assert first == {"url": "https://site0.example.org/a", "date": "2020-03-29T09:04:10Z", "language": "en",
                     "title": "Title 0", "source": str(src), "file": str(src), "line": 1}


def test_parquet_and_hf_readers_keep_metadata_columns(tmp_path):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    when = datetime.datetime(2024, 5, 1, 12, 30)
    table = {"content": ["hello world", "fine again"], "url": ["https://a.example/1", None], "crawl_date": [when, when],
             "lang": ["en", "de"], "unused": ["x" * 50, "y" * 50]}
    pq.write_table(pa.table(table), tmp_path / "t.parquet")
    Dataset.from_dict({k: v for k, v in table.items() if k != "crawl_date"}).save_to_disk(str(tmp_path / "saved"))
    for path in (tmp_path / "t.parquet", tmp_path / "saved"):
        (spec,) = parse_sources([{"path": str(path), "text_key": "content", "metadata_keys": ["lang"]}])
        docs = _docs(read_source(spec, "text", 1000, tmp_path))
        assert [d["metadata"].get("url") for d in docs] == ["https://a.example/1", None], path
        assert [d["metadata"]["lang"] for d in docs] == ["en", "de"] and "unused" not in docs[0]["metadata"]
    (spec,) = parse_sources([str(tmp_path / "t.parquet")])
    assert _docs(read_source(spec, "content", 1000, tmp_path))[0]["metadata"]["date"] == "2024-05-01T12:30:00"


@pytest.mark.parametrize("entry, key", [
    ({"path": "a.jsonl", "metadata_keys": ["source"]}, r"data.sources\[0\].metadata_keys"),  # the pipeline's own
    ({"path": "a.jsonl", "metadata_keys": ["a.lang", "b.lang"]}, r"data.sources\[0\].metadata_keys"),  # one name twice
    ({"path": "a.txt", "id_key": "doc_id"}, r"data.sources\[0\].id_key"),
    ({"path": "a.jsonl", "mode": "line"}, r"data.sources\[0\].mode"),
    ({"path": "a.txt", "mode": "sentence"}, r"data.sources\[0\].mode"),
    ({"path": "a.txt", "mode": "line", "chunk_chars": 500}, r"data.sources\[0\].chunk_chars"),
    ({"path": "a.txt", "mode": "chunk", "chunk_chars": 10}, r"data.sources\[0\].chunk_chars"),
])
def test_bad_reader_fields_fail_at_config_time(entry, key):
    with pytest.raises(ValueError, match=key):
        parse_sources([entry])


ARTICLE_WORDS = ("the river of a town and its mill in spring where people from the valley came to trade wool grain "
                 "and timber with merchants who travelled along the old road over the hills to the coast").split()


def _article(seed: int, sentences: int) -> str:
    import random

    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(ARTICLE_WORDS) for _ in range(rng.randint(8, 18))).capitalize() + "."
                    for _ in range(sentences))


def _text_spec(path: Path, mode: str, **extra):
    (spec,) = parse_sources([{"path": str(path), "mode": mode, **extra}])
    return spec


def test_line_mode_one_article_per_line(tmp_path):
    """A Wikipedia-style dump: an article per line, ids `<file>@<byte offset>`, a bad line quarantined alone."""
    articles = [_article(i, 6) for i in range(5)]
    src = tmp_path / "wiki.txt"
    src.write_bytes(("\ufeff" + articles[0] + "\n\n" + articles[1] + "\n").encode() + b"bad \xff line\n"
                    + ("\n".join(articles[2:]) + "\n   \n").encode())
    out = list(read_source(_text_spec(src, "line"), "text", 10_000, tmp_path))
    docs = _docs(out)
    assert [d["text"] for d in docs] == articles and _reasons(out) == [(4, "invalid_utf8")]
    raw = src.read_bytes()
    for doc in docs:
        offset = doc["metadata"]["offset"]
        assert doc["id"] == f"{src}@{offset}" and raw[offset:].decode(errors="replace").startswith(doc["text"])
    assert [d["metadata"]["line"] for d in docs] == [1, 3, 5, 6, 7]


def test_paragraph_mode_groups_paragraphs_up_to_the_size(tmp_path):
    paragraphs = [_article(i, 3) for i in range(12)]  # 200-400 characters each
    src = tmp_path / "essay.md"
    src.write_text("\n\n\n".join(p[:60] + "\n" + p[60:] for p in paragraphs) + "\n")  # wrapped lines, wide gaps
    docs = _docs(read_source(_text_spec(src, "paragraph", chunk_chars=1000), "text", 10_000, tmp_path))
    total = len("\n\n".join(paragraphs)) + len(paragraphs)
    assert total / 1000 <= len(docs) < len(paragraphs) / 2 and all(len(d["text"]) <= 1000 for d in docs)
    joined = "\n\n".join(d["text"] for d in docs)
    assert joined == "\n\n".join(p[:60] + "\n" + p[60:] for p in paragraphs)  # nothing lost, line ends kept
    one_long = tmp_path / "long.txt"
    one_long.write_text(_article(99, 40))  # one paragraph over the size: paragraph mode keeps it whole
    assert len(_docs(read_source(_text_spec(one_long, "paragraph", chunk_chars=1000), "text", 100_000, tmp_path))) == 1


def _book(path: Path, size: int) -> str:
    """A book-shaped file: chapters of long wrapped paragraphs and some single paragraphs of 10k characters."""
    parts, n = [], 0
    while sum(map(len, parts)) < size:
        body = _article(n, 120 if n % 7 == 0 else 12)
        parts.append(f"CHAPTER {n}" if n % 20 == 0 else body)
        n += 1
    text = "\n\n".join(parts) + "\n"
    path.write_text(text)
    return text


def test_chunk_mode_cuts_a_book_at_sentence_ends(tmp_path):
    src = tmp_path / "book.txt"
    text = _book(src, 1_000_000)
    out = list(read_source(_text_spec(src, "chunk", chunk_chars=4000), "text", 1_000_000, tmp_path))
    docs = _docs(out)
    assert not _reasons(out) and 230 <= len(docs) <= 330
    assert max(len(d["text"]) for d in docs) <= 4000 and sum(len(d["text"]) > 2000 for d in docs) > 0.9 * len(docs)
    assert " ".join(d["text"] for d in docs).split() == text.split()  # every word once, in order
    assert all(d["text"].rstrip()[-1] in ".0123456789" for d in docs)  # ends of sentences (or a chapter title)
    raw = src.read_bytes()
    assert all(raw[d["metadata"]["offset"]:].decode().startswith(d["text"][:200]) for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)
    words = tmp_path / "nospace.txt"
    words.write_text("x" * 9000)  # no sentence end, no space: cut at the size
    assert [len(d["text"]) for d in _docs(read_text(words, "s", 100_000, str(words), "chunk", 4000))] == [4000, 4000, 1000]


def test_text_modes_split_into_stripes_read_each_document_once(tmp_path):
    src = tmp_path / "book.txt"
    _book(src, 60_000)
    with open(src, "ab") as handle:
        handle.write(b"\xff broken line\n\n" + _article(5, 3).encode() + b"\n")
    for mode in ("line", "paragraph", "chunk"):
        spec = _text_spec(src, mode)
        one = list(read_source(spec, "text", 1_000_000, tmp_path))
        key = lambda o: json.dumps(o, sort_keys=True)  # noqa: E731
        assert sorted(map(key, _stripes_of(spec, 3, tmp_path))) == sorted(map(key, one)), mode
        assert sum(1 for d, _ in one if d) > 3 and _reasons(one)[0][1] == "invalid_utf8"


def test_a_book_in_chunks_passes_the_length_rule_that_drops_it_whole(tmp_path):
    """One document per file: a 1 MB book is over Gopher's max_doc_words and dropped; as chunks it is kept."""
    src = tmp_path / "book.txt"
    _book(src, 1_000_000)
    only_gopher = {**NO_BLOCKS, "gopher_quality": True}
    whole = run(DataConfig(sources=[str(src)], tasks=1, workers=1, **only_gopher), {}, StageContext.local(tmp_path / "a"))
    assert (whole["docs_in"], whole["docs_out"]) == (1, 0)
    chunked = run(DataConfig(sources=[{"path": str(src), "mode": "chunk"}], tasks=2, workers=1, **only_gopher), {},
                  StageContext.local(tmp_path / "b"))
    assert chunked["docs_in"] > 200 and chunked["docs_out"] >= 0.95 * chunked["docs_in"]


def test_url_blocklist_acts_on_jsonl_and_says_which_source_it_cannot_judge(tmp_path, caplog):
    crawl = tmp_path / "crawl.jsonl"
    rows = [_dolma_row(i) for i in range(6)]
    rows[2]["metadata"]["url"] = "https://www.spam-site.com/p"
    crawl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(f"{TEXT} Note {i}." for i in range(4)) + "\n")
    blocklist = tmp_path / "blocked.txt"
    blocklist.write_text("# spam\nspam-site.com\n")
    cfg = DataConfig(sources=[{"path": str(crawl), "name": "crawl"}, {"path": str(notes), "name": "notes", "mode": "line"}],
                     url_blocklist=str(blocklist), tasks=1, workers=1, **NO_BLOCKS)
    with caplog.at_level("WARNING", logger="components.data.run"):
        m = run(cfg, {}, StageContext.local(tmp_path / "out"))
    assert m["url_blocklist_dropped"] == 1 and m["url_blocklist_no_url"] == 4
    assert m["sources"]["notes"]["url_blocklist_no_url"] == 4 and "url_blocklist_no_url" not in m["sources"]["crawl"]
    assert [r for r in caplog.messages if "cannot judge 4 documents of source 'notes'" in r]
    assert "Not judged by data.url_blocklist (no url; kept): 4 of notes documents." in (tmp_path / "out" / "report.md").read_text()
    kept = {d["id"]: d["metadata"] for d in _kept(tmp_path / "out")}
    assert "doc-2" not in kept and kept["doc-0"]["url"] == "https://site0.example.org/a"
    assert kept["doc-0"]["date"] == "2020-03-29T09:04:10Z"


def test_real_dolma_lines_keep_url_and_metadata(samples):
    path = samples / "pretrain" / "ccnet_en_head-0091_dolma.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    (spec,) = parse_sources([{"path": str(path), "metadata_keys": {"lang": "metadata.language", "title": "metadata.title",
                                                                   "origin": "source"}}])
    docs = _docs(read_source(spec, "text", 1_000_000, path.parent))
    assert len(docs) == len(rows)
    for doc, row in zip(docs, rows):
        assert doc["metadata"]["url"] == row["metadata"]["url"] and doc["metadata"]["date"] == row["created"]
        assert (doc["metadata"]["lang"], doc["metadata"]["title"]) == (row["metadata"]["language"], row["metadata"]["title"])
        assert doc["metadata"]["origin"] == row["source"] and doc["id"] == row["id"]


def test_reader_fields_from_the_command_line(tmp_path):
    """The override form the presets document: a mapping with a list of fields, a text mode."""
    register()
    book, rows = tmp_path / "book.txt", tmp_path / "rows.jsonl"
    book.write_text(TEXT)
    rows.write_text(json.dumps({"text": TEXT}) + "\n")
    override = (f"data.sources=[{{path: '{tmp_path}/*.txt', mode: chunk, chunk_chars: 6000}}, "
                f"{{path: '{rows}', id_key: doc_id, metadata_keys: [lang, metadata.title]}}]")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        text, table = to_pipeline_config(compose("config", overrides=[override])).data.source_specs()
    assert (text.type, text.mode, text.chunk_chars) == ("text", "chunk", 6000)
    assert (table.id_key, table.metadata_keys) == ("doc_id", (("lang", "lang"), ("title", "metadata.title")))


def test_chunk_mode_on_a_file_without_blank_lines_stays_bounded(tmp_path):
    """No blank line at all (a paragraph a line, or hard-wrapped text): runs end at a line end once
    over data.max_line_bytes, every piece keeps its true line and offset."""
    src = tmp_path / "noblank.txt"
    lines = [_article(i, 4) for i in range(400)]
    src.write_text("\n".join(lines) + "\n")
    docs = _docs(read_text(src, "s", 20_000, str(src), "chunk", 3000))
    raw = src.read_bytes()
    assert " ".join(d["text"] for d in docs).split() == src.read_text().split()
    for doc in docs:
        meta = doc["metadata"]
        assert raw[meta["offset"]:].decode().startswith(doc["text"][:300]) and len(doc["text"]) <= 3000
        assert raw[:meta["offset"]].count(b"\n") + 1 == meta["line"]
