"""Data blocks: FineWeb, URL blocklist, language id, the MinHash cluster guard, executors from config."""
import gzip
import json
import struct

import pytest
from datatrove.data import Document

from components.data.config import C4Rules, DataConfig, FineWebRules, GopherQualityRules, GopherRepetitionRules, SlurmConfig
from components.data.executors import make_executor
from components.data.filters import LocalLanguageFilter, URLBlocklistFilter, read_blocklist
from components.data.pipelines import build_passes, quality_blocks
from components.data.run import run


def _doc(text, **metadata):
    return Document(text=text, id="d", metadata=metadata)


def test_fineweb_thresholds_come_from_config():
    menu = "\n".join(["Home", "About us", "Products", "Contact", "A long sentence that ends properly here."])
    blocks = dict(quality_blocks(DataConfig(), lambda block: None))
    assert blocks["fineweb"].filter(_doc(menu)) == (False, "short_line_ratio")  # 4 of 5 lines <= 30 chars

    def fineweb(**knobs):
        cfg = DataConfig(fineweb_rules=FineWebRules(**knobs))
        return dict(quality_blocks(cfg, lambda block: None))["fineweb"].filter(_doc(menu))

    assert fineweb(short_line_thr=0.9, new_line_ratio=1.0) is True
    assert fineweb(short_line_thr=0.9) == (False, "list_ratio")  # 4 newlines / 12 words > 0.3
    assert fineweb(short_line_thr=0.9, new_line_ratio=1.0, line_punct_thr=0.5) == (
        False, "line_punct_ratio")  # 1 line in 5 ends a sentence
    assert fineweb(short_line_length=5, new_line_ratio=1.0) is True
    assert "url_blocklist" not in blocks and "language" not in blocks  # off unless given a file


def test_gopher_and_c4_rules_come_from_config():
    prose = ("The cat sat on the mat and it was happy with the world. " * 3).strip()
    dict_doc = f"{prose} The call returns {{}} when the table is empty, as the docs of the module say. " * 2

    def verdict(block: str, doc: str, **cfg):
        return dict(quality_blocks(DataConfig(**cfg), lambda block: None))[block].filter(_doc(doc))

    assert verdict("gopher_quality", prose) == (False, "gopher_short_doc")  # 36 words < 50
    assert verdict("gopher_quality", prose, gopher_quality_rules=GopherQualityRules(min_doc_words=20)) is True
    assert verdict("gopher_quality", prose, gopher_quality_rules=GopherQualityRules(min_doc_words=None)) is True
    assert verdict("c4", dict_doc) == (False, "curly_bracket")
    assert verdict("c4", dict_doc, c4_rules=C4Rules(filter_curly_bracket=False)) is True
    repeated = "\n".join(["Buy the best shoes in town today."] * 4 + [prose])
    assert verdict("gopher_repetition", repeated)[0] is False
    loose = GopherRepetitionRules(dup_line_frac=None, dup_line_char_frac=None, dup_para_char_frac=None,
                                  dup_para_frac=None, top_n_grams={2: 1.0}, dup_n_grams={5: 1.0})
    assert verdict("gopher_repetition", repeated, gopher_repetition_rules=loose) is True


@pytest.mark.parametrize("bad, key", [
    ({"gopher_quality_rules": GopherQualityRules(max_symbol_word_ratio=1.5)}, "data.gopher_quality_rules.max_symbol_word_ratio"),
    ({"gopher_quality_rules": GopherQualityRules(min_doc_words=0)}, "data.gopher_quality_rules.min_doc_words"),
    ({"gopher_repetition_rules": GopherRepetitionRules(dup_n_grams={5: 2.0})}, "data.gopher_repetition_rules.dup_n_grams"),
    ({"c4_rules": C4Rules(min_num_sentences=0)}, "data.c4_rules.min_num_sentences"),
    ({"fineweb_rules": FineWebRules(short_line_thr=-0.1)}, "data.fineweb_rules.short_line_thr"),
])
def test_bad_rule_values_fail_in_the_config(bad, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DataConfig(**bad)


def test_url_blocklist_rejects_domains_subdomains_and_urls(tmp_path):
    listing = tmp_path / "blocked.txt"
    listing.write_text("# spam\nspam-site.com\nads.news.co.uk\nhttps://ok-site.org/bad-page\n\n")
    assert read_blocklist(listing) == (["spam-site.com", "ads.news.co.uk"], ["https://ok-site.org/bad-page"])
    block = URLBlocklistFilter(listing)
    assert block.filter(_doc("x", url="https://www.spam-site.com/a")) == (False, "blocklisted_domain")
    assert block.filter(_doc("x", url="http://ads.news.co.uk/b")) == (False, "blocklisted_subdomain")
    assert block.filter(_doc("x", url="https://ok-site.org/bad-page")) == (False, "blocklisted_url")
    assert block.filter(_doc("x", url="https://news.co.uk/story")) is True
    assert block.filter(_doc("x", url="https://ok-site.org/good-page")) is True
    assert block.filter(_doc("no url here")) is True  # kept, counted as no_url
    assert block.stats["no_url"].total == 1


@pytest.mark.parametrize("key", ["language_model", "url_blocklist"])
def test_missing_user_file_is_a_config_error(tmp_path, key):
    with pytest.raises(ValueError, match=f"data.{key}=.*nope.bin.*no such file"):
        DataConfig(**{key: str(tmp_path / "nope.bin")})


def test_bad_executor_is_a_config_error():
    with pytest.raises(ValueError, match="data.executor='k8s'"):
        DataConfig(executor="k8s")


def write_fasttext_lid(path, vocab: dict[str, list[str]]) -> None:
    """A tiny supervised fastText model file (format version 12) that maps each language's words to its
    label. Written, not trained: lid.176.bin needs a download, and fastText 0.9.2's trainer hits
    "Encountered NaN" at random on tiny corpora (same data and seed, one thread)."""
    langs = list(vocab)
    words = ["</s>"] + [w for lang in langs for w in vocab[lang]]
    dim = len(langs)
    out = bytearray(struct.pack("<ii", 793712314, 12))  # magic, version
    # dim ws epoch minCount neg wordNgrams loss(softmax) model(supervised) bucket minn maxn lrUpdateRate; t
    out += struct.pack("<12id", dim, 5, 1, 1, 5, 1, 3, 3, 0, 0, 0, 100, 1e-4)
    entries = [(w, 0) for w in words] + [(f"__label__{lang}", 1) for lang in langs]
    out += struct.pack("<iiiqq", len(entries), len(words), len(langs), 1000, -1)
    for word, kind in entries:
        out += word.encode() + b"\0" + struct.pack("<qb", 10, kind)
    out += b"\0" + struct.pack("<qq", len(words), dim)  # input matrix: a word's row is its language
    for w in words:
        out += struct.pack(f"<{dim}f", *[float(w in vocab[lang]) for lang in langs])
    out += b"\0" + struct.pack("<qq", len(langs), dim)  # output matrix: label i reads dimension i
    for i in range(dim):
        out += struct.pack(f"<{dim}f", *[10.0 * (j == i) for j in range(dim)])
    path.write_bytes(bytes(out))


def test_language_filter_uses_a_local_fasttext_model(tmp_path):
    model = tmp_path / "lid.bin"
    write_fasttext_lid(model, {"en": "the cat dog house book was in".split(), "fr": "le chat chien maison livre dans".split()})
    block = dict(quality_blocks(DataConfig(language_model=str(model), languages=["en"]), lambda b: None))["language"]
    assert isinstance(block, LocalLanguageFilter)
    english, french = _doc("the dog was in the house with the book"), _doc("le chien et le chat dans la maison")
    assert block.filter(english) is True and english.metadata["language"] == "en"
    assert block.filter(french) == (False, "language_fr")
    strict = dict(quality_blocks(DataConfig(language_model=str(model), language_threshold=0.9999), lambda b: None))
    assert strict["language"].filter(_doc("the dog was in le chat")) == (False, "language_en")  # mixed: en ~0.95 < threshold


def _chain_corpus(tmp_path):
    """A, B, C: B overlaps A and C by 80 of 100 words (Jaccard 0.66 on 5-grams); A and C share
    60 words (0.41). Plus unrelated documents. Every word is unique (letters only: MinHash folds digits)."""
    words = ["".join("abcdefghijklmnopqrstuvwxyz"[i // 26 ** k % 26] for k in range(3)) for i in range(600)]
    texts = {"A": words[0:100], "B": words[20:120], "C": words[40:140]}
    texts |= {f"other{j}": words[200 + 100 * j : 300 + 100 * j] for j in range(3)}
    rows = [{"id": k, "text": " ".join(v)} for k, v in texts.items()]
    src = tmp_path / "chain.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return src


def _chain_run(tmp_path, guard):
    out = tmp_path / f"out{guard}"
    out.mkdir()
    cfg = DataConfig(sources=[str(_chain_corpus(tmp_path))], gopher_quality=False, gopher_repetition=False, c4=False,
                     fineweb=False, pii=False, tasks=1, workers=1, validation_fraction=0.01,
                     minhash_buckets=16, minhash_hashes_per_bucket=2,  # links pairs at Jaccard 0.4 surely
                     minhash_guard_jaccard=guard)
    m = run(cfg, {}, out)
    kept = {json.loads(line)["id"] for split in ("train", "validation")
            for path in (out / split).glob("*.jsonl.gz") for line in gzip.open(path, "rt")}
    return m, kept


def test_cluster_guard_keeps_the_unrelated_end_of_a_chain(tmp_path):
    m, kept = _chain_run(tmp_path, 0.6)
    assert m["minhash_clusters"] == 1 and m["minhash_cluster_size_max"] == 3
    assert kept == {"A", "C", "other0", "other1", "other2"}  # B ~ A removed; C is compared to A, not to B
    assert m["minhash_removed"] == 1 and m["minhash_guard_kept"] == 1
    assert m["minhash_dropped"] == 1 and m["docs_out"] == 5
    # without the guard the whole chain collapses onto A: the failure the guard exists for
    m0, kept0 = _chain_run(tmp_path, 0.0)
    assert kept0 == {"A", "other0", "other1", "other2"} and m0["minhash_guard_kept"] == 0


def _step_types(pipeline):
    return [type(step).__name__ for step in pipeline]


@pytest.mark.parametrize("executor", ["slurm", "ray"])
def test_cluster_executors_are_built_from_config_with_the_same_blocks(tmp_path, executor):
    from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
    from datatrove.executor.ray import RayPipelineExecutor

    slurm = {"partition": "cpu-long", "time": "02:00:00", "cpus_per_task": 2, "mem_per_cpu_gb": 4,
             "sbatch_args": {"account": "lm"}}
    cfg = DataConfig(executor=executor, tasks=4, slurm=SlurmConfig(**slurm))
    local = build_passes(DataConfig(tasks=4), tmp_path / "staged", tmp_path)
    passes = build_passes(cfg, tmp_path / "staged", tmp_path)
    assert [p.name for p in passes] == [p.name for p in local]
    for p, q in zip(passes, local):
        assert _step_types(p.pipeline) == _step_types(q.pipeline) and p.tasks == q.tasks
        built = make_executor(cfg, p.pipeline, p.name, p.tasks, p.workers, tmp_path / "logs" / p.name)
        local_built = make_executor(DataConfig(tasks=4), q.pipeline, q.name, q.tasks, q.workers, tmp_path / "l" / q.name)
        assert isinstance(local_built, LocalPipelineExecutor)
        assert built.world_size == local_built.world_size == p.tasks
        assert _step_types(built.pipeline) == _step_types(local_built.pipeline)
        if executor == "slurm":
            assert isinstance(built, SlurmPipelineExecutor)
            sbatch = built.get_sbatch_args(max_array=p.tasks)  # the #SBATCH lines of the job script
            assert {k: sbatch[k] for k in ("partition", "time", "cpus-per-task", "mem-per-cpu", "account", "job-name")} == {
                "partition": "cpu-long", "time": "02:00:00", "cpus-per-task": 2, "mem-per-cpu": "4G", "account": "lm",
                "job-name": f"data_{p.name}"}
            assert sbatch["array"] == f"0-{p.tasks - 1}"
        else:
            assert isinstance(built, RayPipelineExecutor) and built.cpus_per_task == 1
    assert passes[0].tasks == 4 and passes[3].tasks == cfg.minhash_buckets
