"""pretrain.model.init_from: continue from an existing HF checkpoint with its own tokenizer and chat template.
The checkpoint is a tiny LlamaForCausalLM the test saves itself (offline)."""
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from components.artifacts import stage_key
from components.context import StageContext
from components.model.config import ModelConfig
from components.pretrain.config import PretrainConfig
from components.stages import STAGES
from tests.tiny import corpus, make_tokenizer_artifact
from tokenizer.config import TokenizerConfig

SMALL = dict(mixed_precision="no", batch_size=2, max_val_tokens=256, log_every=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved HF model directory: config.json, safetensors, tokenizer with a chat template."""
    root = tmp_path_factory.mktemp("ckpt")
    tok = AutoTokenizer.from_pretrained(make_tokenizer_artifact(root / "tok") / "hf")
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A data artifact's shape: train/ and validation/ jsonl.gz of {"text": ...}."""
    root = tmp_path_factory.mktemp("data")
    docs = corpus()[:80]
    for split, part in (("validation", docs[:10]), ("train", docs[10:])):
        (root / split).mkdir()
        with gzip.open(root / split / "00000.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps({"text": t}) + "\n" for t in part)
    return root


@pytest.fixture(scope="module")
def imported_tokenizer(checkpoint, data_dir, tmp_path_factory) -> tuple[Path, dict]:
    from tokenizer.run import run

    out = tmp_path_factory.mktemp("tokenizer")
    metrics = run(TokenizerConfig(init_from=str(checkpoint), num_workers=1), {"data": data_dir}, StageContext.local(out))
    return out, metrics


def test_tokenizer_stage_imports_the_checkpoints_tokenizer(checkpoint, data_dir, imported_tokenizer):
    from components.train.data import load_shard
    from tokenizer.encode import read_texts

    out, metrics = imported_tokenizer
    own, exported = AutoTokenizer.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(out / "hf")
    assert exported.get_vocab() == own.get_vocab() and exported.chat_template == own.chat_template
    assert not (out / "spm.model").exists()  # nothing trained
    assert metrics["imported_from"] == str(checkpoint) and metrics["vocab_size"] == len(own)
    val = list(read_texts(data_dir / "validation"))
    first = own(val[0], add_special_tokens=False, split_special_tokens=True)["input_ids"]
    shard = load_shard(out, "validation")
    assert shard[: len(first) + 2].tolist() == [own.bos_token_id, *first, own.eos_token_id]
    content = len(shard) - 2 * len(val)
    assert metrics["bytes_per_token"] == pytest.approx(sum(len(t.encode()) for t in val) / content, abs=1e-4)


def test_max_steps_0_imports_the_weights_unchanged(checkpoint, imported_tokenizer, tmp_path):
    from components.pretrain.run import run

    cfg = PretrainConfig(model=ModelConfig(init_from=str(checkpoint), context_length=32), max_steps=0, **SMALL)
    metrics = run(cfg, {"tokenizer": imported_tokenizer[0]}, StageContext.local(tmp_path))
    saved = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert saved.keys() == exported.keys()
    assert all(torch.equal(saved[k], exported[k]) for k in saved)
    assert metrics["steps"] == 0 and np.isfinite(metrics["val_loss"])
    assert AutoTokenizer.from_pretrained(tmp_path / "model").chat_template  # sft renders chats with it


def test_continued_pretraining_starts_from_the_checkpoint(checkpoint, imported_tokenizer, tmp_path):
    from components.pretrain.run import run

    # shape keys that disagree with the checkpoint are ignored, not applied
    cfg = PretrainConfig(model=ModelConfig(init_from=str(checkpoint), context_length=32, n_layers=7), max_steps=3,
                         warmup_steps=1, lr=1e-3, **SMALL)
    metrics = run(cfg, {"tokenizer": imported_tokenizer[0]}, StageContext.local(tmp_path))
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    saved = AutoModelForCausalLM.from_pretrained(checkpoint)
    assert trained.config.num_hidden_layers == 2 and metrics["steps"] == 3
    assert metrics["params"] == sum(p.numel() for p in saved.parameters())
    delta = max((a - b).abs().max().item() for a, b in zip(trained.parameters(), saved.parameters()))
    assert 0 < delta < 0.05  # moved a few small steps away from the checkpoint, not re-initialised


def test_cache_key_follows_the_checkpoints_content_not_only_its_path(checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    spec = STAGES["pretrain"]
    cfg = PretrainConfig(model=ModelConfig(init_from=str(copy)), max_steps=0)
    key = stage_key("pretrain", cfg, {"tokenizer": "t"}, spec.module)
    assert stage_key("pretrain", cfg, {"tokenizer": "t"}, spec.module) == key
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert stage_key("pretrain", cfg, {"tokenizer": "t"}, spec.module) != key
    tok_key = stage_key("tokenizer", TokenizerConfig(init_from=str(copy)), {"data": "d"}, STAGES["tokenizer"].module)
    (copy / "tokenizer_config.json").write_text((copy / "tokenizer_config.json").read_text() + " ")
    assert stage_key("tokenizer", TokenizerConfig(init_from=str(copy)), {"data": "d"}, STAGES["tokenizer"].module) != tok_key


def test_bad_checkpoints_fail_in_the_config(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="pretrain.model.init_from.*no such directory"):
        ModelConfig(init_from=str(tmp_path / "missing"))
    (tmp_path / "weights_only").mkdir()
    with pytest.raises(ValueError, match="pretrain.model.init_from.*no config.json"):
        ModelConfig(init_from=str(tmp_path / "weights_only"))
    import shutil

    no_template = tmp_path / "no_template"
    shutil.copytree(checkpoint, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    tok_cfg = json.loads((no_template / "tokenizer_config.json").read_text())
    tok_cfg.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    with pytest.raises(ValueError, match="tokenizer.init_from.*no chat template"):
        TokenizerConfig(init_from=str(no_template))
    with pytest.raises(ValueError, match="pretrain.max_steps"):
        PretrainConfig(max_steps=0)  # 0 steps only make sense for an imported model
    assert PretrainConfig(model=ModelConfig(init_from=str(checkpoint)), max_steps=0).warmup_steps == 30


def test_tokenizer_stage_follows_pretrain_init_from(checkpoint):
    from hydra import compose, initialize_config_dir

    from flows.config import register, to_pipeline_config

    register()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = to_pipeline_config(compose("config", overrides=[f"pretrain.model.init_from={checkpoint}",
                                                              "pretrain.max_steps=0"]))
        assert cfg.tokenizer.init_from == cfg.pretrain.model.init_from == str(checkpoint.resolve())
        assert to_pipeline_config(compose("config")).tokenizer.init_from is None
        with pytest.raises(ValueError, match="tokenizer.init_from"):
            to_pipeline_config(compose("config", overrides=[f"pretrain.model.init_from={checkpoint}",
                                                           f"tokenizer.init_from={checkpoint.parent / 'tok' / 'hf'}"]))


def test_large_vocabularies_get_uint32_shards(tmp_path):
    from components.train.data import load_shard
    from tokenizer.encode import shard_dtype

    assert shard_dtype(65536) == np.uint16 and shard_dtype(128256) == np.uint32
    (tmp_path / "shards").mkdir()
    np.array([1, 70000, 2], dtype=np.uint32).tofile(tmp_path / "shards" / "train.bin")
    (tmp_path / "shards" / "meta.json").write_text(json.dumps({"dtype": "uint32"}))
    assert load_shard(tmp_path, "train").tolist() == [1, 70000, 2]


def test_rope_scaling_extends_an_imported_model(checkpoint, imported_tokenizer, tmp_path):
    from components.pretrain.run import run

    model = ModelConfig(init_from=str(checkpoint), context_length=32, rope_scaling="linear", rope_factor=2.0)
    run(PretrainConfig(model=model, max_steps=0, **SMALL), {"tokenizer": imported_tokenizer[0]}, StageContext.local(tmp_path))
    extended = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert extended.config.rope_parameters["rope_type"] == "linear" and extended.config.rope_parameters["factor"] == 2.0
    assert extended.config.max_position_embeddings == 128  # the checkpoint's context (64) x factor
    saved = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in extended.state_dict().items())  # same weights, new positions


def test_large_checkpoint_files_count_by_size_and_mtime(checkpoint, tmp_path, monkeypatch):
    """Planning never reads multi-GB weights: past LARGE_FILE, a directory's files count by size and mtime."""
    import os
    import shutil

    import components.artifacts as artifacts

    copy = tmp_path / "ckpt"
    shutil.copytree(checkpoint, copy)
    weights = copy / "model.safetensors"
    monkeypatch.setattr(artifacts, "LARGE_FILE", weights.stat().st_size - 1)
    cfg = PretrainConfig(model=ModelConfig(init_from=str(copy)), max_steps=0)
    key = stage_key("pretrain", cfg, {}, "components.pretrain")
    stat = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size; mtime restored: not seen (the documented trade-off)
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert stage_key("pretrain", cfg, {}, "components.pretrain") == key
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # rewritten: a new key
    assert stage_key("pretrain", cfg, {}, "components.pretrain") != key
