"""Content blocks that work offline by default (language id, toxicity) and per-source block settings."""
import gzip
import json

import pytest
from datatrove.data import Document

from benchmarks.content_filters import NOT_ENGLISH  # the benchmark's texts, one copy
from components.context import StageContext
from components.data.config import DataConfig
from components.data.pipelines import DROPPING_BLOCKS, quality_blocks, rejected_dir
from components.data.run import run

ENGLISH = ("The town council approved next year's budget last night after a long debate. Residents of the "
           "northern district have waited years for the primary school to be repaired, and work should begin "
           "in the spring once the contractor has been chosen.")
# a forum thread: neutral post headers, offensive posts (what a header-driven rule misses)
THREAD = ("Posted by darkwolf77 on 12 March\nYou are a fucking idiot and everyone here knows it.\n"
          "Reply from kingpin\nShut the fuck up, you stupid piece of shit.\n"
          "Reply from darkwolf77\nGo fuck yourself, moron, nobody asked you.")


def _doc(text, source=None, doc_id="d"):
    return Document(text=text, id=doc_id, metadata={} if source is None else {"source": source})


def _blocks(**cfg):
    return dict(quality_blocks(DataConfig(**cfg), lambda block: None))


def test_language_id_is_on_by_default_offline_and_names_the_language_found():
    language = _blocks()["language"]
    english = _doc(ENGLISH)
    assert language.filter(english) is True and english.metadata["language"] == "en"
    for code, text in NOT_ENGLISH.items():
        assert language.filter(_doc(text)) == (False, f"language_{code}")
    assert language.filter(_doc("DNA stands for deoxyribonucleic acid.")) is True  # 5 words: not judged
    assert language.stats["too_short_to_judge"].total == 1
    french_kept = _blocks(languages=["en", "fr"])["language"]
    assert french_kept.filter(_doc(NOT_ENGLISH["fr"])) is True and french_kept.filter(_doc(NOT_ENGLISH["de"]))[0] is False
    assert "language" not in _blocks(language=False)


def test_language_id_keeps_real_english_web_text(samples):
    language = _blocks()["language"]
    docs = [json.loads(line) for line in (samples / "pretrain" / "ccnet_en_head-0091_dolma.jsonl").open()]
    assert [language.filter(_doc(d["text"])) for d in docs] == [True] * len(docs)


def test_toxicity_drops_an_offensive_thread_and_keeps_an_article_with_one_insult():
    toxicity = _blocks()["toxicity"]
    assert toxicity.filter(_doc(THREAD)) == (False, "toxic")
    article = "\n".join([ENGLISH] * 4 + ["One angry reader wrote: you are an idiot.", ENGLISH])
    assert toxicity.filter(_doc(article)) is True  # one offensive line in six paragraphs: under 25% of the words
    assert toxicity.filter(_doc(ENGLISH)) is True
    lenient = _blocks(toxicity_max_fraction=1.0)["toxicity"]
    assert lenient.filter(_doc(THREAD)) is True
    batch = [_doc(THREAD), _doc(ENGLISH), _doc(""), _doc(THREAD)]  # one model call for the batch, same verdicts
    assert toxicity.filter_batch(batch) == [(False, "toxic"), True, True, (False, "toxic")]
    assert "toxicity" in DROPPING_BLOCKS and rejected_dir("toxicity") == "03_toxicity"


def test_source_block_settings_are_checked_at_config_time(tmp_path):
    play = tmp_path / "play.txt"
    play.write_text("HAMLET. To be.\n")
    with pytest.raises(ValueError, match=r"data.sources\[0\].blocks.c4_lines=False: no such block for source '.*play.txt'"):
        DataConfig(sources=[{"path": str(play), "blocks": {"c4_lines": False}}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].blocks.c4.min_words=1: no such rule of c4"):
        DataConfig(sources=[{"path": str(play), "settings": {"c4": {"min_words": 1}}}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].blocks.c4.min_words_per_line=0: must be > 0"):
        DataConfig(sources=[{"path": str(play), "blocks": {"c4": {"min_words_per_line": 0}}}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].blocks.toxicity.threshold=2"):
        DataConfig(sources=[{"path": str(play), "blocks": {"toxicity": {"threshold": 2}}}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].blocks.url_blocklist=.*turns the URL blocklist on, but data.url_blocklist names no file"):
        DataConfig(sources=[{"path": str(play), "blocks": {"url_blocklist": True}}])
    with pytest.raises(ValueError, match=r"data.sources\[0\].blocks=\['c4'\]: must be a mapping"):
        DataConfig(sources=[{"path": str(play), "blocks": ["c4"]}])
    cfg = DataConfig(sources=[{"path": str(play), "blocks": {"c4": False}, "settings": {"gopher_quality": {"min_doc_words": 5}}}])
    assert cfg.specs[0].blocks == {"c4": False, "gopher_quality": {"min_doc_words": 5}}
    assert cfg.block_rules("gopher_quality", cfg.specs[0].blocks["gopher_quality"])["min_doc_words"] == 5


def test_per_source_block_picks_each_documents_settings():
    from components.data.filters import C4Filter, PerSourceBlock

    play_lines = "HAMLET.\nTo be, or not to be.\nOPHELIA.\nMy lord?"

    block = PerSourceBlock("c4", C4Filter(min_num_sentences=1), {"play": None, "loose": C4Filter(min_words_per_line=1,
                                                                                                  min_num_sentences=1)})
    web, play, loose = _doc(play_lines, "web"), _doc(play_lines, "play"), _doc(play_lines, "loose")
    assert block.filter_batch([web, play, loose]) == [True, True, True]
    assert web.text == "To be, or not to be."  # the web rule removed the short lines
    assert play.text == play_lines  # off for the play: untouched
    assert loose.text == play_lines  # one-word lines allowed for this source
    assert block.stats["skipped_by_source"].total == 1 and block.stats["line-filter-too_few_words"].total == 3


def _kept(out):
    return {json.loads(line)["metadata"]["source"]: json.loads(line)["text"] for split in ("train", "validation")
            for path in sorted((out / split).glob("*.jsonl.gz")) for line in gzip.open(path, "rt")}


def test_a_play_keeps_its_lines_when_its_source_turns_c4_off_while_web_text_is_cleaned(tmp_path):
    """Through the stage: the same kind of text from two sources, C4's line rule off for one of them."""
    scene = "\n".join(f"HAMLET.\nSpeak the speech, I pray you, as I pronounced it to you, trippingly on the tongue {i}.\n"
                      f"OPHELIA.\nGood my lord, how does your honour for this many a day {i}?\nExit." for i in range(12))
    web = scene + "\nAccept all cookies to continue and read our privacy policy."
    (tmp_path / "play.txt").write_text(scene)
    (tmp_path / "web.jsonl").write_text(json.dumps({"id": "page", "text": web}) + "\n")
    (tmp_path / "rude.jsonl").write_text(json.dumps({"id": "rude", "text": scene + "\nWhat a Total Git you are."}) + "\n")
    (tmp_path / "badwords.txt").write_text("total git\n")  # also: the bad-words block on a local list, in the drop reasons
    cfg = DataConfig(sources=[{"path": str(tmp_path / "play.txt"), "name": "play", "blocks": {"c4": False}},
                              {"path": str(tmp_path / "web.jsonl"), "name": "web"},
                              {"path": str(tmp_path / "rude.jsonl"), "name": "rude"}],
                     c4_badwords_file=str(tmp_path / "badwords.txt"), gopher_quality=False,  # its alpha rule counts punctuation as words (issue 13: another fix)
                     gopher_repetition=False, fineweb=False, exact_dedup=False, minhash=False, pii=False,
                     tasks=1, workers=1)
    m = run(cfg, {}, StageContext.local(tmp_path / "out"))
    kept = _kept(tmp_path / "out")
    assert kept["play"] == scene  # every speaker tag and short line kept
    assert "HAMLET." not in kept["web"] and "cookies" not in kept["web"] and "trippingly" in kept["web"]
    assert m["c4_docs_in"] == 3 and m["docs_out"] == 2 and "rude" not in kept
    assert m["drop_reasons"]["c4_badwords"] == {"c4_badwords": 1} and m["c4_badwords_docs_in"] == 3


def test_c4_bad_words_run_on_a_local_list_with_datatroves_word_boundaries(tmp_path):
    words = tmp_path / "badwords.txt"
    words.write_text("darn\nTotal Git\n\n")
    assert "c4_badwords" not in _blocks()  # off by default: no list, no download
    badwords = _blocks(c4_badwords_file=str(words))["c4_badwords"]
    assert badwords.filter(_doc("Well, DARN it.")) == (False, "c4_badwords")  # any case, punctuation around it
    assert badwords.filter(_doc("You total git")) == (False, "c4_badwords")  # a phrase, at the end
    assert badwords.filter(_doc("He darned socks near the total gitlab outage.")) is True  # inside words: no match
    assert rejected_dir("c4_badwords") == "07_c4_badwords"  # right after C4's own rules
    with pytest.raises(ValueError, match=r"data.c4_badwords_file=.*missing.txt.*no such file"):
        DataConfig(c4_badwords_file=str(tmp_path / "missing.txt"))
    play = tmp_path / "play.txt"
    play.write_text("HAMLET. To be.\n")
    with pytest.raises(ValueError, match=r"blocks.c4_badwords=.*turns the c4_badwords block on, but data.c4_badwords_file names no file"):
        DataConfig(sources=[{"path": str(play), "blocks": {"c4_badwords": True}}])
    off = _blocks(c4_badwords_file=str(words), sources=[{"path": str(play), "name": "play", "blocks": {"c4_badwords": False}}])
    assert off["c4_badwords"].filter_batch([_doc("darn", "play")]) == [True]  # a source can switch it off
