"""SFT: sources and quarantine, loss on assistant tokens only (every turn, every batch), packing isolation, LoRA export."""
import json
from pathlib import Path

import pytest
import torch

from components.chat.formats import read_sft
from components.chat.template import encode_chat
from components.context import StageContext
from components.model.build import build_model
from components.model.config import ModelConfig
from components.sft.config import SFTConfig
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


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def test_an_open_models_template_is_masked_by_its_own_end_of_turn(tok_dir):
    """ChatML (Qwen, ...): the trained span is the answer and `<|im_end|>\\n`, found from the template."""
    from transformers import AutoTokenizer

    from components.chat.generate import generate
    from components.chat.template import end_of_turn

    chatml = AutoTokenizer.from_pretrained(tok_dir / "hf")
    chatml.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    chatml.chat_template = CHATML
    ids, labels = encode_chat(chatml, DIALOGUE)
    assert ids[0] == chatml.convert_tokens_to_ids("<|im_start|>")  # no BOS the template does not write
    trained = chatml.decode([l for l in labels if l != IGNORE]).replace(" ", "")
    assert trained == "5<|im_end|>\n8apples<|im_end|>\n"
    assert end_of_turn(chatml) == "<|im_end|>"
    model = build_model(TINY, chatml, seed=0)
    answers = generate(model, chatml, [DIALOGUE[:2]], max_new_tokens=5, batch_size=1)
    assert len(answers) == 1 and "<|im_end|>" not in answers[0]


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
                    mixed_precision="no", log_every=5, replay=0.75)  # the share these bounds were set with
    metrics = run(cfg, {"pretrain": pre, "tokenizer": tok_dir}, StageContext.local(out))  # tokenizer: sft.replay's text
    rows = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] * 0.85  # chat answers and replayed prose together
    replay = [r["replay_loss"] for r in rows]  # a few dozen tokens a step: compare five-step means
    assert sum(replay[-5:]) < sum(replay[:5])  # the replayed prose trains too
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


FEW = dict(max_steps=2, warmup_steps=1, batch_size=4, lr=1e-3, num_val_examples=4, mixed_precision="no", log_every=1,
           replay=0)  # these test the sources; tests/test_replay.py and the stage test above cover replay
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
    from components.chat.formats import FormatError

    path = _chat_file(tmp_path)
    pre = _pretrain_dir(tmp_path, tokenizer)
    with pytest.raises(FormatError, match=r"chat\.jsonl:3: invalid JSON"):
        run(SFTConfig(sources=[str(path)], strict=True, **FEW), {"pretrain": pre}, StageContext.local(tmp_path / "out"))
    path.write_text("\n".join(l for i, l in enumerate(path.read_text().splitlines(), 1) if i != 3) + "\n")
    with pytest.raises(FormatError, match=r"chat\.jsonl:4: field 'output' must be a non-empty string"):
        run(SFTConfig(sources=[str(path)], strict=True, **FEW), {"pretrain": pre}, StageContext.local(tmp_path / "out"))
    with pytest.raises(FormatError, match=r"chat\.jsonl:1: format dolly needs field\(s\) instruction, response"):
        run(SFTConfig(sources=[str(path)], strict=True, format="dolly", **FEW), {"pretrain": pre}, StageContext.local(tmp_path / "out"))


def test_lenient_sources_quarantine_bad_lines_and_train_with_lora_and_packing(tok_dir, tokenizer, tmp_path):
    """One tiny run covers the wiring of sources, quarantine, packing and LoRA (all checked in depth below)."""
    from transformers import AutoModelForCausalLM

    from components.sft.run import run

    path = _chat_file(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    cfg = SFTConfig(sources=[str(tmp_path / "*.jsonl")], packing=True, adapter="lora", lora_rank=2, **FEW)
    metrics = run(cfg, {"pretrain": _pretrain_dir(tmp_path, tokenizer)}, StageContext.local(out))
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
    metrics = run(cfg, {"pretrain": _pretrain_dir(tmp_path, tokenizer, long_ctx)}, StageContext.local(out))
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False)
             for name in ("alpaca_tiny_100_torchtune.json", "lima_30_llamafactory.json")
             for r in read_sft(samples / "sft" / name)[0]]
    n_long = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) > 512 for t in texts)
    assert metrics["records_read"] == {str(samples / "sft" / "alpaca_tiny_100_torchtune.json"): 100,
                                       str(samples / "sft" / "lima_30_llamafactory.json"): 30, str(bad): 1}
    assert metrics["quarantined_unreadable"] == 1 and metrics["quarantined_too_long"] == n_long > 0
    # a tenth of the sources' examples (13) is held out by prompt hash for val_loss_sources
    assert metrics["train_examples"] + metrics["heldout_source_examples"] == 130 - n_long and metrics["steps"] == 2
    assert 0 < metrics["heldout_source_examples"] <= 13 and "val_loss_sources" in metrics
    assert 0.9 < metrics["nonpad_fraction"] <= 1.0  # packed sequences are nearly full
    assert len((out / "quarantine.jsonl").read_text().splitlines()) == metrics["quarantined"] == 1 + n_long


def test_bad_sft_options_fail_naming_the_key():
    with pytest.raises(ValueError, match=r"sft\.format='csv'"):
        SFTConfig(format="csv")
    with pytest.raises(ValueError, match=r"sft\.adapter='qlora'"):
        SFTConfig(adapter="qlora")
    with pytest.raises(ValueError, match=r"sft\.lora_targets=\[\]"):
        SFTConfig(adapter="lora", lora_targets=[])


# --- loss on assistant tokens only, in every batch the stage builds ---

def _rows(tokenizer, n=24):
    from components.sft.run import encode_examples
    from components.tasks import sft_examples

    examples = [({"messages": DIALOGUE}, "dialogue")] + [(ex, f"g{i}") for i, ex in enumerate(sft_examples("train", n))]
    rows, too_long = encode_examples(tokenizer, examples, TINY.context_length)
    assert not too_long
    return rows


def test_an_example_with_nothing_to_train_is_an_error(tokenizer):
    from components.sft.run import encode_examples

    with pytest.raises(ValueError, match=r"data\.jsonl:9: no assistant token to train on"):
        encode_examples(tokenizer, [({"messages": [{"role": "user", "content": "hi"}]}, "data.jsonl:9")], 64)


@pytest.mark.parametrize("packing", [False, True])
def test_every_batch_trains_only_assistant_tokens_and_has_some(tokenizer, packing):
    from components.sft.run import make_batch_fn

    rows = _rows(tokenizer)
    cfg = SFTConfig(batch_size=4, packing=packing, max_steps=10, warmup_steps=1)
    batch_fn, bins = make_batch_fn(rows, cfg, TINY.context_length, tokenizer.pad_token_id)
    roles = {tokenizer.convert_tokens_to_ids(f"<|{r}|>"): r for r in ("system", "user", "assistant")}
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    for step in range(len(bins) // cfg.batch_size + 1):  # a whole epoch
        batch = batch_fn(step, 0)
        assert batch["n_targets"] > 0
        ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
        for row_ids, row_labels in zip(ids, labels):
            role = None
            for tok, lab in zip(row_ids, row_labels):
                if tok in roles:
                    role = roles[tok]
                    assert lab == IGNORE  # role markers are prompt
                if lab != IGNORE:
                    assert lab == tok and role == "assistant"  # every trained token is in an assistant turn
                if tok == tokenizer.bos_token_id:
                    role = None
            # each assistant turn's <|end|> is trained (all turns of a dialogue), no other <|end|>
            n_assistant = sum(roles.get(t) == "assistant" for t in row_ids)
            assert sum(l == end for l in row_labels) == n_assistant


# --- packing: no attention across examples, positions restart ---

def test_pack_fills_sequences_without_splitting_or_losing_examples():
    from components.chat.batches import pack

    lengths = [50, 30, 30, 20, 14, 10, 10, 64, 1]
    bins = pack(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    assert len(bins) == 4  # 229 tokens need at least 4 sequences of 64; best-fit reaches it
    with pytest.raises(ValueError, match="65 tokens"):
        pack([65], 64)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_example_sees_only_itself(tokenizer, attn):
    from components.train.losses import lm_loss
    from components.chat.batches import packed_batch, pad_batch

    model = build_model(TINY, tokenizer, seed=0).eval()
    model.set_attn_implementation(attn)
    a, b, c = _rows(tokenizer, 3)[1:4]
    with torch.no_grad():
        packed = packed_batch([[a, b], [c]], tokenizer.pad_token_id)
        assert packed["position_ids"][0, len(a[0])] == 0  # positions restart at the second example
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits
        alone = model(input_ids=torch.tensor([b[0]])).logits
        torch.testing.assert_close(logits[0, len(a[0]) : len(a[0]) + len(b[0])], alone[0], atol=1e-5, rtol=0)
        packed_loss, _ = lm_loss(model, packed)
        unpacked_loss, _ = lm_loss(model, pad_batch([a, b, c], tokenizer.pad_token_id))
        n_targets = int((packed["labels"] != IGNORE).sum())
        torch.testing.assert_close(packed_loss / n_targets, unpacked_loss / n_targets, atol=1e-5, rtol=0)
        # the same rows without restarting positions: b would attend to a, and its logits change
        leaky = model(input_ids=packed["input_ids"][:1]).logits
        assert (leaky[0, len(a[0]) : len(a[0]) + len(b[0])] - alone[0]).abs().max() > 1e-3


# --- LoRA: only adapters train; the export is the merged, plain model ---

def test_lora_trains_only_adapters_and_exports_a_merged_plain_model(tokenizer, tmp_path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from components.sft.run import make_batch_fn
    from components.train.budget import count_parameters
    from components.train.lora import add_lora
    from components.train.losses import lm_loss
    from components.train.loop import save_model, train

    base = build_model(TINY, tokenizer, seed=0)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = SFTConfig(max_steps=3, warmup_steps=1, batch_size=4, lr=5e-2, mixed_precision="no", log_every=1)
    model = add_lora(base, rank=2, alpha=4.0, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"])
    assert 0 < count_parameters(model, trainable_only=True) == 2 * ((32 + 32) + (32 + 16) + (64 + 32))
    batch_fn, _ = make_batch_fn(_rows(tokenizer, 8), cfg, TINY.context_length, tokenizer.pad_token_id)
    accelerator = Accelerator(cpu=True)
    train(model, cfg, batch_fn, lm_loss, tmp_path / "run", accelerator=accelerator)

    trained = {k.replace("base_model.model.", "").replace(".base_layer", ""): v.detach().clone()
               for k, v in model.state_dict().items()}
    for k, v in original.items():
        assert torch.equal(trained[k], v), f"base weight {k} changed during LoRA training"
    q = model.base_model.model.model.layers[0].self_attn.q_proj
    delta = (q.lora_B["default"].weight @ q.lora_A["default"].weight) * q.scaling["default"]
    assert delta.abs().max() > 0  # the adapters did train
    batch = batch_fn(0, 0)
    with torch.no_grad():
        model.eval()
        peft_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    save_model(accelerator, model, tokenizer, tmp_path / "export")
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert "model.safetensors" in files and not [f for f in files if "adapter" in f]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    weights = exported.state_dict()
    torch.testing.assert_close(weights["model.layers.0.self_attn.q_proj.weight"],
                               original["model.layers.0.self_attn.q_proj.weight"] + delta, atol=1e-6, rtol=0)
    for k in ("model.embed_tokens.weight", "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"):
        assert torch.equal(weights[k], original[k])  # not adapted: untouched
    with torch.no_grad():
        merged_logits = exported(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=0)


def test_unknown_lora_target_names_the_key(tokenizer):
    from components.train.lora import add_lora

    with pytest.raises(ValueError, match=r"sft\.lora_targets=.*\['c_attn'\] are not modules.*q_proj"):
        add_lora(build_model(TINY, tokenizer, seed=0), 2, 4.0, 0.0, ["q_proj", "c_attn"], "sft.lora_targets")


def test_sft_key_follows_the_content_of_its_sources(tmp_path):
    from components.artifacts import stage_key
    from components.stages import STAGES

    path = _chat_file(tmp_path)
    key = lambda: stage_key("sft", SFTConfig(sources=[str(path)]), {"pretrain": "p"}, STAGES["sft"].module)
    before = key()
    assert key() == before
    path.write_text(path.read_text().replace('"5"', '"6"'))  # same file, one answer edited
    assert key() != before
