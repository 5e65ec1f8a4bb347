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
