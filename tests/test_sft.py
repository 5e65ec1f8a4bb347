"""SFT: loss on assistant tokens only, every assistant turn, and a stage run that learns."""
import json

import pytest
import torch

from components.model.build import build_model
from components.model.config import ModelConfig
from components.sft.config import SFTConfig
from components.train.chat import encode_chat
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


def test_data_path_errors_name_file_and_line(tmp_path):
    from components.sft.run import read_messages

    bad = tmp_path / "chat.jsonl"
    bad.write_text('{"messages": []}\n{not json}\n')
    with pytest.raises(ValueError, match=r"chat\.jsonl:2: invalid JSON"):
        read_messages(bad)
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(ValueError, match=r"chat\.jsonl:1: field 'messages'"):
        read_messages(bad)
