"""Precision and device, whatever the host: the bf16 detection forced both ways, stages of
different precision in one process, and every tensor the loop computes on reaching the
accelerator's device through the one function that moves batches (the path a GPU takes)."""
import pytest
import torch

from components.model.build import build_model
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.train import device, loop
from components.train.losses import lm_loss
from tests.tiny import make_tokenizer_artifact

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=16)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tokenizer_artifact(tmp_path_factory.mktemp("tok")) / "hf")


def cfg(precision: str, **kw) -> PretrainConfig:
    return PretrainConfig(mixed_precision=precision, max_steps=3, warmup_steps=1, batch_size=2, log_every=1,
                          save_every=1000, **kw)


def test_precision_follows_the_hardware(cpu_bf16, caplog):
    assert device.resolve_precision("bf16") == ("bf16" if cpu_bf16 else "no")
    assert ("NOTE: mixed_precision=bf16" in caplog.text) is not cpu_bf16
    assert device.resolve_precision("no") == "no"
    assert device.resolve_precision("fp16") == "no"  # fp16 needs a GPU's GradScaler


def test_stages_of_different_precision_share_one_process(cpu_bf16):
    """Accelerate refuses a second Accelerator with another precision in a process; the
    pipeline runs pretrain, sft and align one after another in one, each with its own."""
    expected = "bf16" if cpu_bf16 else "no"
    for precision, want in (("bf16", expected), ("no", "no"), ("bf16", expected)):
        assert loop.make_accelerator(cfg(precision)).mixed_precision == want


def _training_dtypes(tokenizer, precision: str, tmp_path) -> tuple[set, dict]:
    """Train a tiny model 3 steps; the dtypes its linear layers computed in, and the metrics.
    (Accelerate casts the model's outputs back to fp32, so the logits cannot tell.)"""
    seen = set()
    model = build_model(TINY, tokenizer, seed=0)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    data = torch.randint(8, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))
    metrics = loop.train(model, cfg(precision), lambda s, m: {"input_ids": data, "n_targets": 30}, lm_loss, tmp_path)
    return seen, metrics


def test_training_runs_in_the_resolved_precision(cpu_bf16, tokenizer, tmp_path):
    seen, metrics = _training_dtypes(tokenizer, "bf16", tmp_path / "bf16")
    assert seen == ({torch.bfloat16} if cpu_bf16 else {torch.float32})
    assert metrics["steps"] == 3 and torch.isfinite(torch.tensor(metrics["final_loss"]))
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")  # the manifest says what really ran
    seen, _ = _training_dtypes(tokenizer, "no", tmp_path / "fp32")  # then fp32 in the same process
    assert seen == {torch.float32}


def test_every_batch_reaches_the_accelerator_device(tokenizer, tmp_path, monkeypatch):
    """Batches are built on the CPU; the loop must hand the model tensors on accelerator.device
    (CUDA on a GPU machine). The spy records where each batch was sent; the objective checks
    what it received, for training steps and the validation pass alike."""
    moved_to, received = [], []
    real = device.to_device

    def spy(batch, where):
        moved_to.append(torch.device(where))
        return real(batch, where)

    monkeypatch.setattr(device, "to_device", spy)
    accelerator = loop.make_accelerator(cfg("no"))
    data = torch.randint(8, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(0))

    def loss_fn(model, batch):
        received.append(batch["input_ids"].device)
        return lm_loss(model, batch)

    model = build_model(TINY, tokenizer, seed=0)
    loop.train(model, cfg("no", grad_accum=2), lambda s, m: {"input_ids": data, "n_targets": 30}, loss_fn, tmp_path,
               accelerator=accelerator)
    assert len(moved_to) == 3 * 2 and set(moved_to) == {accelerator.device}
    assert set(received) == {accelerator.device}
    assert device.model_device(model) == accelerator.device


def test_to_device_moves_tensors_and_keeps_counts():
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "n_targets": 4, "ref": torch.zeros(2, 2)}
    out = device.to_device(batch, torch.device("cpu"))
    assert out["n_targets"] == 4 and out["input_ids"].device.type == "cpu" and out["ref"].shape == (2, 2)
