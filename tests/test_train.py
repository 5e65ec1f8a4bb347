"""The shared training loop: schedule, token-normalised accumulation, exact resume, config checks,
the AdamW kernel, and torch.compile (same curve as eager, exact resume, plain HF export)."""
import dataclasses
import json
import math

import pytest
import torch

from components.chat.batches import pad_batch
from components.context import StageContext
from components.model.build import build_model
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.train import device, tracking
from components.train.losses import IGNORE, lm_loss, token_nll_sum
from components.train.loop import accumulate_gradients, adamw_kernel, lr_at, make_accelerator, make_optimizer, train
from components.train.tracking import transaction_log_records
from tests.tiny import make_tokenizer_artifact

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=32)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tokenizer(tok_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tok_dir / "hf")


def test_lr_warms_up_then_decays_to_floor():
    cfg = PretrainConfig(lr=1.0, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))


def _masked(model, batch):
    return token_nll_sum(model, batch["input_ids"], batch["labels"], batch["attention_mask"]), {}


def test_accumulation_4x2_equals_batch_8(tokenizer):
    """Sequences with different numbers of targets: per-micro-batch means would differ."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (5, 9, 14, 20, 7, 30, 11, 3):
        ids = torch.randint(8, len(tokenizer), (n,), generator=gen).tolist()
        labels = [IGNORE] * (n // 2) + ids[n // 2 :]
        rows.append((ids, labels))

    def batch(part):
        b = pad_batch(part, tokenizer.pad_token_id)
        b["n_targets"] = int((b["labels"] != IGNORE).sum())
        return b

    grads = []
    for micro in ([rows], [rows[i : i + 2] for i in range(0, 8, 2)]):
        model = build_model(TINY, tokenizer, seed=0)
        accumulate_gradients(model, [batch(p) for p in micro], _masked, make_accelerator(PretrainConfig(mixed_precision="no")))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def _cfg(**kw):
    return PretrainConfig(model=TINY, max_steps=6, warmup_steps=2, batch_size=4, lr=1e-2, save_every=3,
                          mixed_precision="no", log_every=1, **kw)


def _run(cfg, tok_dir, out, crash_at=None):
    from components.pretrain import run as pretrain_run
    from components.train import next_token

    if crash_at is None:
        return pretrain_run.run(cfg, {"tokenizer": tok_dir}, StageContext.local(out))
    original = next_token.random_windows

    def crashing(tokens, seq_len, batch_size, seed, step, micro):
        if step == crash_at:
            raise KeyboardInterrupt("killed")
        return original(tokens, seq_len, batch_size, seed, step, micro)

    next_token.random_windows = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain_run.run(cfg, {"tokenizer": tok_dir}, StageContext.local(out))
    finally:
        next_token.random_windows = original


def _losses(out):
    return [json.loads(l)["loss"] for l in (out / "log.jsonl").read_text().splitlines()]


def test_resume_after_a_crash_continues_the_same_curve(tok_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    _run(_cfg(), tok_dir, straight)
    _run(_cfg(), tok_dir, resumed, crash_at=4)  # dies during step 5, after the step-3 checkpoint
    assert (resumed / "checkpoints").is_dir()
    metrics = _run(_cfg(), tok_dir, resumed)
    assert metrics["steps"] == 6
    a, b = _losses(straight), _losses(resumed)
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "model" / "model.safetensors"), load_file(resumed / "model" / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


# --- optimizer kernel and torch.compile ---------------------------------------------------------

def test_adamw_is_fused_where_torch_has_the_kernel_else_foreach():
    assert adamw_kernel([torch.zeros(2, 2)]) == {"fused": True}  # torch 2.13 fuses AdamW on CPU (and CUDA)
    assert adamw_kernel([torch.zeros(2, 2, device="meta")]) == {"foreach": True}  # no fused kernel there
    assert adamw_kernel([]) == {"foreach": True}


def test_fused_adamw_matches_the_per_tensor_update(tokenizer):
    """The fused kernel against the per-tensor loop torch used before on a CPU: same groups, same grads."""
    models = [build_model(TINY, tokenizer, seed=0) for _ in range(2)]
    cfg = PretrainConfig(lr=1e-2, weight_decay=0.1)
    fused = make_optimizer(models[0], cfg)
    assert fused.defaults["fused"]
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in make_optimizer(models[1], cfg).param_groups]
    reference = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        fused.step(), reference.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_gqa_eager_attention_matches_sdpa(tokenizer):
    """The attention compiled CPU training uses, against the model's SDPA, with padding and packing."""
    from components.train import compiling

    model = build_model(ModelConfig(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, ffn_hidden=128,
                                    context_length=32), tokenizer, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(8, len(tokenizer), (3, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, 20:] = 0  # right padding
    packed = torch.cat([torch.arange(10), torch.arange(14)]).expand(3, -1)  # two examples per row
    for kwargs in ({"attention_mask": mask}, {"position_ids": packed}):
        with torch.no_grad():
            reference = model(input_ids=ids, **kwargs).logits
            model.set_attn_implementation(compiling.register())
            grouped = model(input_ids=ids, **kwargs).logits
            model.set_attn_implementation("sdpa")
        keep = kwargs.get("attention_mask", torch.ones_like(ids)).bool()
        assert torch.allclose(grouped[keep], reference[keep], atol=1e-5)


def test_compile_without_a_cpu_compiler_names_the_key(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = torch.randint(8, len(tokenizer), (2, 16))
    with pytest.raises(ValueError, match=r"pretrain\.compile"):
        train(build_model(TINY, tokenizer, seed=0), _cfg(compile=True),
              lambda s, m: {"input_ids": data, "n_targets": 30}, lm_loss, tmp_path)


@pytest.fixture(scope="module")
def compiled_runs(tok_dir, tmp_path_factory):
    """One compile serves all: eager and compiled runs of the same config, and a compiled run
    that crashes in step 5 and resumes from the step-3 checkpoint (in process, so the second
    compiled run reuses the first one's code)."""
    runs = {name: tmp_path_factory.mktemp(name) for name in ("eager", "compiled", "resumed")}
    metrics = {"eager": _run(_cfg(), tok_dir, runs["eager"]), "compiled": _run(_cfg(compile=True), tok_dir, runs["compiled"])}
    _run(_cfg(compile=True), tok_dir, runs["resumed"], crash_at=4)
    metrics["resumed"] = _run(_cfg(compile=True), tok_dir, runs["resumed"])
    if device.bf16_supported():  # bf16 compiles its own graph: where inductor's NaN gradients showed up
        for name, compile in (("eager_bf16", False), ("compiled_bf16", True)):
            runs[name] = tmp_path_factory.mktemp(name)
            metrics[name] = _run(dataclasses.replace(_cfg(compile=compile), mixed_precision="bf16"), tok_dir, runs[name])
    return runs, metrics


@pytest.mark.slow  # one compile per precision (tens of seconds each on a CPU), shared by the fixture
def test_compiled_training_follows_the_eager_curve(compiled_runs):
    runs, metrics = compiled_runs
    eager, compiled = _losses(runs["eager"]), _losses(runs["compiled"])
    assert len(eager) == len(compiled) == 6
    assert max(abs(a - b) for a, b in zip(eager, compiled)) <= 1e-4  # fp32: kernels' summation order only
    assert metrics["compiled"]["val_loss"] == pytest.approx(metrics["eager"]["val_loss"], abs=1e-4)


@pytest.mark.slow
def test_compiled_bf16_training_stays_finite_and_follows_eager(compiled_runs):
    runs, metrics = compiled_runs
    if "compiled_bf16" not in runs:
        pytest.skip("this CPU has no native bf16: training runs fp32")
    rows = [json.loads(line) for line in (runs["compiled_bf16"] / "log.jsonl").read_text().splitlines()]
    assert metrics["compiled_bf16"]["skipped_steps"] == 0 and len(rows) == 6
    assert all(math.isfinite(r["grad_norm"]) for r in rows)  # NaN gradients come with a finite loss
    eager = _losses(runs["eager_bf16"])
    assert max(abs(r["loss"] - e) for r, e in zip(rows, eager)) <= 2e-2  # bf16 rounding, not fp32's 1e-4


@pytest.mark.slow
def test_compiled_resume_after_a_crash_is_exact(compiled_runs):
    runs, metrics = compiled_runs
    assert metrics["resumed"]["steps"] == 6
    straight, resumed = _losses(runs["compiled"]), _losses(runs["resumed"])
    assert len(resumed) == 6 and max(abs(a - b) for a, b in zip(straight, resumed)) <= 1e-6


@pytest.mark.slow
def test_compiled_model_exports_a_plain_hf_model(compiled_runs, tokenizer):
    """torch.compile's wrapper (`_orig_mod.` keys) never reaches the export: the same keys and
    config as an eager run's, loadable by AutoModelForCausalLM, with the trained weights."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    runs, _ = compiled_runs
    eager, compiled = (load_file(runs[k] / "model" / "model.safetensors") for k in ("eager", "compiled"))
    assert compiled.keys() == eager.keys() and not any("_orig_mod" in k for k in compiled)
    assert all(torch.allclose(compiled[k], eager[k], atol=1e-4) for k in eager)
    configs = [json.loads((runs[k] / "model" / "config.json").read_text()) for k in ("eager", "compiled")]
    assert configs[0] == configs[1]  # the eager attention used while compiling on a CPU is not saved
    model = AutoModelForCausalLM.from_pretrained(runs["compiled"] / "model")
    assert all(torch.equal(p, compiled[n]) for n, p in model.state_dict().items() if n in compiled)
    ids = torch.randint(8, len(tokenizer), (2, 16), generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_pretraining_lowers_validation_loss(tok_dir, tmp_path):
    metrics = _run(_cfg().__class__(**{**_cfg().__dict__, "max_steps": 40}), tok_dir, tmp_path)
    rows = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))
    assert metrics["val_ppl"] < len(__import__("transformers").AutoTokenizer.from_pretrained(tok_dir / "hf"))


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: PretrainConfig(lr=-1), "pretrain.lr"),
        (lambda: PretrainConfig(warmup_steps=5000), "pretrain.warmup_steps"),
        (lambda: PretrainConfig(mixed_precision="fp8"), "pretrain.mixed_precision"),
        (lambda: ModelConfig(d_model=100, n_heads=3), "pretrain.model.n_heads"),
        (lambda: ModelConfig(n_heads=4, n_kv_heads=3), "pretrain.model.n_kv_heads"),
    ],
)
def test_bad_values_name_their_key(make, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        make()


def test_wandb_offline_run_lands_in_the_artifact(tok_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from components.pretrain.run import run

    out = tmp_path / "anywhere"  # the run's name comes from the stage's context, not from the path
    out.mkdir()
    run(_cfg(), {"tokenizer": tok_dir}, StageContext(stage="pretrain", key="0123abcd", out_dir=out,
                                                     run_group="llm-pipeline-calm-fox-1a2b3c4d",
                                                     upstream={"tokenizer": "77ee"}))
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")
    name, group, config, history, artifacts = None, None, {}, [], []
    for record in transaction_log_records(records):
        if record.HasField("run"):
            name, group = record.run.display_name, record.run.run_group
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        if record.HasField("history"):
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        if record.HasField("artifact"):
            artifacts.append(record.artifact)
    assert name == "pretrain-0123abcd"
    assert group == "llm-pipeline-calm-fox-1a2b3c4d"  # one group per pipeline run, not per stage
    assert config["upstream"] == {"tokenizer": "77ee"} and config["key"] == "0123abcd"  # lineage
    assert [a.type for a in artifacts] == ["model"]  # the exported model, logged as a reference
    assert any(e.ref.endswith("/model/config.json") for e in artifacts[0].manifest.contents), artifacts[0].manifest
    losses = [row["loss"] for row in history if "loss" in row]
    assert losses == pytest.approx(_losses(out))  # every logged step, the same values as log.jsonl
    # A log still being written (wandb-core flushes on close) reads as the records complete so far.
    kinds = [r.WhichOneof("record_type") for r in transaction_log_records(records)]
    assert kinds[-1] == "exit"  # the stage waited for it before its manifest
    partial = tmp_path / "partial.wandb"
    for cut in (0, 7, 100, len(records.read_bytes()) // 2, len(records.read_bytes()) - 1):
        partial.write_bytes(records.read_bytes()[:cut])
        got = [r.WhichOneof("record_type") for r in transaction_log_records(partial)]
        assert got == kinds[: len(got)] and len(got) < len(kinds)


def test_wandb_tables_are_logged(tmp_path, monkeypatch):
    """Eval's per-task accuracy and sample generations reach wandb as tables (offline run, real records)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    tracker = tracking.start(StageContext(stage="eval", key="feed", out_dir=tmp_path), None)
    tracker.finish({"base/task_accuracy": 0.5},
                   tables={"per_task_accuracy": (["task", "base"], [["copy", 0.5], ["sort", 0.25]])})
    (records,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    logged = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for r in transaction_log_records(records)
              if r.HasField("history") for item in r.history.item}
    assert logged["per_task_accuracy/_type"] == "table-file" and logged["per_task_accuracy/nrows"] == 2
