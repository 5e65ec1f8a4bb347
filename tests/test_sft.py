"""SFT: loss on assistant tokens only, every assistant turn, and a stage run that learns."""
import json
from pathlib import Path

import pytest
import torch

from components.model.build import build_model
from components.model.config import ModelConfig
from components.sft.config import SFTConfig
from components.train.chat import encode_chat
from components.train.formats import read_sft
from components.train.losses import IGNORE
from tests.tiny import make_tokenizer_artifact

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir / "hf")


DIALOGUE = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "8 apples"},
]


def test_only_assistant_turns_and_their_end_tokens_are_trained(tokenizer):
    ids, labels = encode_chat(tokenizer, DIALOGUE)
    trained = [t for t, l in zip(ids, labels) if l != IGNORE]
    assert trained == [l for l in labels if l != IGNORE]
    assert tokenizer.decode(trained).replace(" ", "") == "5<|end|>8apples<|end|>"
    for text in ("Be brief.", "What is 2 + 3?", "And 4 + 4?", "<|user|>", "<|system|>", "<|assistant|>"):
        assert text.replace(" ", "") not in tokenizer.decode(trained).replace(" ", "")
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id  # no doubled BOS


def test_both_turns_of_a_multi_turn_dialogue_are_in_one_sequence(tokenizer):
    ids, labels = encode_chat(tokenizer, DIALOGUE)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    trained_ends = [i for i, l in enumerate(labels) if l == end]
    assert len(trained_ends) == 2  # one per assistant turn; user/system <|end|> untrained
    assert sum(1 for t in ids if t == end) == 5


def test_sft_stage_learns_and_saves_a_loadable_model(tok_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from components.sft.run import run

    pre = tmp_path / "pretrain"
    model = build_model(TINY, tokenizer, seed=0)
    model.save_pretrained(pre / "model")
    tokenizer.save_pretrained(pre / "model")
    out = tmp_path / "sft"
    out.mkdir()
    cfg = SFTConfig(max_steps=25, warmup_steps=2, batch_size=16, lr=5e-3, num_examples=200, num_val_examples=20,
                    mixed_precision="no", log_every=5)
    metrics = run(cfg, {"pretrain": pre}, out)
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.8
    assert metrics["val_loss"] < rows[0]["loss"]
    reloaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert reloaded.config.vocab_size == len(tokenizer)


# --- sources: readers wired into the stage, quarantine, strict ---

def _pretrain_dir(tmp_path, tokenizer, model_cfg=TINY):
    pre = tmp_path / "pretrain"
    model = build_model(model_cfg, tokenizer, seed=0)
    model.save_pretrained(pre / "model")
    tokenizer.save_pretrained(pre / "model")
    return pre


FEW = dict(max_steps=2, warmup_steps=1, batch_size=4, lr=1e-3, num_val_examples=4, mixed_precision="no", log_every=1)
GOOD = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        {"conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "hi"}]},
        {"prompt": "Reverse ab.", "response": "ba"},
        {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]


def _chat_file(tmp_path) -> Path:
    """Good records of four formats, an invalid JSON line (line 3) and a record without an answer (line 5)."""
    lines = [json.dumps(GOOD[0]), json.dumps(GOOD[1]), '{"prompt": "cut', json.dumps(GOOD[2]),
             json.dumps({"instruction": "No answer.", "output": ""}), json.dumps(GOOD[3])]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_strict_sources_raise_naming_file_line_and_field(tok_dir, tokenizer, tmp_path):
    from components.sft.run import run
    from components.train.formats import FormatError

    path = _chat_file(tmp_path)
    pre = _pretrain_dir(tmp_path, tokenizer)
    with pytest.raises(FormatError, match=r"chat\.jsonl:3: invalid JSON"):
        run(SFTConfig(sources=[str(path)], strict=True, **FEW), {"pretrain": pre}, tmp_path / "out")
    path.write_text("\n".join(l for i, l in enumerate(path.read_text().splitlines(), 1) if i != 3) + "\n")
    with pytest.raises(FormatError, match=r"chat\.jsonl:4: field 'output' must be a non-empty string"):
        run(SFTConfig(sources=[str(path)], strict=True, **FEW), {"pretrain": pre}, tmp_path / "out")
    with pytest.raises(FormatError, match=r"chat\.jsonl:1: format dolly needs field\(s\) instruction, response"):
        run(SFTConfig(sources=[str(path)], strict=True, format="dolly", **FEW), {"pretrain": pre}, tmp_path / "out")


def test_lenient_sources_quarantine_bad_lines_and_train_with_lora_and_packing(tok_dir, tokenizer, tmp_path):
    """One tiny run covers the wiring of sources, quarantine, packing and LoRA (all checked in depth below)."""
    from transformers import AutoModelForCausalLM

    from components.sft.run import run

    path = _chat_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cfg = SFTConfig(sources=[str(tmp_path / "*.jsonl")], packing=True, adapter="lora", lora_rank=2, **FEW)
    metrics = run(cfg, {"pretrain": _pretrain_dir(tmp_path, tokenizer)}, out)
    bad = [json.loads(l) for l in (out / "quarantine.jsonl").read_text().splitlines()]
    assert [q["where"] for q in bad] == [f"{path}:3", f"{path}:5"]
    assert "invalid JSON" in bad[0]["reason"] and "'output'" in bad[1]["reason"]
    assert metrics["quarantined"] == metrics["quarantined_unreadable"] == 2
    assert metrics["records_read"] == {str(path): 6} and metrics["train_examples"] == 4
    assert metrics["train_sequences"] == 1  # four short examples packed into one sequence of 64
    # LoRA: rank 2 on 7 projections of one layer (d 32, kv 16, ffn 64): 2 * (in + out) each
    shapes = [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]
    assert metrics["trainable_params"] == sum(2 * (i + o) for i, o in shapes) < metrics["params"]
    assert sorted(p.name for p in (out / "model").iterdir() if p.name.startswith("adapter")) == []
    assert AutoModelForCausalLM.from_pretrained(out / "model").config.vocab_size == len(tokenizer)


def test_real_samples_train_and_overlong_examples_are_quarantined(samples, tok_dir, tokenizer, tmp_path):
    from components.sft.run import run

    long_ctx = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=512)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "Only a question?"}) + "\n")  # the one known-bad record
    out = tmp_path / "out"
    out.mkdir()
    cfg = SFTConfig(sources=[str(samples / "sft" / "*.json"), str(bad)], packing=True, **FEW)
    metrics = run(cfg, {"pretrain": _pretrain_dir(tmp_path, tokenizer, long_ctx)}, out)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False)
             for name in ("alpaca_tiny_100_torchtune.json", "lima_30_llamafactory.json")
             for r in read_sft(samples / "sft" / name)[0]]
    n_long = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) > 512 for t in texts)
    assert metrics["records_read"] == {str(samples / "sft" / "alpaca_tiny_100_torchtune.json"): 100,
                                       str(samples / "sft" / "lima_30_llamafactory.json"): 30, str(bad): 1}
    assert metrics["quarantined_unreadable"] == 1 and metrics["quarantined_too_long"] == n_long > 0
    assert metrics["train_examples"] == 130 - n_long and metrics["steps"] == 2
    assert 0.9 < metrics["nonpad_fraction"] <= 1.0  # packed sequences are nearly full
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == metrics["quarantined"] == 1 + n_long


def test_bad_sft_options_fail_naming_the_key():
    with pytest.raises(ValueError, match=r"sft\.format='csv'"):
        SFTConfig(format="csv")
    with pytest.raises(ValueError, match=r"sft\.adapter='qlora'"):
        SFTConfig(adapter="qlora")
    with pytest.raises(ValueError, match=r"sft\.lora_targets=\[\]"):
        SFTConfig(adapter="lora", lora_targets=[])
