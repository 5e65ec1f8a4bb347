"""The training stages and eval on a GPU, through the real loop, in bf16.

The GPU tests (marker `gpu`) skip without CUDA; benchmarks/gpu_check.sh runs them on a GPU
machine, whose Python has torch, transformers, accelerate and peft but none of the
orchestration (Prefect, Hydra, datatrove, wandb): so this file and the stages it runs must
not need them, which test_gpu_check_needs_no_orchestration proves on any machine. The same
chain also runs on the CPU here, so the GPU file is exercised in every `make test`.
"""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from components.align.config import AlignConfig
from components.context import StageContext
from components.eval import metrics as m
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.sft.config import SFTConfig
from components.tasks import preference_pairs, sft_examples
from components.train import device
from tests.tiny import make_tokenizer_artifact

REPO = Path(__file__).resolve().parents[1]
TINY = ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128, context_length=64)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# what the GPU machine lacks: importing any of them from the stages would break the GPU check there
ORCHESTRATION = ("prefect", "hydra", "omegaconf", "datatrove", "wandb", "datasets", "trl")


def run_chain(root: Path, precision: str) -> dict:
    """pretrain -> sft -> align (DPO) for a few steps each, then eval's measures of the aligned model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.align.run import run as align
    from components.pretrain.run import run as pretrain
    from components.sft.run import run as sft

    tok = make_tokenizer_artifact(root / "tokenizer")
    few = dict(warmup_steps=1, log_every=1, save_every=1000, mixed_precision=precision)
    out = {}
    for name, fn, cfg, inputs in (
        ("pretrain", pretrain, PretrainConfig(model=TINY, max_steps=6, batch_size=8, max_val_tokens=512, **few),
         {"tokenizer": tok}),
        ("sft", sft, SFTConfig(max_steps=6, batch_size=8, num_examples=64, num_val_examples=16, **few),
         {"pretrain": root / "pretrain", "tokenizer": tok}),
        ("align", align, AlignConfig(max_steps=4, batch_size=4, num_pairs=16, num_val_pairs=8, **few),
         {"sft": root / "sft", "tokenizer": tok}),
    ):
        (root / name).mkdir()
        out[name] = fn(cfg, inputs, StageContext.local(root / name))
    model_dir = root / "align" / "model"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device.default_device()).eval()
    out["eval_device"] = str(device.model_device(model))
    acc, _, answers = m.task_accuracy(model, tokenizer, sft_examples("heldout", 8, 0), 8, 4)
    out["eval"] = {"task_accuracy": acc, "answers": len(answers),
                   "preference_accuracy": m.preference_accuracy(model, tokenizer, preference_pairs("heldout", 8, 0), 4),
                   "val_ppl": m.val_ppl(model, torch.randint(8, len(tokenizer), (4, 32)), 2)}
    return out


def check_chain(out: dict) -> None:
    for stage in ("pretrain", "sft", "align"):
        assert out[stage]["steps"] > 0 and math.isfinite(out[stage]["final_loss"]), (stage, out[stage])
    assert out["pretrain"]["final_loss"] < math.log(400) + 1  # learned something from a uniform start
    assert 0 <= out["eval"]["task_accuracy"] <= 1 and out["eval"]["answers"] == 8
    assert math.isfinite(out["eval"]["val_ppl"])


@pytest.mark.gpu
@needs_cuda
def test_stages_train_and_eval_on_the_gpu_in_bf16(tmp_path):
    out = run_chain(tmp_path, "bf16")
    check_chain(out)
    assert out["eval_device"].startswith("cuda")
    assert out["pretrain"]["mfu"] > 0  # the GPU's peak is known (budget.PEAK_FLOPS), so MFU is reported


@pytest.mark.gpu
@needs_cuda
def test_the_loop_places_model_and_batches_on_cuda(tmp_path):
    from components.model.build import build_model
    from components.train import loop
    from components.train.losses import lm_loss
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(make_tokenizer_artifact(tmp_path / "tok") / "hf")
    seen = []

    def loss_fn(model, batch):
        seen.append((batch["input_ids"].device.type, device.model_device(model).type))
        return lm_loss(model, batch)

    cfg = PretrainConfig(model=TINY, max_steps=3, warmup_steps=1, batch_size=4, grad_accum=2, log_every=1)
    model = build_model(TINY, tokenizer, 0)
    data = torch.randint(8, len(tokenizer), (4, 64))
    metrics = loop.train(model, cfg, lambda s, i: {"input_ids": data, "n_targets": 4 * 63}, loss_fn, tmp_path / "run")
    assert set(seen) == {("cuda", "cuda")} and len(seen) == 6
    assert metrics["final_loss"] < math.log(len(tokenizer))


def test_the_chain_runs_on_this_machine(tmp_path):
    """The GPU file's chain on whatever this machine is (CPU in CI), in the default precision."""
    out = run_chain(tmp_path, "bf16")
    check_chain(out)
    assert out["eval_device"] == str(device.default_device())


def test_gpu_check_needs_no_orchestration(tmp_path):
    """Import what the GPU check runs with the orchestration packages made unimportable."""
    code = (
        "import sys\n"
        f"for name in {ORCHESTRATION!r}: sys.modules[name] = None  # as if not installed: find_spec None, import fails\n"
        "import tests.test_gpu, benchmarks.gpu_throughput\n"
        "import components.pretrain.run, components.sft.run, components.align.run, components.eval.metrics\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
