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


@pytest.mark.gpu
@needs_cuda
def test_qlora_trains_lora_over_a_4bit_nf4_base_with_paged_adamw(tmp_path):
    """sft.adapter=qlora through the real loop: NF4 + double quantisation, paged AdamW, only the adapters
    move; the export (its base dequantized, the adapter beside it) loads with the logits it trained to."""
    bnb = pytest.importorskip("bitsandbytes")
    from accelerate import Accelerator

    from components.sft.run import encode_examples, make_batch_fn
    from components.train import adapters, loop
    from components.train.losses import lm_loss
    from tests.tiny import save_tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path / "tok")
    cfg = SFTConfig(adapter="qlora", max_steps=4, warmup_steps=1, batch_size=4, lr=1e-2, log_every=1, lora_rank=4)
    model = adapters.add_adapter(adapters.load_base(save_tiny_model(tmp_path / "base", tokenizer, TINY, 0) / "model", cfg),
                                 cfg, "sft", cfg.max_steps)
    quantized = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(quantized, bnb.nn.Linear4bit) and quantized.weight.quant_type == "nf4"
    assert quantized.weight.quant_state.nested  # double quantisation: the scales quantised too
    assert isinstance(loop.make_optimizer(model, cfg), bnb.optim.PagedAdamW)
    before = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    rows, _ = encode_examples(tokenizer, [(ex, str(i)) for i, ex in enumerate(sft_examples("train", 16, 0))], 64)
    batch_fn, _ = make_batch_fn(rows, cfg, 64, tokenizer.pad_token_id)
    accelerator = Accelerator()
    loop.train(model, cfg, batch_fn, lm_loss, tmp_path / "run", accelerator=accelerator)
    assert all("lora_" in k for k in before) and any(not torch.equal(v, before[k]) for k, v in model.named_parameters()
                                                      if k in before)
    batch = {k: v.cuda() for k, v in batch_fn(0, 0).items() if torch.is_tensor(v)}
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        trained = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    loop.save_model(accelerator, model, tokenizer, tmp_path / "export")
    assert (tmp_path / "export" / "adapter" / "adapter_config.json").is_file()
    loaded = adapters.load_model(tmp_path / "export").cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
        logits = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    torch.testing.assert_close(logits, trained, atol=5e-2, rtol=0)  # bf16 compute on both sides


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
