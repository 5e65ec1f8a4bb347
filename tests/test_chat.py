"""Exported models stop where a turn ends (plain generate, HF pipeline); `flows.chat` answers, streams, resets."""
import io
import json
import sys

import pytest
import torch

from components.chat.session import Chat, converse, decoding_kwargs
from components.chat.template import encode_chat
from components.model.build import build_model
from components.model.config import ModelConfig
from components.model.export import save_export
from flows import chat as chat_cli
from tests.tiny import make_tokenizer_artifact

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)
QUESTION = [{"role": "user", "content": "What is 2 + 3?"}]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model taught one answer ("5" then <|end|>), exported as the training loop exports (save_export)."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_artifact(root / "tok") / "hf")  # HF_HUB_OFFLINE: local_files_only
    model = build_model(TINY, tokenizer, seed=0)
    ids, labels = encode_chat(tokenizer, QUESTION + [{"role": "assistant", "content": "5"}])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    save_export(model.eval(), tokenizer, root / "sft" / "model")
    return root / "sft" / "model"


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_plain_generate_and_the_hf_pipeline_stop_at_the_end_of_the_turn(exported):
    from transformers import pipeline

    model, tokenizer = _load(exported)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    enc = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=30)  # no eos, pad or stopping arguments: the files say it all
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    assert new == tokenizer.encode("5", add_special_tokens=False) + [end]
    reply = pipeline("text-generation", model=str(exported), device="cpu")(QUESTION, max_new_tokens=30)
    assert reply[0]["generated_text"][-1] == {"role": "assistant", "content": "5"}


def test_the_export_holds_its_context_stop_ids_and_readable_files(exported):
    generation = json.loads((exported / "generation_config.json").read_text())
    model, tokenizer = _load(exported)
    assert generation["eos_token_id"] == [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    config = json.loads((exported / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == TINY.context_length == model.config.max_position_embeddings
    assert "local_files_only" not in config and "is_local" not in config
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in exported.iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {"0o644"}, modes


def test_chat_prompt_prints_the_answer_streamed_and_exits(exported, capsys, monkeypatch):
    chat_cli.main([str(exported.parent), "--prompt", "What is 2 + 3?", "--max-new-tokens", "12"])  # artifact dir
    assert capsys.readouterr().out == "5\n"
    pieces = []
    model, tokenizer = _load(exported)
    Chat(model, tokenizer, {}, 12).reply("What is 2 + 3?", pieces.append)
    assert "".join(pieces) == "5\n" and "<|end|>" not in "".join(pieces)


def test_piped_chat_keeps_history_until_reset_and_stops_at_quit(exported, capsys):
    model, tokenizer = _load(exported)
    chat = Chat(model, tokenizer, decoding_kwargs(), max_new_tokens=8, system="Be brief.")
    seen = []
    lines = ["What is 2 + 3?", "What is 2 + 3?", "/reset", "What is 2 + 3?", "/quit", "never read"]

    def after_each(line):  # the history as each line is answered
        seen.append(len(chat.history))
        return line

    out = io.StringIO()
    converse(chat, (after_each(line) for line in lines), out.write, interactive=False)
    assert seen == [0, 2, 4, 0, 2]  # the second question sees the first exchange; /reset empties it; /quit stops
    answers = [line for line in out.getvalue().splitlines() if line != "(history cleared)"]
    assert answers[0] == answers[2] == "5" and len(answers) == 3  # same conversation after /reset: same answer
    assert chat.history[0] == QUESTION[0] and "(history cleared)" in out.getvalue()


def test_chat_cli_reads_stdin_and_names_the_command_that_builds_a_missing_stage(exported, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("What is 2 + 3?\n/reset\n/quit\n"))
    chat_cli.main([str(exported), "--temperature", "0.7", "--top-p", "0.9", "--max-new-tokens", "6"])
    assert "(history cleared)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        chat_cli.main(["sft", "experiment=smoke", f"run.artifacts_dir={tmp_path}", "--prompt", "hi"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "no sft model for this config yet" in err and "make pipeline ARGS='run.until=sft experiment=smoke" in err
    with pytest.raises(SystemExit):
        chat_cli.main([str(tmp_path / "nowhere"), "--prompt", "hi"])
    assert "neither a stage" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--temperature"):
        decoding_kwargs(top_p=0.9)  # top-p without sampling would be silently greedy
