"""Multi-process training for real: `accelerate launch` with 2 CPU processes on gloo.

Accelerate on CPU can silently run one process, or silently turn FSDP into DDP
(measured with accelerate 1.15), so the tests check the world size the processes saw and, for FSDP,
that each rank holds only part of the parameters, not just that the run finished.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from components.context import StageContext
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.pretrain.run import run as pretrain
from components.train.config import LauncherConfig
from components.train.launch import accelerate_args, launch
from tests.tiny import make_tokenizer_artifact

pytestmark = pytest.mark.slow
TINY = ModelConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=32)


def _cfg(**kw):
    return PretrainConfig(model=TINY, max_steps=5, warmup_steps=1, batch_size=4, grad_accum=2, lr=1e-2,
                          mixed_precision="no", log_every=1, save_every=100, **kw)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def single(tok_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    return out, pretrain(_cfg(), {"tokenizer": tok_dir}, StageContext.local(out))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_train_like_one(strategy, single, tok_dir, tmp_path):
    metrics = launch(_cfg(), {"tokenizer": tok_dir}, StageContext.local(tmp_path, stage="pretrain"),
                     LauncherConfig(strategy=strategy, num_processes=2))
    assert metrics["world_size"] == 2 and metrics["strategy"] == strategy
    if strategy == "fsdp":  # really sharded: each rank holds about half of the parameters
        assert 0.3 < metrics["param_share_per_rank"] < 0.7
    else:
        assert metrics["param_share_per_rank"] == 1.0
    one, two = _losses(single[0]), _losses(tmp_path)
    assert len(one) == len(two) == 5
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-4  # same global batch, fp32: reduction order only
    assert two[-1] < two[0]
    wa, wb = load_file(single[0] / "model" / "model.safetensors"), load_file(tmp_path / "model" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)
    assert "[rank 0]" in (tmp_path / "launch" / "launch.log").read_text()


def test_dpo_two_processes_train_like_one(tok_dir, tmp_path):
    """Align's prefix-shared packed batches split between ranks whole pairs, the ones two rows
    per pair would give them (7 pairs: 4 and 3): the losses and held-out metrics of one process."""
    from transformers import AutoTokenizer

    from components.align.config import AlignConfig
    from components.align.run import run as align
    from components.model.build import build_model

    tokenizer = AutoTokenizer.from_pretrained(tok_dir / "hf")
    sft = tmp_path / "sft"
    build_model(TINY, tokenizer, seed=1).save_pretrained(sft / "model")
    tokenizer.save_pretrained(sft / "model")
    cfg = AlignConfig(max_steps=3, warmup_steps=1, batch_size=7, grad_accum=2, lr=5e-3, num_pairs=40, num_val_pairs=9,
                      loss="ipo", mixed_precision="no", log_every=1, save_every=100, rejected="generated", replay=0)
    (tmp_path / "one").mkdir()
    one = align(cfg, {"sft": sft}, StageContext.local(tmp_path / "one"))
    two = launch(cfg, {"sft": sft}, StageContext.local(tmp_path / "two", stage="align"),
                 LauncherConfig(strategy="ddp", num_processes=2))
    assert two["world_size"] == 2
    assert max(abs(a - b) for a, b in zip(_losses(tmp_path / "one"), _losses(tmp_path / "two"))) < 1e-4
    for key in ("val_reward_accuracy", "val_reward_margin", "val_preference_accuracy"):
        assert abs(one[key] - two[key]) < 1e-5


def test_a_failing_launch_raises_with_the_exit_code_and_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"exited with code [1-9].*launch\.log"):
        launch(_cfg(), {"tokenizer": tmp_path / "missing"}, StageContext.local(tmp_path, stage="pretrain"),
               LauncherConfig(strategy="ddp", num_processes=2))


def test_launcher_arguments_and_checks():
    args = accelerate_args(LauncherConfig(strategy="fsdp", num_processes=8, num_machines=2, machine_rank=1,
                                          main_process_ip="10.0.0.1", main_process_port=29500), on_gpu=True)
    assert args[args.index("--num_processes") + 1] == "16" and "--multi_gpu" in args
    assert args[args.index("--main_process_ip") + 1] == "10.0.0.1"
    assert args[args.index("--main_process_port") + 1] == "29500"
    one_machine = accelerate_args(LauncherConfig(strategy="ddp", num_processes=2), on_gpu=False)
    assert "--multi_gpu" in one_machine
    # port 0 on one machine: a free port each launch, so concurrent launches (parallel sweeps) never collide
    assert int(one_machine[one_machine.index("--main_process_port") + 1]) > 0
    for bad, key in [({"strategy": "deepspeed"}, "launcher.strategy"), ({"num_processes": 2}, "launcher.strategy"),
                     ({"strategy": "ddp", "num_machines": 2}, "launcher.main_process_ip"),
                     ({"strategy": "ddp", "num_machines": 2, "main_process_ip": "10.0.0.1"}, "launcher.main_process_port"),
                     ({"machine_rank": 3}, "launcher.machine_rank")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            LauncherConfig(**bad)


def test_fsdp_shards_an_moe_model_by_its_own_decoder_layer(tok_dir, tmp_path):
    """FSDP wraps the class the model names (MixtralDecoderLayer), not a hard-coded LLaMA layer."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM

    cfg = replace(_cfg(), model=replace(TINY, moe_experts=4))  # configs are frozen
    metrics = launch(cfg, {"tokenizer": tok_dir}, StageContext.local(tmp_path, stage="pretrain"),
                     LauncherConfig(strategy="fsdp", num_processes=2))
    assert metrics["world_size"] == 2 and 0.3 < metrics["param_share_per_rank"] < 0.7
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] and all(r["moe_aux_loss"] > 0 for r in rows)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "model")).__name__ == "MixtralForCausalLM"
