"""Instruction and preference readers: every published shape we accept, checked on real samples."""
import json

import pytest

from components.chat.formats import FormatError, preference_record, read_preferences, read_sft, sft_record


def test_every_sft_format_becomes_messages():
    cases = {
        "messages": {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
                                  {"role": "assistant", "content": "a"}]},
        "sharegpt": {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        "alpaca": {"instruction": "q", "input": "", "output": "a"},
        "dolly": {"instruction": "q", "context": "", "response": "a"},
        "prompt_response": {"prompt": "q", "response": "a"},
    }
    for name, rec in cases.items():
        msgs = sft_record(rec, name)["messages"]
        assert msgs[-2:] == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], name
    with_input = sft_record({"instruction": "Sum", "input": "1 2", "output": "3"}, "x")["messages"]
    assert with_input[0]["content"] == "Sum\n\n1 2"
    lima = sft_record({"instruction": "q2", "input": "", "output": "a2", "history": [["q1", "a1"]]}, "x")["messages"]
    assert [m["content"] for m in lima] == ["q1", "a1", "q2", "a2"]


@pytest.mark.parametrize("rec, field", [
    ({"instruction": "q", "output": ""}, "output"),
    ({"instruction": 3, "output": "a"}, "instruction"),
    ({"conversations": [{"from": "alien", "value": "q"}]}, "conversations[0]"),
    ({"text": "only text"}, "no known instruction format"),
    ({"messages": [{"role": "user", "content": "q"}]}, "no non-empty assistant turn"),
])
def test_bad_sft_records_name_the_record_and_field(rec, field):
    with pytest.raises(FormatError, match=r"data.jsonl:7") as e:
        sft_record(rec, "data.jsonl:7")
    assert field in str(e.value)


def test_every_preference_format():
    hh = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: good one",
          "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: no"}
    out = preference_record(hh, "x")
    assert [m["content"] for m in out["prompt"]] == ["hi", "hello", "joke?"]
    assert (out["chosen"], out["rejected"]) == ("good one", "no")
    se = preference_record({"question": "q", "response_j": "good", "response_k": "bad"}, "x")
    assert (se["prompt"][-1]["content"], se["chosen"], se["rejected"]) == ("q", "good", "bad")
    lf = preference_record({"conversations": [{"from": "human", "value": "q"}],
                            "chosen": {"from": "gpt", "value": "good"}, "rejected": {"from": "gpt", "value": "bad"}}, "x")
    assert (lf["chosen"], lf["rejected"]) == ("good", "bad")
    msgs = preference_record({"prompt": [{"role": "user", "content": "q"}],
                              "chosen": [{"role": "assistant", "content": "good"}], "rejected": "bad"}, "x")
    assert (msgs["chosen"], msgs["rejected"]) == ("good", "bad")
    with pytest.raises(FormatError, match="differ before their last answer"):
        preference_record({**hh, "rejected": "\n\nHuman: other\n\nAssistant: no"}, "x")


def test_invalid_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n{broken\n" + json.dumps({"prompt": "q"}) + "\n")
    with pytest.raises(FormatError, match=r"d.jsonl:2: invalid JSON"):
        read_sft(path)
    kept, quarantined = read_sft(path, strict=False)  # or quarantined with the reason, and counted
    assert len(kept) == 1 and [q["where"] for q in quarantined] == [f"{path}:2", f"{path}:3"]
    assert "no known instruction format" in quarantined[1]["reason"]


def test_real_sft_samples(samples):
    alpaca, _ = read_sft(samples / "sft" / "alpaca_tiny_100_torchtune.json")
    lima, _ = read_sft(samples / "sft" / "lima_30_llamafactory.json")
    assert len(alpaca) == 100 and len(lima) == 30
    for rec in alpaca + lima:
        roles = [m["role"] for m in rec["messages"]]
        assert roles[-1] == "assistant" and roles[-2] == "user" and rec["messages"][-1]["content"].strip()


def test_real_preference_samples(samples):
    pref = samples / "preference"
    read = {f.name: read_preferences(f, strict=False) for f in sorted(pref.iterdir()) if f.suffix in (".json", ".jsonl")}
    assert {name: (len(kept), len(bad)) for name, (kept, bad) in read.items()} == {
        "dpo_en_demo_50_llamafactory.json": (50, 0), "hh_rlhf_harmless_base_test_200.jsonl": (199, 1),
        "stack_exchange_paired_tiny_25_torchtune.json": (25, 0)}
    # the one HH record whose chosen answer is empty is quarantined, named by line
    [bad] = read["hh_rlhf_harmless_base_test_200.jsonl"][1]
    assert bad["where"].endswith("hh_rlhf_harmless_base_test_200.jsonl:87") and "chosen answer is empty" in bad["reason"]
    for kept, _ in read.values():
        for rec in kept:
            assert rec["prompt"][-1]["role"] == "user" and rec["chosen"].strip() and rec["rejected"].strip()


def test_preference_format_can_be_forced_and_implicit_prompts_read():
    implicit = {"chosen": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                           {"role": "user", "content": "q2"}, {"role": "assistant", "content": "good"}],
                "rejected": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                             {"role": "user", "content": "q2"}, {"role": "assistant", "content": "bad"}]}
    out = preference_record(implicit, "x")  # TRL's "implicit prompt": the shared turns are the prompt
    assert [m["content"] for m in out["prompt"]] == ["q1", "a1", "q2"] and (out["chosen"], out["rejected"]) == ("good", "bad")
    assert preference_record(implicit, "x", "implicit_prompt") == out
    with pytest.raises(FormatError, match=r"f.jsonl:3: not a hh_rlhf record"):
        preference_record(implicit, "f.jsonl:3", "hh_rlhf")
    with pytest.raises(FormatError, match="differ before their last answer"):
        preference_record({**implicit, "rejected": implicit["rejected"][2:]}, "x")
    with pytest.raises(ValueError, match="unknown preference format"):
        preference_record(implicit, "x", "csv")
