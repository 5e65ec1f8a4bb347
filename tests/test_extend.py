"""The optional extend stage: longer-context continued pretraining with RoPE scaling.

Off by default and then invisible (no step, sft's key unchanged); on, it sits between pretrain
and sft, sft and eval read its model, and it measures what interpolation and training bought.
"""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from components.context import StageContext
from components.extend.config import ExtendConfig
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from flows.config import register, to_pipeline_config
from flows.plan import make_plan
from tests.tiny import make_tokenizer_artifact

REPO = Path(__file__).resolve().parents[1]


def pipeline_config(*overrides: str):
    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return to_pipeline_config(compose("config", overrides=list(overrides)))


def test_off_by_default_the_plan_and_keys_do_not_change():
    plan = {s.stage: s for s in make_plan(pipeline_config())}
    assert "extend" not in plan
    assert plan["sft"].sources == {"pretrain": "pretrain", "tokenizer": "tokenizer"}  # tokenizer: sft.replay's text
    assert plan["sft"].inputs == {"pretrain": plan["pretrain"].key, "tokenizer": plan["tokenizer"].key}
    assert plan["eval"].sources["pretrain"] == "pretrain"


def test_on_it_stands_in_for_pretrain_after_it():
    plan = make_plan(pipeline_config("extend.enabled=true"))
    assert [s.stage for s in plan] == ["data", "tokenizer", "pretrain", "extend", "sft", "align", "reward", "rl", "eval"]
    steps = {s.stage: s for s in plan}
    assert steps["extend"].sources == {"pretrain": "pretrain", "tokenizer": "tokenizer"}
    assert steps["sft"].sources == {"pretrain": "extend", "tokenizer": "tokenizer"}
    assert steps["sft"].inputs == {"pretrain": steps["extend"].key, "tokenizer": steps["tokenizer"].key}
    assert steps["eval"].sources["pretrain"] == "extend" and steps["eval"].sources["sft"] == "sft"
    off = {s.stage: s for s in make_plan(pipeline_config())}
    assert steps["pretrain"].key == off["pretrain"].key and steps["sft"].key != off["sft"].key
    # run.until=extend stops there; changing an extend knob moves extend and what follows, not pretrain
    assert [s.stage for s in make_plan(pipeline_config("extend.enabled=true", "run.until=extend"))][-1] == "extend"
    moved = {s.stage: s.key for s in make_plan(pipeline_config("extend.enabled=true", "extend.lr=5e-4"))}
    assert moved["pretrain"] == steps["pretrain"].key and moved["extend"] != steps["extend"].key
    assert moved["sft"] != steps["sft"].key


@pytest.mark.parametrize("overrides, key", [
    (["run.until=extend"], "run.until"),
    (["extend.enabled=true", "extend.context_length=256"], "extend.context_length"),
    (["extend.enabled=true", "extend.rope_scaling=ntk"], "extend.rope_scaling"),
    (["extend.enabled=true", "extend.rope_factor=0.5"], "extend.rope_factor"),
])
def test_bad_extend_settings_fail_before_any_work(overrides, key):
    with pytest.raises(Exception, match=key.replace(".", r"\.")):
        pipeline_config(*overrides)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    from components.pretrain.run import run as pretrain

    tok = make_tokenizer_artifact(tmp_path_factory.mktemp("tok"))
    out = tmp_path_factory.mktemp("pretrain")
    model = ModelConfig(n_layers=2, d_model=64, n_heads=2, n_kv_heads=1, ffn_hidden=128, context_length=32)
    pretrain(PretrainConfig(model=model, max_steps=150, warmup_steps=10, batch_size=8, max_val_tokens=4096,
                            mixed_precision="no", save_every=1000), {"tokenizer": tok}, StageContext.local(out))
    return tok, out


def test_extend_trains_at_the_longer_context_and_measures_it(pretrained, tmp_path):
    from transformers import AutoModelForCausalLM

    from components.extend.run import run as extend

    tok, pre = pretrained
    cfg = ExtendConfig(enabled=True, context_length=64, max_steps=60, warmup_steps=5, batch_size=4,
                       max_val_tokens=4096, mixed_precision="no", save_every=1000)
    m = extend(cfg, {"pretrain": pre, "tokenizer": tok}, StageContext.local(tmp_path))
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["max_position_embeddings"] == 64
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2.0
    assert m["context_before"] == 32 and m["context_after"] == 64
    # training at the new context beats interpolation alone; the export is what was measured
    assert m["val_ppl_long"] < m["val_ppl_long_scaled_untrained"]
    assert m["val_ppl_long"] == pytest.approx(m["val_ppl"], rel=1e-4)
    rows = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60 and rows[-1]["tokens"] == 60 * 4 * 64  # 64 targets a window: the new context
    AutoModelForCausalLM.from_pretrained(tmp_path / "model")


def test_the_no_interpolation_baseline_still_declares_the_new_context(pretrained, tmp_path):
    from components.extend.run import run as extend

    tok, pre = pretrained
    cfg = ExtendConfig(enabled=True, context_length=64, rope_scaling="none", max_steps=3, warmup_steps=1,
                       batch_size=4, max_val_tokens=1024, mixed_precision="no", save_every=1000)
    extend(cfg, {"pretrain": pre, "tokenizer": tok}, StageContext.local(tmp_path))
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["max_position_embeddings"] == 64 and config["rope_parameters"]["rope_type"] == "default"


def test_extend_refuses_a_context_the_model_already_has(pretrained, tmp_path):
    from components.extend.run import run as extend

    tok, pre = pretrained
    with pytest.raises(ValueError, match=r"extend\.context_length=32"):
        extend(ExtendConfig(enabled=True, context_length=32), {"pretrain": pre, "tokenizer": tok}, StageContext.local(tmp_path))
