"""Passkey retrieval: the prompts, the RoPE conditions, the scoring, the planted documents, the config."""
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from components.eval import passkey as pk
from components.eval.config import EvalConfig
from components.eval.passkey_report import passkey_section
from components.model.config import ModelConfig
from components.tasks.passkey import (KEY_SENTENCE, QUESTION, RECALL_COLORS, answered, planted_document,
                                      recall_document)
from tests.tiny import make_tokenizer_artifact, save_tiny_model

CONTEXT = 64
TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=CONTEXT,
                   init_std=0.5)  # peaked attention: position changes show in the logits


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_artifact(tmp_path_factory.mktemp("passkey_tok"))


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir / "hf")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("passkey_model"), tokenizer, TINY, seed=0) / "model"


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_prompt_has_the_requested_length_and_the_key_at_the_requested_depth(tokenizer, tok_dir, depth):
    filler = pk.filler_tokens(tok_dir, tokenizer)
    key = "40172"
    length = 200
    ids, at = pk.build_prompt(tokenizer, filler, length, depth, key, random.Random(0))
    key_ids, question = _ids(tokenizer, KEY_SENTENCE.format(key=key)), _ids(tokenizer, QUESTION)
    assert len(ids) + pk.answer_length(tokenizer, key) == length
    assert ids[0] == tokenizer.bos_token_id and ids[-len(question):] == question
    assert ids[at : at + len(key_ids)] == key_ids
    n_filler = length - 1 - len(key_ids) - len(question) - pk.answer_length(tokenizer, key)
    assert abs((at - 1) - depth * n_filler) <= 4  # moved to the nearest word start at most
    assert key not in tokenizer.decode(ids[:at] + ids[at + len(key_ids):])  # stated once


def test_filler_leaves_out_special_tokens_and_documents_with_a_pass_key(tmp_path, tokenizer):
    shards = tmp_path / "shards"
    shards.mkdir()
    docs = ["A plain sentence about rivers and stones.", planted_document("Some prose. " * 10, random.Random(1))[0],
            "Another plain sentence about gardens."]
    ids, starts = [], []
    for doc in docs:
        starts.append(len(ids))
        ids += [tokenizer.bos_token_id, *_ids(tokenizer, doc), tokenizer.eos_token_id]
    np.array(ids, dtype=np.uint16).tofile(shards / "validation.bin")
    np.save(shards / "validation.idx.npy", np.array(starts))
    text = tokenizer.decode(pk.filler_tokens(tmp_path, tokenizer).tolist())
    assert "rivers" in text and "gardens" in text and "pass key" not in text
    assert not set(pk.filler_tokens(tmp_path, tokenizer).tolist()) & set(tokenizer.all_special_ids)


def test_answer_is_exact_match_of_the_key_with_no_digit_after_it():
    assert answered(" 40172.", " 40172") and answered(" 40172 is", " 40172")
    assert not answered(" 401723", " 40172") and not answered(" 4017", " 40172") and not answered(" the 40172", " 40172")


def test_rope_conditions_set_the_loaded_models_rope(model_dir):
    ids = torch.randint(10, 300, (1, 2 * CONTEXT))
    none = pk.load_with_rope(model_dir, "none", 2.0, CONTEXT, "cpu")
    base_freq = none.model.rotary_emb.inv_freq.clone()
    linear = pk.load_with_rope(model_dir, "linear", 2.0, CONTEXT, "cpu")
    assert linear.config.rope_parameters["rope_type"] == "linear" and linear.config.rope_parameters["factor"] == 2.0
    assert torch.allclose(linear.model.rotary_emb.inv_freq, base_freq / 2)  # positions interpolated by 2
    yarn = pk.load_with_rope(model_dir, "yarn", 4.0, CONTEXT, "cpu")
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == CONTEXT
    assert yarn.config.max_position_embeddings == 4 * CONTEXT
    dynamic = pk.load_with_rope(model_dir, "dynamic", 2.0, CONTEXT, "cpu")
    assert dynamic.config.max_position_embeddings == CONTEXT  # NTK scales past the original context
    with torch.no_grad():
        logits = {name: m(ids).logits for name, m in (("none", none), ("linear", linear), ("yarn", yarn), ("dynamic", dynamic))}
        short = ids[:, : CONTEXT // 2]
        assert torch.allclose(dynamic(short).logits, none(short).logits, atol=1e-5)  # within the context: as trained
    for name in ("linear", "yarn", "dynamic"):
        assert not torch.allclose(logits[name], logits["none"], atol=1e-3), name


def test_an_unmerged_adapter_export_is_measured_with_its_adapter_under_each_rope(model_dir, tmp_path, tokenizer):
    """An sft / align / rl export that is base + prefix adapter (sft.adapter=prefix): each condition loads the
    base under its RoPE and puts the adapter back, and the greedy answers are the adapted model's."""
    from transformers import AutoModelForCausalLM

    from components.sft.config import SFTConfig
    from components.train import adapters

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = adapters.add_adapter(base, SFTConfig(adapter="prefix", num_virtual_tokens=4), "sft", 10)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 3.0)
    export = tmp_path / "export"
    model.save_pretrained(export / adapters.ADAPTER_DIR)
    base.save_pretrained(export)
    linear = pk.load_with_rope(export, "linear", 2.0, CONTEXT, "cpu")
    assert adapters.method_of(linear) == "PREFIX_TUNING"
    assert linear.get_base_model().config.rope_parameters["rope_type"] == "linear"
    prompts = [[tokenizer.bos_token_id, *range(10, 30)]] * 2
    plain = pk.greedy(pk.load_with_rope(model_dir, "linear", 2.0, CONTEXT, "cpu"), tokenizer, prompts, 4, 2)
    assert pk.greedy(linear, tokenizer, prompts, 4, 2) != plain  # the prefix is part of the measured model


def test_conditions_for_models_with_and_without_extend(model_dir, tmp_path, tokenizer):
    cfg = EvalConfig()
    assert [c for c, _ in pk.conditions_for(cfg, model_dir, None)] == ["none", "linear", "dynamic", "yarn"]
    extended = save_tiny_model(tmp_path / "ext", tokenizer, ModelConfig(**{**TINY.__dict__, "rope_scaling": "linear",
                                                                             "rope_factor": 2.0}), seed=0) / "model"
    pairs = pk.conditions_for(cfg, extended, model_dir)  # eval's base model after extend
    assert pairs == [("none", model_dir), ("linear", model_dir), ("dynamic", model_dir), ("yarn", model_dir),
                     ("extend", extended)]
    assert pk.conditions_for(cfg, extended, None) == [("none", extended)]  # sft after extend: as trained only
    (tmp_path / "ext" / "manifest.json").write_text(json.dumps(
        {"stage": "extend", "inputs": {"pretrain": {"key": "k", "path": str(model_dir.parent)}}}))
    assert pk.unscaled_source(tmp_path / "ext") == model_dir
    assert pk.unscaled_source(model_dir.parent) is None


def test_config_errors_name_the_key():
    for bad, key in ((dict(passkey_depths=[0.5, 1.5]), "eval.passkey_depths"), (dict(passkey_lengths=[0]), "eval.passkey_lengths"),
                     (dict(passkey_lengths=[]), "eval.passkey_lengths"), (dict(passkey_conditions=["ntk"]), "eval.passkey_conditions"),
                     (dict(passkey_conditions=["none", "none"]), "eval.passkey_conditions"),
                     (dict(passkey_trials=-1), "eval.passkey_trials")):
        with pytest.raises(ValueError, match=key):
            EvalConfig(**bad)


def test_a_length_too_short_for_the_key_sentence_is_an_error_naming_the_key(tokenizer):
    with pytest.raises(ValueError, match="eval.passkey_lengths"):
        pk.build_prompt(tokenizer, np.arange(10, 200), 20, 0.5, "12345", random.Random(0))


def test_recall_document_answers_each_label_with_its_key_and_passes_the_repetition_filters():
    from datatrove.data import Document
    from datatrove.pipeline.filters import FineWebQualityFilter, GopherRepetitionFilter

    prose = " ".join(f"Sentence number {i} says something about the library." for i in range(40))
    text, keys = recall_document(prose, random.Random(3))
    for key in keys:  # stated once, answered once, after the same "<label> is"
        stated, answered_ = (text.split(f" is {key}")[i].split()[-2:] for i in (0, 1))
        assert text.count(key) == 2 and stated == answered_ and stated[0] in RECALL_COLORS
    assert text.index("Now the same list again.") > max(text.index(f"is {k}.") for k in keys)
    doc = Document(text=text, id="recall")
    assert GopherRepetitionFilter().filter(doc) is True and FineWebQualityFilter().filter(doc) is True


def test_planted_document_states_the_key_at_its_depth_and_answers_it():
    prose = " ".join(f"Sentence number {i} says something about the library." for i in range(40))
    text, key, depth = planted_document(prose, random.Random(3))
    assert text.count(key) == 3 and text.endswith(f"{QUESTION} {key}.")
    before, after = text.split(KEY_SENTENCE.format(key=key))
    filler_before, filler_after = len(before.split()), len(after.split()) - len(QUESTION.split()) - 1
    assert depth == pytest.approx(filler_before / (filler_before + filler_after))
    assert 50 <= len(text.split()) <= 100  # Gopher quality's minimum; fits the default context


def test_report_section_draws_one_heatmap_per_model(tmp_path):
    grid = {"1": {"0": 1.0, "1": 0.5}, "2": {"0": 0.0, "1": 0.25}}
    results = {"base": {"passkey": {"n": 4, "context": 64, "none": grid, "linear": grid}}, "sft": {}}
    lines = passkey_section(tmp_path, results, ["base", "sft"])
    assert (tmp_path / "passkey_base.png").stat().st_size > 1000 and not (tmp_path / "passkey_sft.png").exists()
    assert "| RoPE as trained | 0.75 | 0.12 |" in lines and "![passkey heat-map, base](passkey_base.png)" in lines


def test_a_model_trained_on_the_prompts_scores_1_and_the_untrained_one_0(tmp_path, tokenizer, tok_dir):
    """The scoring path end to end (prompts identical from call to call, greedy, exact match): a tiny model
    fitted for seconds on the very prompts and their keys answers them all; before, none."""
    from transformers import AutoModelForCausalLM

    filler = pk.filler_tokens(tok_dir, tokenizer)
    args = dict(length=96, depths=[0.0, 0.5, 1.0], trials=2, seed=0)
    plain = ModelConfig(**{**TINY.__dict__, "init_std": 0.02})
    model = AutoModelForCausalLM.from_pretrained(save_tiny_model(tmp_path, tokenizer, plain, seed=0) / "model")
    assert pk.accuracy_by_depth(model.eval(), tokenizer, filler, batch_size=8, **args) == {"0": 0.0, "0.5": 0.0, "1": 0.0}
    rows = [(ids + pk.answer_ids(tokenizer, key), [-100] * len(ids) + pk.answer_ids(tokenizer, key))
            for _, key, ids in pk.passkey_prompts(tokenizer, filler, **args)]
    width = max(len(ids) for ids, _ in rows)  # right padding, out of the loss: causal, so no effect before it
    batch = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(60):  # loss ~0.1 by then
        loss = model(input_ids=batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert pk.accuracy_by_depth(model.eval(), tokenizer, filler, batch_size=8, **args) == {"0": 1.0, "0.5": 1.0, "1": 1.0}


def test_the_benchmarks_answer_only_labels_and_rope_swap():
    """benchmarks/copy_skill and passkey_extension, whose README figures rest on these: the loss sees the answered
    key alone, a row has the key where the question's answer is, and a RoPE swap keeps the weights (same logits as
    trained; linear PI changes them past position 0)."""
    from benchmarks.common import Vocabulary, build_model
    from benchmarks.copy_skill import answer_labels, passkey_rows
    from benchmarks.passkey_extension import ROW_EXTRA, with_rope

    rows = passkey_rows(3, 30, torch.Generator().manual_seed(0))
    assert rows.shape == (3, 30 + ROW_EXTRA)
    labels = answer_labels(rows, 5)
    assert (labels[:, :-5] == -100).all() and torch.equal(labels[:, -5:], rows[:, -5:])
    key_at = [r.tolist().index(32) + 1 for r in rows]  # after the marker's last id: the key, stated once
    assert all(torch.equal(r[at:at + 5], r[-5:]) for r, at in zip(rows, key_at))
    base = build_model(ModelConfig(context_length=64), Vocabulary(), 0).eval()
    same, interpolated = with_rope(base, 64, "none", 1), with_rope(base, 64, "linear", 2)
    with torch.no_grad():
        logits = [m(input_ids=rows).logits for m in (base, same, interpolated)]
    assert torch.equal(logits[0], logits[1]) and not torch.allclose(logits[0], logits[2])


def test_the_benchmarks_fit_trains_in_bf16_only_on_a_cpu_that_has_it(cpu_bf16):
    """copy_skill.fit (behind copy_skill's and passkey_extension's figures) autocasts to bf16 where the CPU has it
    natively and stays fp32 where it would be emulated (~20x slower), on either kind of host (forced both ways)."""
    from benchmarks.common import Vocabulary, build_model
    from benchmarks.copy_skill import fit, passkey_rows

    model = build_model(ModelConfig(n_layers=1, d_model=64, n_heads=2, n_kv_heads=1, ffn_hidden=128), Vocabulary(), 0)
    seen, losses = set(), []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    generator = torch.Generator().manual_seed(0)
    fit(model, lambda: passkey_rows(4, 10, generator), 5, 25, 1e-3, report=lambda step, loss: losses.append(loss))
    assert seen == ({torch.bfloat16} if cpu_bf16 else {torch.float32}), seen
    assert len(losses) == 1 and 0 < losses[0] < 10
