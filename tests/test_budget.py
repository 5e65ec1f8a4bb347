"""FLOPs per token, memory estimate and MFU: the numbers logged before and during training."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from components.train import budget


@pytest.fixture(scope="module")
def llama():
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=64, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def test_flops_per_token_is_6n_plus_attention(llama):
    n, layers, d = budget.model_shape(llama)
    assert n == sum(p.numel() for p in llama.parameters()) and (layers, d) == (2, 32)
    assert budget.flops_per_token(n, layers, d, 128) == 6 * n + 6 * 2 * 128 * 32


def test_memory_estimate_counts_16_bytes_per_parameter_and_shards_them(llama):
    n = sum(p.numel() for p in llama.parameters())
    one = budget.memory_estimate(llama, micro_batch=4, seq_len=64, world=1, sharded=False)
    assert one["params"] + one["grads"] + one["optimizer"] == 16 * n
    two = budget.memory_estimate(llama, micro_batch=4, seq_len=64, world=2, sharded=True)
    assert two["optimizer"] == one["optimizer"] / 2 and two["activations"] == one["activations"]
    double = budget.memory_estimate(llama, micro_batch=8, seq_len=64, world=1, sharded=False)
    assert double["activations"] == 2 * one["activations"]
    assert one["total"] == sum(v for k, v in one.items() if k != "total")


def test_mfu_and_peak_flops():
    assert budget.peak_flops(2.0, torch.device("cpu")) == 2e12
    assert budget.peak_flops(0.0, torch.device("cpu")) is None  # no table entry for CPUs: no made-up MFU
    assert budget.mfu(1000.0, 1e9, 2, 1e12) == pytest.approx(0.5)
    assert budget.mfu(1000.0, 1e9, 1, None) is None


def test_training_records_flops_memory_and_mfu(tmp_path, llama):
    from components.train.config import TrainConfig
    from components.train.loop import train
    from components.train.losses import lm_loss

    g = torch.Generator().manual_seed(0)

    def batch_fn(step, micro):
        ids = torch.randint(0, 100, (4, 16), generator=g)
        return {"input_ids": ids, "n_targets": ids[:, 1:].numel(), "n_tokens": ids.numel()}

    cfg = TrainConfig(max_steps=3, warmup_steps=1, batch_size=4, mixed_precision="no", log_every=1,
                      peak_tflops=1.0)
    metrics = train(llama, cfg, batch_fn, lm_loss, tmp_path)
    n = sum(p.numel() for p in llama.parameters())
    assert metrics["flops_per_token"] == budget.flops_per_token(n, 2, 32, 16)
    assert metrics["memory_estimate_mb"] > 16 * n / 2**20
    assert 0 < metrics["mfu"] < 1
