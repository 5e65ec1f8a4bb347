"""Data blocks: FineWeb, URL blocklist, language id, the MinHash cluster guard, executors from config."""
import gzip
import json
import struct
from dataclasses import asdict

import pytest
from datatrove.data import Document

from components.context import StageContext
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
    assert "url_blocklist" not in blocks  # off unless given a file
    assert type(blocks["language"]).__name__ == "BundledLanguageFilter"  # on by default: py3langid's bundled model


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
                     language=False, toxicity=False,  # the chain is made-up words, not a language
                     fineweb=False, pii=False, tasks=1, workers=1, validation_fraction=0.01,
                     minhash_buckets=16, minhash_hashes_per_bucket=2,  # links pairs at Jaccard 0.4 surely
                     minhash_guard_jaccard=guard)
    m = run(cfg, {}, StageContext.local(out))
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
    from components.data.ingest.step import SourceReader
    from components.data.ingest.units import plan_units

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"text": "x"}) + "\n")
    units = plan_units(DataConfig(sources=[str(src)]).source_specs(), 4, tmp_path / "embedded.jsonl")
    reader = SourceReader(units, "text", 1000, False, str(tmp_path / "quarantine"))
    local = build_passes(DataConfig(tasks=4), reader, tmp_path)
    passes = build_passes(cfg, reader, tmp_path)
    assert [p.name for p in passes] == [p.name for p in local]
    assert passes[0].pipeline[0] is reader and len(units) == 4  # reading and extraction run in the cluster's tasks
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
    assert {p.name: p.tasks for p in passes} == {"1_quality": 4, "2_exact_dedup": 1, "3_minhash_buckets": cfg.minhash_buckets,
                                                 "4_minhash_clusters": 1, "5_minhash_guard": 1, "6_final": 4}


# --- the faster blocks decide as datatrove's own (components/data/words.py, filters.py, blocks.py) ---

EDGE_TEXTS = [
    "", " ", "\n\n", "one", "a\u00a0b  c\t\td\n\ne f", "x IS_ALPHA y. Second sentence here!",
    "don't stop... we cannot, won't we? gonna wanna 5km 3.5% $20 e-mail U.S.A. #tag @user",
    "Ünïcödé wörds — dashes – and “quotes”. Ça va? Straße! 東京 は 大きい。",
    "The call returns {} for an empty table, as the module's documentation says it does.",
    "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
    "Read the [1] citation [edit] here and [citation needed] there, in this line of text. " * 6,
    "Home\nAbout us\nContact\n" * 10 + "A long sentence that ends properly, as sentences do.",
    "This line is repeated in the text.\nThis line is repeated in the text.\nAnother line, not.\n" * 4,
    "#### ... ### … several hash signs and ellipses ... here …\n" * 12,
    "word " * 300,
    "Enable javascript to see this page, and please read our cookie policy first.\n" + "Real prose goes on. " * 40,
    "\n".join(f"- item {i} of the list, which is long enough to count." for i in range(40)),
    "First paragraph has sentences. Two of them.\n\n\nSecond paragraph, after blank lines.\n\n" * 5,
]


@pytest.fixture(scope="module")
def embedded_texts(tmp_path_factory) -> list[str]:
    from components.data import embedded

    path = tmp_path_factory.mktemp("embedded") / "embedded.jsonl"
    embedded.build(path, None, seed=0)
    texts = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the planted malformed lines
        if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"].strip():
            texts.append(row["text"])
    assert len(texts) > 400
    return texts


def test_warm_tokenizer_splits_words_and_sentences_as_datatrove(embedded_texts):
    from datatrove.utils.text import TextNormConfig, simplify_text
    from datatrove.utils.word_tokenizers import load_word_tokenizer

    from components.data.words import WarmSpaCyTokenizer

    stock, warm = load_word_tokenizer("en"), WarmSpaCyTokenizer()
    stock.word_tokenize("IS_ALPHA")  # datatrove keeps this string the first time only (components/data/words.py)
    simplified = [simplify_text(t, TextNormConfig()) for t in embedded_texts[:150] + EDGE_TEXTS]  # what MinHash splits
    for text in embedded_texts + EDGE_TEXTS + simplified:
        assert warm.word_tokenize(text) == stock.word_tokenize(text), text[:80]
    lines = [line for t in embedded_texts[:60] + EDGE_TEXTS for line in t.splitlines()] + EDGE_TEXTS
    for line in lines:  # C4 counts sentences per line
        assert warm.span_tokenize(line) == stock.span_tokenize(line), line[:80]
        assert warm.sent_tokenize(line) == stock.sent_tokenize(line), line[:80]
    # past max_lexemes the pipeline starts again from spaCy's base vocabulary, splitting the same way
    nlp = warm.tokenizer
    limited = WarmSpaCyTokenizer(max_lexemes=len(nlp.vocab) + 5)
    new_words = " ".join(f"neverseen{i}word" for i in range(10)) + ". " + embedded_texts[0]
    assert limited.word_tokenize(new_words) == stock.word_tokenize(new_words)
    assert limited.tokenizer is not nlp and limited.word_tokenize(embedded_texts[1]) == stock.word_tokenize(embedded_texts[1])


def _verdicts(block, texts: list[str]) -> list:
    """(result, text after) per document, and the block's counters."""
    out = []
    for i, text in enumerate(texts):
        doc = Document(text=text, id=str(i))
        out.append((block.filter(doc), doc.text))
    return out, {k: v.total for k, v in block.stats.stats.items()}


@pytest.mark.parametrize("rules", [
    {},
    {"gopher_repetition_rules": GopherRepetitionRules(dup_para_frac=None, dup_line_frac=None, top_n_grams={2: 0.03, 3: 0.02, 4: 0.02},
                                                      dup_n_grams={5: 0.01, 7: 0.005, 10: 0.002}),
     "c4_rules": C4Rules(min_num_sentences=12, filter_no_terminal_punct=True, filter_curly_bracket=False),
     "fineweb_rules": FineWebRules(new_line_ratio=0.04, line_punct_exclude_zero=True, char_duplicates_ratio=0.2)},
    {"c4_rules": C4Rules(split_paragraph=False, min_num_sentences=3, remove_citations=False),
     "fineweb_rules": FineWebRules(new_line_ratio=0.01, short_line_thr=0.9)},
])
def test_faster_filters_decide_as_datatrove(embedded_texts, rules):
    """Same verdict and reason, same text out (C4 rewrites it), same counters, for every document. Both
    sides split words with the warm tokenizer (compared with datatrove's above): this compares the rules."""
    from datatrove.pipeline.filters import C4QualityFilter, FineWebQualityFilter, GopherRepetitionFilter

    from components.data.pipelines import n_gram_pairs
    from components.data.words import WarmSpaCyTokenizer

    cfg = DataConfig(**rules)
    ours = dict(quality_blocks(cfg, lambda block: None))
    r, words = cfg.gopher_repetition_rules, WarmSpaCyTokenizer()
    stock = {"gopher_repetition": GopherRepetitionFilter(language=words, **{
                 **asdict(r), "top_n_grams": n_gram_pairs(r.top_n_grams), "dup_n_grams": n_gram_pairs(r.dup_n_grams)}),
             "c4": C4QualityFilter(language=words, **asdict(cfg.c4_rules)),
             "fineweb": FineWebQualityFilter(language=words, **asdict(cfg.fineweb_rules))}
    texts = embedded_texts + EDGE_TEXTS
    c4_texts = [text for verdict, text in _verdicts(C4QualityFilter(language=words, **asdict(cfg.c4_rules)), texts)[0]
                if verdict is True]
    for name, block in stock.items():
        inputs = c4_texts if name == "fineweb" else texts  # FineWeb sees C4's output in the stage
        mine, theirs = _verdicts(ours[name], inputs), _verdicts(block, inputs)
        assert mine[0] == theirs[0], name
        if name == "c4":
            assert mine[1] == {k: v for k, v in theirs[1].items() if k.startswith("line-")}, name
        outcomes = {v if v is True else v[1] for v, _ in mine[0]}
        assert len(outcomes) > 1, f"{name}: nothing dropped, the comparison tests little"


def test_n_gram_counts_match_datatrove_on_concatenation_collisions():
    """datatrove joins a duplicated n-gram's words without a separator ('ab'+'c' == 'a'+'bc'): kept."""
    import random

    from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams
    from itertools import accumulate

    from components.data.filters import duplicated_n_gram_chars, top_n_gram_chars

    rng = random.Random(0)
    for _ in range(2000):
        words = [rng.choice(["a", "ab", "b", "bc", "c", "abc"]) for _ in range(rng.randint(0, 40))]
        joined, starts = "".join(words), [0, *accumulate(len(w) for w in words)]
        spaced, spaced_starts = " ".join(words), [0, *accumulate(len(w) + 1 for w in words)]
        for n in range(1, 11):
            assert duplicated_n_gram_chars(joined, starts, n) == find_all_duplicate(words, n)
            grams = get_n_grams(words, n)
            assert top_n_gram_chars(spaced, spaced_starts, n) == (find_top_duplicate(grams) if grams else None)


def test_exact_dedup_in_parts_keeps_what_one_task_keeps(tmp_path):
    from components.data.blocks import ExactDedupFilter, ExactDedupHashes, ExactDedupIndex, ExactDedupRemove

    texts = ["Alpha text here.", "alpha   TEXT here", "Beta text.", "Gamma.", "beta text", "Alpha text here.", "Delta"]
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    shards = [docs[0::3], docs[1::3], docs[2::3]]  # as staging deals them to 3 tasks
    one_task = [d.id for d in ExactDedupFilter().run(iter([d for shard in shards for d in shard]))]
    for rank, shard in enumerate(shards):
        assert [d.id for d in ExactDedupHashes(str(tmp_path / "h")).run(iter(shard), rank, 3)] == [d.id for d in shard]
    ExactDedupIndex(str(tmp_path / "h"), str(tmp_path / "r"), tasks=3).run()
    parts = [d.id for rank, shard in enumerate(shards) for d in ExactDedupRemove(str(tmp_path / "r")).run(iter(shard), rank, 3)]
    assert parts == one_task == ["0", "3", "6", "4"]  # read in task order 0 3 6 | 1 4 | 2 5: 1 and 5 repeat 0, 2 repeats 4


def test_dropping_duplicates_signatures_equals_signing_the_deduplicated_stream(tmp_path):
    from datatrove.pipeline.dedup import MinhashDedupSignature

    from components.data.blocks import SignaturesWithoutDuplicates
    from components.data.pipelines import minhash_config

    base = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat"
    texts = [base, "too short", base, f"{base} again and again", "another document with enough words in it to sign",
             base, "tiny", f"{base} again and again", "a last document that has plenty of words to sign"]
    removed = [2, 5, 7]  # copies; 1 and 6 have no signature (under 5 words) but keep their numbers
    mh = minhash_config(DataConfig(minhash_buckets=3, minhash_hashes_per_bucket=2))
    MinhashDedupSignature(str(tmp_path / "all"), config=mh).run(iter(_docs(texts)), 0, 1)
    MinhashDedupSignature(str(tmp_path / "kept"), config=mh).run(
        iter(_docs([t for i, t in enumerate(texts) if i not in removed])), 0, 1)
    (tmp_path / "remove").mkdir()
    (tmp_path / "remove" / "000000.remove").write_bytes(struct.pack(f"<{len(removed)}I", *removed))
    SignaturesWithoutDuplicates(str(tmp_path / "all"), str(tmp_path / "out"), str(tmp_path / "remove"), mh, tasks=1).run()
    for bucket in range(3):
        name = f"bucket_{bucket:03d}/00000.minhash.sig"
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "kept" / name).read_bytes()
        assert len((tmp_path / "out" / name).read_bytes()) < len((tmp_path / "all" / name).read_bytes())


def _docs(texts):
    return [Document(text=t, id=str(i)) for i, t in enumerate(texts)]


def test_task_file_reader_reads_its_own_file_only(tmp_path):
    from components.data.blocks import TaskFileReader

    for rank in (0, 2):  # task 1 wrote nothing
        with gzip.open(tmp_path / f"{rank:05d}.jsonl.gz", "wt") as f:
            f.write(json.dumps({"id": f"from{rank}", "text": "x"}) + "\n")
    reader = TaskFileReader(str(tmp_path))
    assert [[d.id for d in reader.run(None, rank, 3)] for rank in range(3)] == [["from0"], [], ["from2"]]


def test_a_task_left_empty_by_the_filters_keeps_the_numbering(tmp_path):
    """Task 1's documents are all dropped by Gopher quality (too short): tasks 0 and 2 still read their own
    files, and exact and near duplicates across tasks are found."""
    words = ["".join("abcdefghijklmnopqrstuvwxyz"[i // 26 ** k % 26] for k in range(4)) for i in range(200)]
    prose = [" ".join(words[60 * i:60 * i + 60]) + " the end of it, and of the text." for i in range(3)]
    near = prose[2].replace(words[125], "changed")  # letters only: MinHash folds digits
    rows = [prose[0], "short", prose[1], prose[2], "tiny", prose[0], near, "small", "four"]  # task: index % 3
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(rows)))
    out = tmp_path / "out"
    out.mkdir()
    m = run(DataConfig(sources=[str(src)], tasks=3, workers=1, gopher_repetition=False, c4=False, fineweb=False,
                       language=False, pii=False, validation_fraction=0.01, minhash_buckets=16, minhash_hashes_per_bucket=2), {},
            StageContext.local(out))
    kept = {json.loads(line)["id"] for split in ("train", "validation")
            for path in (out / split).glob("*.jsonl.gz") for line in gzip.open(path, "rt")}
    assert kept == {"d0", "d2", "d3"}  # read as d0 d3 d6 | d1 d4 d7 | d2 d5 d8: d5 copies d0, d6 is near d3
    assert (m["gopher_quality_dropped"], m["exact_dedup_dropped"], m["minhash_dropped"]) == (4, 1, 1)


# Prose as people write it: commas, brackets, quotes, figures; every sentence passes Gopher's paper rule.
CLUB_QUESTIONS = (
    "Book club questions (for week 3): Who, in the end, is the narrator? Why does she say \"never\" - twice - "
    "on page 212? Is the house, as the title says, \"a prison\"; or is it, perhaps, a refuge? Compare chapters "
    "4, 9 and 17. What does the river mean to Ana, to Tom, and to the reader? (Think of 1987, the flood year.) "
    "Does the ending work? Why, or why not? Would you, as the editor, cut the epilogue? Share your answers, "
    "your doubts, and your favourite lines, by Friday.")


def test_gopher_alpha_rule_counts_whitespace_words_as_the_paper():
    """datatrove's spaCy tokens make each comma a word without a letter: this prose has 82% of its
    whitespace words with a letter, and under 80% of its tokens."""
    from datatrove.pipeline.filters import GopherQualityFilter

    from components.data.words import WarmSpaCyTokenizer

    doc = _doc(CLUB_QUESTIONS)
    words = CLUB_QUESTIONS.split()
    assert sum(any(c.isalpha() for c in w) for w in words) / len(words) >= 0.8
    assert GopherQualityFilter(language=WarmSpaCyTokenizer()).filter(doc) == (False, "gopher_below_alpha_threshold")
    blocks = dict(quality_blocks(DataConfig(), lambda block: None))
    assert blocks["gopher_quality"].filter(doc) is True  # the default: the paper's words
    tokens = dict(quality_blocks(DataConfig(gopher_alpha_words="tokens"), lambda block: None))
    assert tokens["gopher_quality"].filter(doc) == (False, "gopher_below_alpha_threshold")  # datatrove's, kept as an option
    figures = " ".join(["1990 2004 31.5% 12,400 and the 88,000 of 2,600 to 4,400"] * 12)  # a table of figures still fails
    assert blocks["gopher_quality"].filter(_doc(figures)) == (False, "gopher_below_alpha_threshold")
    with pytest.raises(ValueError, match="data.gopher_alpha_words"):
        DataConfig(gopher_alpha_words="spacy")


def _news_page(n: int, shared: str) -> str:
    body = "".join(f"<p>Story {n}, paragraph {i}: the council met on Tuesday and voted {i + n} to {i} on the "
                   f"plan for the river bank, which residents of ward {n} had asked for since {1990 + i}.</p>"
                   for i in range(6))
    return (f"<html><head><title>Local news {n}</title></head><body><nav><a href='/'>Home</a> <a href='/n'>News</a>"
            f"</nav><article><h1>Council vote number {n}</h1>{shared}{body}{shared}</article>"
            "<footer>Copyright The Local Paper. All rights reserved.</footer></body></html>")


def test_html_extraction_does_not_depend_on_page_order():
    """Pages of one site repeat paragraphs (a standfirst, a correction notice); trafilatura's
    deduplicate cache dropped them from the pages read after the first ones."""
    from components.data.ingest.web import HtmlExtractor

    shared = ("<p>Correction: an earlier version of this story misstated the date of the meeting, which was "
              "held on Tuesday evening at the town hall and was open to the public.</p>")
    pages = [_news_page(n, shared) for n in range(8)]
    with HtmlExtractor() as forward:
        first = [forward(html) for html in pages]
    with HtmlExtractor() as backward:
        second = [backward(html) for html in reversed(pages)][::-1]
    assert first == second
    assert all(text is not None and text.count("Correction: an earlier version") == 2 for text, _ in first)


def test_html_pages_have_their_own_size_limit(tmp_path):
    from components.data.ingest.web import HtmlExtractor, read_html

    page = tmp_path / "long.html"
    scripts = ("<script>var x = '" + "x" * 3000 + "';</script>") * 400  # ~1.2 MB of markup around a short article
    page.write_text(_news_page(1, "").replace("</body>", scripts + "</body>"), encoding="utf-8")
    size = page.stat().st_size
    assert size > DataConfig().max_line_bytes  # the old shared limit quarantined such a page
    with HtmlExtractor(max_html_bytes=DataConfig().max_html_bytes) as extract:
        doc, bad = read_html(page, "web", DataConfig().max_line_bytes, str(page), extract)
    assert bad is None and "Council vote number 1" in doc["text"]
    with HtmlExtractor(max_html_bytes=size - 1) as extract:
        doc, bad = read_html(page, "web", DataConfig().max_line_bytes, str(page), extract)
    assert doc is None and bad["reason"] == f"page_too_long ({size} bytes > data.max_html_bytes)"
    with pytest.raises(ValueError, match="data.max_html_bytes"):
        DataConfig(max_html_bytes=0)


def test_data_quality_benchmark_scores_drops_and_pii(tmp_path):
    import sys

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "benchmarks"))
    import data_quality

    prose = CLUB_QUESTIONS + " Mail ann.lee@example.org or call (02) 9876 5432 to join us, and bring a friend."
    rows = [
        {"text": prose, "keep": True, "pii": [{"type": "EMAIL", "value": "ann.lee@example.org"},
                                              {"type": "PHONE", "value": "(02) 9876 5432"},
                                              {"type": "PHONE", "value": "0400 000 000"}]},  # not in the text: a miss
        {"text": "Home\nAbout\nShop\nCart", "keep": False},
        {"text": "Home\nLogin\nSign up\nHelp", "keep": True},  # a wrong label: every drop of it is counted wrong
    ]
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = data_quality.read_labelled(path)
    table = data_quality.drop_table(docs, data_quality.block_verdicts(DataConfig(), docs))
    gopher = next(row.split() for row in table if row.startswith("gopher_quality"))
    assert gopher[1:5] == ["2", "1", "0.500", "1.000"]  # drops, right, precision, recall
    pii = data_quality.pii_table(DataConfig(), docs)
    assert any(row.split() == ["EMAIL", "1", "1", "1.000", "0"] for row in pii)
    assert any(row.split() == ["PHONE", "2", "1", "0.500", "0"] for row in pii)
    path.write_text(json.dumps({"text": "x", "keep": "yes"}) + "\n")
    with pytest.raises(SystemExit, match=r"labelled.jsonl:1: field 'keep'"):
        data_quality.read_labelled(path)
