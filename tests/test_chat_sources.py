"""sft.sources / align.sources as users have them: mapping entries, GSM8K / Self-Instruct shapes, parquet and
csv, unreadable files and wrong role orders quarantined with a rule, length policy, seeded mixing."""
import gzip
import json
import logging

import pytest
import torch

from components.align.config import AlignConfig
from components.chat.formats import FormatError, preference_record, sft_record
from components.chat.sources import ChatSource, parse_sources, read_source, select
from components.context import StageContext
from components.model.config import ModelConfig
from components.sft.config import SFTConfig
from components.train.losses import IGNORE
from tests.tiny import save_tiny_model, tiny_tokenizer

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)

# real-shaped records (the published fields, shortened content)
GSM8K = [{"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                      "How many clips did Natalia sell altogether in April and May?",
          "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                    "altogether in April and May.\n#### 72"},
         {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
                      "How much did she earn?",
          "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
                    "$<<0.2*50=10>>10.\n#### 10"}]
SELF_INSTRUCT = {"id": "seed_task_0", "name": "breakfast_suggestion",
                 "instruction": "Is there anything I can eat for a breakfast that doesn't include eggs?",
                 "instances": [{"input": "", "output": "Yes, oatmeal with fruit, or a smoothie."},
                               {"input": "I am vegan.", "output": "Tofu scramble or overnight oats."}],
                 "is_classification": False}


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(entries, stage="sft", strict=False):
    out = [read_source(s, stage, strict) for s in parse_sources(entries, stage, "auto")]
    return [item for kept, _, _ in out for item in kept], [q for _, bad, _ in out for q in bad], [c for *_, c in out]


# --- 1. mapping form, new shapes, tables --------------------------------------------------------------

def test_gsm8k_is_detected_and_mappable(tmp_path):
    path = _jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    detected, bad, _ = _read([path])
    mapped, _, _ = _read([{"path": path, "prompt_key": "question", "response_key": "answer"}])
    assert not bad and len(detected) == 2
    assert [ex for ex, _ in detected] == [ex for ex, _ in mapped]
    assert detected[0][0]["messages"][1]["content"].endswith("#### 72")


def test_self_instruct_tasks_give_one_example_per_instance(tmp_path):
    kept, bad, counts = _read([_jsonl(tmp_path / "seed_tasks.jsonl", [SELF_INSTRUCT])])
    assert not bad and counts[0]["read"] == 1 and counts[0]["kept"] == 2
    assert [w.rsplit(":", 1)[1] for _, w in kept] == ["1.instances[0]", "1.instances[1]"]
    assert kept[1][0]["messages"][0]["content"].endswith("doesn't include eggs?\n\nI am vegan.")


def test_parquet_and_csv_sources_read_with_a_mapping(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(GSM8K), tmp_path / "train-00000-of-00001.parquet")
    (tmp_path / "qa.csv").write_text('q,a,sys\n"What is 2+2, exactly?","4","Be brief."\n')
    kept, bad, _ = _read([str(tmp_path / "*.parquet"),
                          {"path": str(tmp_path / "qa.csv"), "prompt_key": "q", "response_key": "a", "system_key": "sys"}])
    assert not bad and len(kept) == 3
    assert kept[2][0]["messages"] == [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "What is 2+2, exactly?"},
                                      {"role": "assistant", "content": "4"}]
    assert kept[2][1].endswith("qa.csv:row 1")


def test_a_saved_hf_dataset_is_a_source_with_its_split(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K), "test": datasets.Dataset.from_list(GSM8K[:1])}
                         ).save_to_disk(str(tmp_path / "gsm8k"))
    kept, bad, _ = _read([{"path": str(tmp_path / "gsm8k"), "split": "test"}])
    assert not bad and len(kept) == 1 and kept[0][1].endswith("gsm8k[test][0]")
    _, bad, _ = _read([{"path": str(tmp_path / "gsm8k"), "split": "validation"}])
    assert "no split 'validation'" in bad[0]["reason"]
    with pytest.raises(ValueError, match=r"sft\.sources='.*notes'"):
        (tmp_path / "notes").mkdir()
        SFTConfig(sources=[str(tmp_path / "notes")])


def test_preference_mapping_and_a_top_level_system_field(tmp_path):
    rows = [{"instruction": "Name a prime.", "good": "7", "bad": "8", "system": "Answer with a number."}]
    kept, bad, _ = _read([{"path": _jsonl(tmp_path / "p.jsonl", rows), "prompt_key": "instruction",
                           "chosen_key": "good", "rejected_key": "bad"}], "align")
    assert not bad and kept[0][0] == {"prompt": [{"role": "system", "content": "Answer with a number."},
                                                 {"role": "user", "content": "Name a prime."}],
                                      "chosen": "7", "rejected": "8"}
    sharegpt = sft_record({"system": "You are terse.", "conversations": [
        {"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}, "x")
    assert sharegpt["messages"][0] == {"role": "system", "content": "You are terse."}  # kept, no longer dropped


@pytest.mark.parametrize("entry, key", [
    ({"path": "P", "prompt_key": 3}, r"sft\.sources\[0\]\.prompt_key"),
    ({"path": "P", "promt_key": "question"}, r"unknown key sft\.sources\[0\]\.promt_key.*prompt_key"),
    ({"path": "P", "cap": 0}, r"sft\.sources\[0\]\.cap"),
    ({"path": "P", "format": "gsm"}, r"sft\.sources\[0\]\.format"),
    ({"path": "P", "format": "alpaca", "prompt_key": "q"}, r"sft\.sources\[0\]\.format.*field keys"),
    ({"prompt_key": "q"}, r"sft\.sources\[0\]\.path"),
    ({"path": "P", "chosen_key": "c"}, r"unknown key sft\.sources\[0\]\.chosen_key"),
])
def test_a_bad_mapping_fails_at_config_time_naming_the_key(tmp_path, entry, key):
    path = _jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    entry = {k: (path if v == "P" else v) for k, v in entry.items()}
    with pytest.raises(ValueError, match=key):
        SFTConfig(sources=[entry])


def test_weights_must_be_all_or_none_and_plain_paths_still_work(tmp_path):
    path = _jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    with pytest.raises(ValueError, match=r"align\.sources\[1\]\.weight"):
        AlignConfig(sources=[{"path": path, "weight": 2}, {"path": path, "name": "again"}])
    assert SFTConfig(sources=[path]).chat_sources[0].files[0].name == "gsm8k.jsonl"


def test_mapping_entries_key_on_file_content(tmp_path):
    from components.artifacts import stage_key
    from components.stages import STAGES

    path = _jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    key = lambda: stage_key("sft", SFTConfig(sources=[{"path": path, "cap": 5}]), {"pretrain": "p"},  # noqa: E731
                            STAGES["sft"].module)
    before = key()
    _jsonl(tmp_path / "gsm8k.jsonl", GSM8K[:1])
    assert key() != before


# --- 2. unreadable files and role orders: quarantined with file, line and rule ----------------------------

def test_unreadable_files_are_quarantined_not_raised(tmp_path):
    good = json.dumps(GSM8K[0]).encode()
    (tmp_path / "latin1.jsonl").write_bytes(good + b"\n" + '{"question": "caf\xe9?", "answer": "x"}'.encode("latin-1") + b"\n")
    (tmp_path / "latin1.json").write_bytes(b'[{"question": "caf\xe9?", "answer": "x"}]')
    (tmp_path / "cut.jsonl.gz").write_bytes(gzip.compress((good + b"\n") * 50)[:-30])
    (tmp_path / "broken.json").write_text('[{"question": "q", "answer": "a"},\n {"question": ')
    kept, bad, counts = _read([str(tmp_path / n) for n in ("latin1.jsonl", "latin1.json", "cut.jsonl.gz", "broken.json")])
    rules = {q["where"].rsplit("/", 1)[1]: q["rule"] for q in bad}
    assert rules == {"latin1.jsonl:2": "unreadable", "latin1.json": "unreadable", "cut.jsonl.gz": "unreadable",
                     "broken.json": "invalid_json"}
    assert "broken.json:2: invalid JSON" in next(q["reason"] for q in bad if q["rule"] == "invalid_json")
    assert len(kept) > 1 + 10  # the good line, and the lines of the .gz read before its cut
    assert sum(c["read"] for c in counts) == len(kept) + len(bad)  # every record read is accounted for
    with pytest.raises(FormatError, match=r"latin1\.jsonl:2: not UTF-8"):
        _read([str(tmp_path / "latin1.jsonl")], strict=True)


@pytest.mark.parametrize("messages, rule, says", [
    ([("assistant", "Hello!"), ("user", "Hi")], "role_order", "turn 0 is assistant, expected user"),
    ([("user", "a"), ("user", "b"), ("assistant", "c")], "role_order", "turn 1 is user, expected assistant"),
    ([("system", "Be nice."), ("assistant", "Hi")], "role_order", "turn 1 is assistant, expected user"),
    ([("user", "a"), ("assistant", " "), ("user", "b"), ("assistant", "c")], "empty_turn", "turn 1 (assistant) is empty"),
    ([("user", "a"), ("assistant", "b"), ("system", "s"), ("user", "c"), ("assistant", "d")], "role_order", "system"),
    ([("user", "a"), ("assistant", "b"), ("user", "c")], "role_order", "must end with a assistant turn"),
])
def test_wrong_sft_role_orders_are_refused_with_their_rule(messages, rule, says):
    rec = {"messages": [{"role": r, "content": c} for r, c in messages]}
    with pytest.raises(FormatError, match="data.jsonl:3") as e:
        sft_record(rec, "data.jsonl:3")
    assert e.value.rule == rule and says in str(e.value)


def test_tool_turns_are_refused_with_their_own_rule():
    rec = {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                             {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}
    with pytest.raises(FormatError, match=r"conversations\[1\] is a 'function_call' turn") as e:
        sft_record(rec, "x")
    assert e.value.rule == "tool_role"


def test_tool_turns_are_quarantined_and_counted_per_source_for_the_manifest(tmp_path):
    tool = {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                              {"from": "observation", "value": "sunny"}, {"from": "gpt", "value": "Sunny."}]}
    plain = {"conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]}
    kept, bad, counts = _read([_jsonl(tmp_path / "agent.jsonl", [tool, plain, tool])])
    assert len(kept) == 1 and [q["rule"] for q in bad] == ["tool_role"] * 2 and "agent.jsonl:1" in bad[0]["where"]
    assert counts[0]["quarantined"] == {"tool_role": 2} and counts[0]["read"] == 3  # the manifest's sources.<name>


@pytest.mark.parametrize("rec, rule", [
    ({"prompt": "Pick one.", "chosen": "the same", "rejected": "the same "}, "same_answers"),
    ({"prompt": "Pick one.", "chosen": {"role": "user", "content": "x"}, "rejected": "y"}, "role_order"),
    ({"prompt": "Pick one.", "chosen": [{"role": "system", "content": "x"}], "rejected": "y"}, "role_order"),
    ({"prompt": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "?"}], "chosen": "a",
      "rejected": "b"}, "role_order"),
    ({"prompt": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "chosen": "a",
      "rejected": "b"}, "role_order"),
])
def test_wrong_preference_pairs_are_refused_with_their_rule(rec, rule):
    with pytest.raises(FormatError, match="p.jsonl:9") as e:
        preference_record(rec, "p.jsonl:9")
    assert e.value.rule == rule


# --- 3. length policy ---------------------------------------------------------------------------------------

def test_truncation_modes_keep_the_first_token_and_a_trained_one():
    from components.sft.run import fit_length

    ids, labels = list(range(10)), [IGNORE] * 6 + [6, 7, 8, 9]
    assert fit_length(ids, labels, 4, "drop") is None
    assert fit_length(ids, labels, 4, "keep_start") is None  # only prompt tokens would be left: nothing to train
    assert fit_length(ids, labels, 8, "keep_start") == (ids[:8], labels[:8])
    assert fit_length(ids, labels, 4, "keep_end") == ([0, 7, 8, 9], [IGNORE, 7, 8, 9])
    assert fit_length(ids, labels, 10, "drop") == (ids, labels)
    with pytest.raises(ValueError, match=r"sft\.truncation_mode"):
        SFTConfig(truncation_mode="left")


def test_dpo_prompt_cap_cuts_the_oldest_prompt_tokens():
    from components.align.run import cap_prompt

    enc = (list(range(10)), [IGNORE] * 7 + [7, 8, 9])
    assert cap_prompt(enc, 3) == ([0, 5, 6, 7, 8, 9], [IGNORE, IGNORE, IGNORE, 7, 8, 9])
    assert cap_prompt(enc, None) == enc and cap_prompt(enc, 7) == enc


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("model"), tokenizer, TINY, seed=0)


SHORT = [{"question": "2+2?", "answer": "4"}, {"question": "3+4?", "answer": "7"}]  # fit 48 tokens
FEW = dict(max_steps=1, warmup_steps=0, batch_size=2, mixed_precision="no", log_every=1, replay=0)  # replay: test_replay.py


def test_sft_truncates_long_examples_and_counts_per_source(model_dir, tmp_path, caplog):
    from components.sft.run import run

    long = [{"question": f"Question {i}: " + "tell me more about clips " * 12, "answer": "72"} for i in range(4)]
    src = [{"path": _jsonl(tmp_path / "long.jsonl", long), "name": "long"},
           {"path": _jsonl(tmp_path / "gsm8k.jsonl", SHORT + [{"question": "q", "answer": ""}]), "name": "gsm8k"}]
    out = tmp_path / "drop"
    out.mkdir()
    with caplog.at_level(logging.WARNING):
        dropped = run(SFTConfig(sources=src, num_val_examples=2, max_length=48, **FEW), {"pretrain": model_dir},
                      StageContext.local(out))
    assert dropped["sources"]["long"] == {"read": 4, "kept": 4, "quarantined": {}, "heldout": 0, "too_long": 4, "used": 0}
    assert dropped["sources"]["gsm8k"]["quarantined"] == {"format": 1}
    assert "raise sft.max_length" in caplog.text  # over 20% left out: the hint names the setting
    out = tmp_path / "keep"
    out.mkdir()
    kept = run(SFTConfig(sources=src, num_val_examples=2, max_length=48, truncation_mode="keep_end",
                         chat_template="chatml", **FEW), {"pretrain": model_dir}, StageContext.local(out))
    assert kept["sources"]["long"]["used"] == 4 and kept["train_examples"] == 4 + dropped["train_examples"]
    assert "<|im_start|>" in (out / "model" / "chat_template.jinja").read_text()  # what align and eval will render


def test_sft_holds_out_a_share_of_the_users_examples_and_scores_them(model_dir, tmp_path):
    from components.sft.run import run

    rows = [{"question": f"{a}+{b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]  # 30, short
    (tmp_path / "out").mkdir()
    metrics = run(SFTConfig(sources=[_jsonl(tmp_path / "sums.jsonl", rows)], num_val_examples=2, **FEW),
                  {"pretrain": model_dir}, StageContext.local(tmp_path / "out"))
    assert metrics["heldout_source_examples"] == metrics["sources"][str(tmp_path / "sums.jsonl")]["heldout"] == 2
    assert metrics["train_examples"] == 28 and metrics["val_loss_sources"] > 0  # held out: never trained on


def test_sft_failing_on_all_quarantined_quotes_the_top_reasons(model_dir, tmp_path):
    from components.sft.run import run

    bad = [{"messages": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}]}] * 3
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match=r"3 quarantined \(3 turn N is assistant, expected user\)"):
        run(SFTConfig(sources=[_jsonl(tmp_path / "bad.jsonl", bad)], **FEW), {"pretrain": model_dir},
            StageContext.local(tmp_path / "out"))


# --- 4. mixing ------------------------------------------------------------------------------------------------

def test_select_draws_across_sources_with_weight_and_cap():
    pools = [list(range(0, 100)), list(range(100, 200)), list(range(200, 300))]
    unweighted = [ChatSource(key=f"k{i}", name=n, files=()) for i, n in enumerate("abc")]
    chosen = select(pools, unweighted, 60, seed=0)
    assert len(chosen) == len(set(chosen)) == 60 and all(sum(p[0] <= c <= p[-1] for c in chosen) > 5 for p in pools)
    assert chosen == select(pools, unweighted, 60, seed=0) != select(pools, unweighted, 60, seed=1)
    weighted = [ChatSource(key="k0", name="a", files=(), weight=3.0), ChatSource(key="k1", name="b", files=(), weight=1.0),
                ChatSource(key="k2", name="c", files=(), weight=1.0, cap=2)]
    chosen = select(pools, weighted, 50, seed=0)
    assert [sum(p[0] <= c <= p[-1] for c in chosen) for p in pools] == [30, 10, 2]  # c: its cap


def test_align_pairs_come_from_every_source_not_the_first_file(model_dir, tmp_path):
    from components.align.run import run

    files = []
    for s in range(3):
        rows = [{"prompt": f"Source {s} question {i}: what is {i} + {s}?", "chosen": str(i + s), "rejected": str(i + s + 1)}
                for i in range(20)]
        files.append(_jsonl(tmp_path / f"prefs{s}.jsonl", rows))
    cfg = AlignConfig(sources=files, num_pairs=12, num_val_pairs=3, **FEW)
    (tmp_path / "out").mkdir()
    metrics = run(cfg, {"sft": model_dir}, StageContext.local(tmp_path / "out"))
    used = {name.rsplit("/", 1)[1]: c["used"] for name, c in metrics["sources"].items()}
    assert sum(used.values()) == metrics["train_pairs"] == 12 and min(used.values()) > 0
    assert all(c["read"] == c["kept"] == 20 for c in metrics["sources"].values())
    assert sum(c["heldout"] for c in metrics["sources"].values()) == metrics["val_pairs"]


# --- 5. templates by name ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, end", [("chatml", "<|im_end|>\n"), ("llama3", "<|eot_id|>"), ("zephyr", None)])
def test_a_named_template_trains_each_answer_and_its_end_of_turn(tokenizer, name, end):
    from transformers import AutoTokenizer

    from components.chat.template import encode_chat, end_of_turn, use_template

    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    use_template(tok, name)
    end = end or tok.eos_token + "\n"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+4?"},
                {"role": "assistant", "content": "7"}]
    ids, labels = encode_chat(tok, messages)
    trained = tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
    # the decoder joins pieces with spaces; the contents have none, so compare without them
    assert trained.replace(" ", "") == ("4" + end + "7" + end).replace(" ", "") and ids[0] == tok.bos_token_id
    assert end_of_turn(tok) == end.strip()
    with pytest.raises(ValueError, match=r"sft\.chat_template"):
        SFTConfig(chat_template="vicuna")


def test_a_global_system_prompt_goes_first_unless_the_example_has_one():
    from components.chat.template import with_system_prompt

    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert with_system_prompt(chat, "Be brief.")[0] == {"role": "system", "content": "Be brief."}
    own = [{"role": "system", "content": "Mine."}, *chat]
    assert with_system_prompt(own, "Be brief.") == own and with_system_prompt(chat, None) == chat
    with pytest.raises(ValueError, match=r"sft\.system_prompt"):
        SFTConfig(system_prompt=" ")


# --- 6. epochs --------------------------------------------------------------------------------------------

def test_num_epochs_derives_the_steps_that_show_every_item_that_many_times():
    from collections import Counter

    from components.chat.batches import epoch_indices
    from components.train.epochs import with_epochs

    cfg = SFTConfig(num_epochs=3, batch_size=4, grad_accum=2, warmup_steps=2, max_steps=1000)
    derived, record = with_epochs(cfg, 40, "examples")
    assert derived.max_steps == record["derived_max_steps"] == 15 and record["global_batch"] == 8  # ceil(3 * 40 / 8)
    seen = Counter(i for pos in range(derived.max_steps * cfg.grad_accum) for i in epoch_indices(40, 4, 0, pos))
    assert set(seen.values()) == {3} and len(seen) == 40  # the loop's sampler: each example exactly 3 times
    assert with_epochs(SFTConfig(), 40, "examples") == (SFTConfig(), {})  # 0: max_steps as given
    with pytest.raises(ValueError, match=r"sft\.warmup_steps=20: must be < the 5 steps of sft\.num_epochs=1"):
        with_epochs(SFTConfig(num_epochs=1, batch_size=8, warmup_steps=20), 40, "examples")
    with pytest.raises(ValueError, match=r"sft\.num_epochs=-1"):
        SFTConfig(num_epochs=-1)


def test_sft_with_num_epochs_trains_the_derived_steps_and_records_them(model_dir, tmp_path):
    from components.sft.run import run

    rows = [{"question": f"{a}+{b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]  # 28 train, 2 held out
    (tmp_path / "out").mkdir()
    metrics = run(SFTConfig(sources=[_jsonl(tmp_path / "sums.jsonl", rows)], num_val_examples=2,
                            **{**FEW, "batch_size": 7}, num_epochs=2), {"pretrain": model_dir},
                  StageContext.local(tmp_path / "out"))
    assert metrics["steps"] == metrics["derived_max_steps"] == 8 and metrics["epoch_items"] == 28  # 2 x 28 / 7


# --- 7. a chat template from a file ----------------------------------------------------------------------

def test_a_template_file_is_used_and_keyed_by_its_content_not_its_path(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from components.chat.named_templates import TEMPLATES
    from components.chat.template import encode_chat, end_of_turn, use_template
    from components.config import output_relevant

    mine = TEMPLATES["chatml"].replace("<|im_end|>", "<|end|>")  # ChatML framing, the tiny tokenizer's end token
    first, moved = tmp_path / "mine.jinja", tmp_path / "elsewhere" / "copy.jinja"
    moved.parent.mkdir()
    first.write_text(mine)
    moved.write_text(mine)
    key = lambda path: output_relevant(SFTConfig(chat_template=str(path)))["chat_template"]
    assert key(first) == key(moved) and str(first) not in json.dumps(output_relevant(SFTConfig(chat_template=str(first))))
    moved.write_text(mine.replace("<|end|>", "<|end|> "))
    assert key(first) != key(moved)  # other content: another key
    tok = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    use_template(tok, str(first))
    ids, labels = encode_chat(tok, [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}])
    assert tok.chat_template == mine and end_of_turn(tok) == "<|end|>" and any(lab != IGNORE for lab in labels)


@pytest.mark.parametrize("text, says", [
    (None, "not found"),
    ("{% for m in messages %}{{ m['content'] }", "does not render a test conversation: TemplateSyntaxError"),
    ("{% for m in messages if m['role'] != 'system' %}{{ m['content'] }}{% endfor %}", "without ['PROBE-SYSTEM']"),
    ("{% if add_generation_prompt %}A:{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}",
     "not rendered right after the generation prompt"),
])
def test_a_bad_template_file_fails_at_config_time_naming_the_key_and_the_file(tmp_path, text, says):
    path = tmp_path / "bad.jinja"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=r"sft\.chat_template=.*bad\.jinja") as err:
        SFTConfig(chat_template=str(path))
    assert says in str(err.value)


# --- 8. eval on the user's held-out data -------------------------------------------------------------------

def test_eval_scores_every_model_on_the_examples_and_pairs_sft_and_align_held_out(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.align.run import run as align
    from components.eval.report import _own_data
    from components.eval.sources import heldout_sets, score_sources
    from components.sft.run import run as sft

    sums = [{"question": f"{a}+{b}?", "answer": str(a + b)} for a in range(6) for b in range(5)]
    prefs = [{"prompt": f"What is {i} + 1?", "chosen": str(i + 1), "rejected": str(i + 2)} for i in range(12)]
    prefs += [{**prefs[0], "rejected": "no idea"}]  # a second pair on a prompt: both on one side of the split
    sft_dir, align_dir = tmp_path / "sft", tmp_path / "align"
    sft_dir.mkdir(), align_dir.mkdir()
    sft_m = sft(SFTConfig(sources=[_jsonl(tmp_path / "sums.jsonl", sums)], num_val_examples=3, **FEW),
                {"pretrain": model_dir}, StageContext.local(sft_dir))
    align_m = align(AlignConfig(sources=[_jsonl(tmp_path / "prefs.jsonl", prefs)], num_val_pairs=3, **FEW),
                    {"sft": sft_dir}, StageContext.local(align_dir))
    examples, pairs = heldout_sets({"sft": sft_dir, "align": align_dir, "pretrain": model_dir})
    assert len(examples) == sft_m["heldout_source_examples"] == 3 and len(pairs) == align_m["val_pairs"] >= 3
    assert sum(p["prompt"][-1]["content"] == "What is 0 + 1?" for p in pairs) in (0, 2)  # a prompt's pairs: one side
    scores = {}
    for name, artifact in (("base", model_dir), ("sft", sft_dir), ("aligned", align_dir)):
        tok = AutoTokenizer.from_pretrained(artifact / "model")
        model = AutoModelForCausalLM.from_pretrained(artifact / "model", dtype=torch.float32).eval()
        scores[name] = score_sources(model, tok, examples, pairs, batch_size=2)
    assert scores["sft"]["sft_loss"] == pytest.approx(sft_m["val_loss_sources"], rel=1e-4)  # what sft scored
    assert scores["aligned"]["preference_accuracy"] == align_m["val_preference_accuracy"]  # what align scored
    assert scores["base"]["sft_n"] == 3 and scores["base"]["preference_n"] == len(pairs)
    assert scores["base"]["sft_loss"] != scores["sft"]["sft_loss"]  # each model scored, not one copied
    report = "\n".join(_own_data({name: {"sources": s} for name, s in scores.items()}))
    assert "## Your held-out data" in report and f"(n={len(pairs)})" in report and _own_data({"base": {}}) == []
