"""Model variants: MoE (router loss, active-parameter FLOPs, HF round trip), RoPE scaling,
gradient checkpointing and fp16 precision in the shared loop."""
import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM

from components.config import output_relevant
from components.model.build import build_model
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.train import budget
from components.train.loop import enable_gradient_checkpointing, make_accelerator, train
from components.train.losses import lm_loss, token_nll_sum

VOCAB = 96
SHAPE = dict(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, ffn_hidden=128, context_length=32)


class Vocab:
    """What build_model reads of a tokenizer."""
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 3

    def __len__(self):
        return VOCAB


def ids(rows=4, length=32, seed=0):
    return torch.randint(4, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


def moe(**kw):
    return build_model(ModelConfig(**SHAPE, moe_experts=4, moe_top_k=2, **kw), Vocab(), seed=0)


# --- MoE ---------------------------------------------------------------------------------------

def test_moe_router_loss_enters_the_training_loss_per_target():
    model = moe(router_aux_loss_coef=0.5).train()
    batch = {"input_ids": ids()}
    loss_sum, metrics = lm_loss(model, batch)
    nll = token_nll_sum(model, batch["input_ids"], batch["input_ids"])
    n_targets = 4 * 31
    assert metrics["moe_aux_loss"] > 0
    # the loop divides by n_targets: coef * aux per target, as HF's MixtralForCausalLM adds it to its mean loss
    assert float((loss_sum - nll).detach()) == pytest.approx(0.5 * metrics["moe_aux_loss"] * n_targets, rel=1e-5)
    model.eval()
    assert lm_loss(model, batch)[1] == {}  # validation: the language-model loss alone


def test_moe_trains_logs_aux_counts_active_flops_and_round_trips(tmp_path):
    model = moe()
    assert type(model).__name__ == "MixtralForCausalLM"
    data = ids(4, 32, seed=1)  # one fixed batch: its loss must fall

    def batch_fn(step, micro):
        return {"input_ids": data, "n_targets": data[:, 1:].numel(), "n_tokens": data.numel()}

    cfg = PretrainConfig(model=ModelConfig(**SHAPE, moe_experts=4), lr=2e-2, max_steps=6, warmup_steps=1,
                         batch_size=4, mixed_precision="no", spike_factor=0.0, log_every=1)
    metrics = train(model, cfg, batch_fn, lm_loss, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert all(r["moe_aux_loss"] > 0 for r in rows)

    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert experts > total / 2
    assert metrics["flops_per_token"] == budget.flops_per_token(total - experts // 2, 2, 64, 32)  # top 2 of 4

    model.save_pretrained(tmp_path / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    assert type(reloaded).__name__ == "MixtralForCausalLM"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=data).logits, reloaded.eval()(input_ids=data).logits)


def test_fsdp_wraps_the_models_own_decoder_layer():
    from components.train.loop import decoder_layer_classes

    assert decoder_layer_classes(moe()) == ["MixtralDecoderLayer"]
    assert decoder_layer_classes(build_model(ModelConfig(**SHAPE), Vocab(), 0)) == ["LlamaDecoderLayer"]


def test_moe_config_errors_name_the_key():
    with pytest.raises(ValueError, match="pretrain.model.moe_top_k"):
        ModelConfig(moe_experts=4, moe_top_k=5)
    with pytest.raises(ValueError, match="pretrain.model.moe_experts"):
        ModelConfig(moe_experts=1)


# --- RoPE scaling -------------------------------------------------------------------------------

def rotary(model, positions):
    x = torch.zeros(1, len(positions), 64)
    return model.model.rotary_emb(x, torch.tensor([positions]))


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_each_rope_scaling_builds_and_runs_past_the_original_context(kind):
    model = build_model(ModelConfig(**SHAPE, rope_scaling=kind, rope_factor=4.0, rope_original_context=16), Vocab(), 0)
    assert model.config.rope_parameters["rope_type"] == kind
    plain = build_model(ModelConfig(**SHAPE), Vocab(), 0)
    long = list(range(64))  # 4x the original 16
    with torch.no_grad():
        logits = model(input_ids=ids(1, 64)).logits
        cos, _ = rotary(model, long)
        plain_cos, _ = rotary(plain, long)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(cos[0, 40:], plain_cos[0, 40:], atol=1e-4)  # positions past 16 are rescaled


def test_linear_scaling_at_f_times_p_is_unscaled_p():
    scaled = build_model(ModelConfig(**SHAPE, rope_scaling="linear", rope_factor=4.0), Vocab(), 0)
    plain = build_model(ModelConfig(**SHAPE), Vocab(), 0)
    p = list(range(0, 32))
    with torch.no_grad():
        cos_s, sin_s = rotary(scaled, [4 * q for q in p])
        cos_p, sin_p = rotary(plain, p)
    assert torch.allclose(cos_s, cos_p, atol=1e-5) and torch.allclose(sin_s, sin_p, atol=1e-5)
    assert scaled.config.max_position_embeddings == 4 * 32


def test_rope_config_errors_name_the_key():
    with pytest.raises(ValueError, match="pretrain.model.rope_scaling"):
        ModelConfig(rope_scaling="ntk")
    with pytest.raises(ValueError, match="pretrain.model.rope_factor"):
        ModelConfig(rope_scaling="linear", rope_factor=0.5)


# --- gradient checkpointing and precision ---------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: build_model(ModelConfig(**SHAPE), Vocab(), 0), moe])
def test_gradient_checkpointing_gives_the_same_gradients(make):
    grads = []
    for checkpointing in (False, True):
        model = make().train()
        if checkpointing:
            enable_gradient_checkpointing(model)
            assert model.is_activation_checkpointing
        loss, _ = lm_loss(model, {"input_ids": ids()})
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6, rtol=0), name


def test_gradient_checkpointing_and_compile_are_not_in_the_cache_key():
    assert output_relevant(PretrainConfig(gradient_checkpointing=True)) == output_relevant(PretrainConfig())
    assert output_relevant(PretrainConfig(compile=True)) == output_relevant(PretrainConfig())  # same result to 1e-4
    assert output_relevant(PretrainConfig(mixed_precision="fp16")) != output_relevant(PretrainConfig())


def test_fp16_is_accepted_and_falls_back_to_fp32_on_cpu(tmp_path, caplog):
    cfg = PretrainConfig(mixed_precision="fp16", max_steps=2, warmup_steps=1, batch_size=2, log_every=1,
                         gradient_checkpointing=True)
    model = build_model(ModelConfig(**SHAPE), Vocab(), 0)
    data = ids(2, 32)
    with caplog.at_level(logging.WARNING):
        accelerator = make_accelerator(cfg, model)
        metrics = train(model, cfg, lambda s, m: {"input_ids": data, "n_targets": 62}, lm_loss, tmp_path,
                        accelerator=accelerator)
    assert metrics["steps"] == 2 and metrics["final_loss"] == metrics["final_loss"]  # finite, not NaN
    if not torch.cuda.is_available():
        assert accelerator.mixed_precision == "no"
        assert "NOTE: mixed_precision=fp16" in caplog.text
    with pytest.raises(ValueError, match="pretrain.mixed_precision"):
        PretrainConfig(mixed_precision="fp8")
