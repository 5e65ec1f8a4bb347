"""ALiBi positions (pretrain.model.position=alibi): slopes, attention bias, HF loading without the
project, KV cache, padding, training, config errors."""
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from components.model import alibi as alibi_module
from components.model.alibi import alibi_slopes
from components.model.build import build_model
from components.model.config import ModelConfig
from components.model.export import save_export
from components.pretrain.config import PretrainConfig
from components.train.loop import train
from components.train.losses import lm_loss
from tests.tiny import tiny_tokenizer

SHAPE = dict(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, context_length=32)  # GQA: 2 queries per kv head


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def alibi(tokenizer, **kw):
    return build_model(ModelConfig(**SHAPE, position="alibi", **kw), tokenizer, seed=0).eval()


def ids(tokenizer, rows=2, length=12, seed=0):
    return torch.randint(4, len(tokenizer), (rows, length), generator=torch.Generator().manual_seed(seed))


def test_slopes_follow_the_paper():
    for n in (4, 8):
        assert alibi_slopes(n).tolist() == [2 ** (-8 * h / n) for h in range(1, n + 1)]
    # 6 heads: the 4-head slopes, then the odd ones of the 8-head geometric sequence (BLOOM's build_alibi_tensor)
    assert alibi_slopes(6).tolist() == [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]


def test_zero_slopes_is_a_causal_model_without_positions(tokenizer, monkeypatch):
    model = alibi(tokenizer)
    x = ids(tokenizer)
    with torch.no_grad():
        with_bias = model(x).logits
        monkeypatch.setattr(alibi_module, "alibi_slopes", lambda n, device: torch.zeros(n, device=device))
        no_bias = model(x).logits
    plain = LlamaForCausalLM(LlamaConfig(**model.config.to_diff_dict() | {"model_type": "llama"})).eval()
    plain.load_state_dict(model.state_dict())
    plain.model.rotary_emb.forward = lambda h, position_ids: (torch.ones(*position_ids.shape, 16), torch.zeros(*position_ids.shape, 16))
    with torch.no_grad():
        reference = plain(x).logits  # rotation by angle 0: no position information at all
    assert torch.allclose(no_bias, reference, atol=1e-5)
    assert not torch.allclose(with_bias, reference, atol=1e-3)  # the bias changes the model


LOAD_ELSEWHERE = """
import sys, torch
from transformers import AutoModelForCausalLM


class NoProject:  # the venv may install the project (a .pth): forbid importing it outright
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("components", "flows"):
            raise ImportError(f"{name}: the project must not be needed")


sys.meta_path.insert(0, NoProject())
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
x = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save({"logits": model(x).logits, "generated": model.generate(x, max_new_tokens=4, do_sample=False)}, sys.argv[3])
"""


def test_exported_artifact_loads_with_transformers_alone(tokenizer, tmp_path):
    model, x = alibi(tokenizer), ids(tokenizer)
    save_export(model, tokenizer, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == "alibi.AlibiLlamaForCausalLM"
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "load.py").write_text(LOAD_ELSEWHERE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, str(tmp_path / "load.py"), str(tmp_path / "model"), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], cwd=elsewhere, env=env, check=True)
    out = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        assert torch.equal(model(x).logits, out["logits"])
        assert torch.equal(model.generate(x, max_new_tokens=4, do_sample=False), out["generated"])
        # inside the project (components.model registers alibi_llama): the stages load it without remote code
        local = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
        assert type(local) is type(model)
        assert torch.equal(model(x).logits, local(x).logits)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_generate_with_cache_equals_without(tokenizer, attention):
    model = alibi(tokenizer)
    model.set_attn_implementation(attention)
    x = ids(tokenizer, rows=1, length=6)
    with torch.no_grad():
        cached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=True)
        uncached = model.generate(x, max_new_tokens=6, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)
    with torch.no_grad():  # the cached logits themselves, token by token, against a full forward
        out = model(x, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        full = model(torch.cat([x, nxt], 1)).logits[:, -1]
        assert torch.allclose(model(nxt, cache=out.cache).logits[:, -1], full, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padded_rows_give_the_unpadded_logits(tokenizer, attention):
    model = alibi(tokenizer)
    model.set_attn_implementation(attention)
    short, long = ids(tokenizer, 1, 5, seed=1), ids(tokenizer, 1, 9, seed=2)
    pad = torch.full((1, 4), tokenizer.pad_token_id)
    with torch.no_grad():
        alone = model(short).logits[0]
        for row, real in ((torch.cat([short, pad], 1), slice(0, 5)), (torch.cat([pad, short], 1), slice(4, 9))):
            mask = torch.zeros(2, 9, dtype=torch.long)
            mask[0, real], mask[1] = 1, 1
            batch = model(torch.cat([row, long]), attention_mask=mask).logits
            assert torch.allclose(batch[0, real], alone, atol=1e-5)
            assert torch.allclose(batch[1], model(long).logits[0], atol=1e-5)
        left = torch.cat([pad, short], 1), torch.cat([torch.zeros(1, 4), torch.ones(1, 5)], 1).long()
        generated = model.generate(left[0], attention_mask=left[1], max_new_tokens=4, do_sample=False)[:, 9:]
        assert torch.equal(generated, model.generate(short, max_new_tokens=4, do_sample=False)[:, 5:])


def test_alibi_pretrains_and_its_loss_falls(tokenizer, tmp_path):
    model = build_model(ModelConfig(**SHAPE, position="alibi"), tokenizer, seed=0)
    data = ids(tokenizer, 4, 32, seed=3)

    def batch_fn(step, micro):
        return {"input_ids": data, "n_targets": data[:, 1:].numel(), "n_tokens": data.numel()}

    cfg = PretrainConfig(model=ModelConfig(**SHAPE, position="alibi"), lr=2e-2, max_steps=6, warmup_steps=1,
                         batch_size=4, mixed_precision="no", spike_factor=0.0, log_every=1)
    train(model, cfg, batch_fn, lm_loss, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3


def test_alibi_config_errors_name_the_key(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="pretrain.model.position"):
        ModelConfig(**SHAPE, position="learned")
    with pytest.raises(ValueError, match="pretrain.model.rope_scaling"):
        ModelConfig(**SHAPE, position="alibi", rope_scaling="linear", rope_factor=2.0)
    with pytest.raises(ValueError, match="pretrain.model.moe_experts"):
        ModelConfig(**SHAPE, position="alibi", moe_experts=4)
    save_export(build_model(ModelConfig(**SHAPE), tokenizer, seed=0), tokenizer, tmp_path / "rope")
    with pytest.raises(ValueError, match="pretrain.model.position"):
        ModelConfig(**SHAPE, position="alibi", init_from=str(tmp_path / "rope"))
    save_export(alibi(tokenizer), tokenizer, tmp_path / "alibi")
    ModelConfig(**SHAPE, position="alibi", init_from=str(tmp_path / "alibi"))  # an alibi checkpoint continues as alibi
    with pytest.raises(ValueError, match="pretrain.model.position"):
        ModelConfig(**SHAPE, init_from=str(tmp_path / "alibi"))


def test_extend_refuses_an_alibi_model(tokenizer, tmp_path):
    from types import SimpleNamespace

    from components.extend import run as extend
    from components.extend.config import ExtendConfig

    save_export(alibi(tokenizer), tokenizer, tmp_path / "pretrain" / "model")
    with pytest.raises(ValueError, match="extend.rope_scaling.*position=alibi"):
        extend.run(ExtendConfig(), {"pretrain": tmp_path / "pretrain", "tokenizer": tmp_path}, SimpleNamespace(out_dir=tmp_path / "out"))


SCORE_ELSEWHERE = LOAD_ELSEWHERE.split("model = ")[0] + """
from transformers import AutoModelForSequenceClassification
model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2])).logits, sys.argv[3])
"""


def test_the_reward_model_of_an_alibi_decoder_exports_and_scores_alike(tokenizer, tmp_path):
    """reward.enabled with position=alibi: the scalar head sits on the ALiBi decoder (not a RoPE one), scores a
    padded row as its unpadded self, and the export loads with transformers alone to the same scores."""
    from components.reward.model import scalar_head_model

    from tests.test_config import _config

    assert _config("pretrain.model.position=alibi", "reward.enabled=true").reward.enabled
    causal = alibi(tokenizer)
    save_export(causal, tokenizer, tmp_path / "sft")
    pad = tokenizer.pad_token_id
    model = scalar_head_model(tmp_path / "sft", pad, seed=0).eval()
    assert type(model).__name__ == "AlibiLlamaForSequenceClassification"
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, causal.model.layers[0].self_attn.q_proj.weight)
    x = ids(tokenizer, rows=2, length=10)
    padded = torch.cat([x[:1], torch.full((1, 4), pad)], dim=1)
    with torch.no_grad():
        scores = model(x).logits
        assert torch.allclose(model(padded, attention_mask=(padded != pad).long()).logits[0], scores[0], atol=1e-5)
        causal_hidden = causal.model(x).last_hidden_state[:, -1]
        assert torch.allclose(scores, model.score(causal_hidden), atol=1e-5)  # the decoder is the ALiBi one
    save_export(model, tokenizer, tmp_path / "reward")
    auto_map = json.loads((tmp_path / "reward" / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForSequenceClassification"] == "alibi.AlibiLlamaForSequenceClassification"
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "score.py").write_text(SCORE_ELSEWHERE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"HF_MODULES_CACHE": str(tmp_path / "modules")}
    (tmp_path / "elsewhere").mkdir()
    subprocess.run([sys.executable, str(tmp_path / "score.py"), str(tmp_path / "reward"), str(tmp_path / "x.pt"),
                    str(tmp_path / "out.pt")], cwd=tmp_path / "elsewhere", env=env, check=True)
    assert torch.equal(torch.load(tmp_path / "out.pt"), scores)
