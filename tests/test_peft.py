"""PEFT methods (sft.adapter / align.adapter): each trains only its own parameters, exports a model that
transformers + peft load with the logits it had in training, and the combinations that cannot work fail
at config time naming their key."""
import dataclasses
import json
import math

import pytest
import torch

from components.align.config import AlignConfig
from components.context import StageContext
from components.model.build import build_model
from components.model.config import ModelConfig
from components.sft.config import SFTConfig
from components.tasks import sft_examples
from components.train import adapters
from tests.tiny import save_tiny_model, tiny_tokenizer

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)
FEW = dict(max_steps=4, warmup_steps=1, batch_size=4, lr=5e-2, mixed_precision="no", log_every=1)
SMALL = dict(lora_rank=4, adalora_target_rank=2, num_virtual_tokens=4)
CPU_METHODS = ("lora", "adalora", "ia3", "prefix", "prompt", "ptuning")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def rows(tokenizer):
    from components.sft.run import encode_examples

    examples = [(ex, f"generated[{i}]") for i, ex in enumerate(sft_examples("train", 16, 0))]
    return encode_examples(tokenizer, examples, TINY.context_length)[0]


def logits_of(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():  # the sequence's own positions (prompt / p-tuning add their virtual tokens' logits)
        out = model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return out[:, -batch["input_ids"].shape[1]:]


@pytest.mark.parametrize("method", CPU_METHODS)
def test_each_method_trains_only_its_parameters_and_its_export_loads_with_the_same_logits(method, tokenizer, rows, tmp_path):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from components.sft.run import make_batch_fn
    from components.train.losses import lm_loss
    from components.train.loop import save_model, train

    base = build_model(TINY, tokenizer, seed=0)
    untrained = logits_of(base, (batch := make_batch_fn(rows, SFTConfig(**FEW), 64, tokenizer.pad_token_id)[0](0, 0)))
    cfg = SFTConfig(adapter=method, **FEW, **SMALL)
    model = adapters.add_adapter(base.train(), cfg, "sft", cfg.max_steps)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert 0 < sum(before[k].numel() for k in trainable) < 0.2 * sum(v.numel() for v in before.values())
    batch_fn, _ = make_batch_fn(rows, cfg, TINY.context_length, tokenizer.pad_token_id)
    accelerator = Accelerator(cpu=True)
    train(model, cfg, batch_fn, lm_loss, tmp_path / "run", accelerator=accelerator)

    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and changed <= trainable  # the base stays frozen, the adapter moved
    if method != "adalora":  # adalora prunes ranks: a pruned singular value stays at its initial 0
        assert changed == trainable
    else:  # the budget it allocated: the singular values kept per module, target_rank on average
        kept = model.peft_config["default"].rank_pattern
        assert kept and sum(map(sum, kept.values())) <= cfg.adalora_target_rank * len(kept) < cfg.lora_rank * len(kept)
    trained = logits_of(model, batch)
    assert (trained - untrained).abs().max() > 1e-3
    save_model(accelerator, model, tokenizer, tmp_path / "export")
    export = tmp_path / "export"
    assert (export / "adapter").is_dir() == (method not in ("lora", "adalora", "ia3"))
    if (export / "adapter").is_dir():  # base + adapter, as the README says to load them
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(export), export / "adapter")
    else:  # merged: a plain model, no peft needed
        loaded = AutoModelForCausalLM.from_pretrained(export)
    torch.testing.assert_close(logits_of(loaded, batch), trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(logits_of(adapters.load_model(export), batch), trained, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["prefix", "prompt", "ptuning", "lora"])
def test_generation_with_virtual_tokens_answers_as_the_trained_model_does(method, tokenizer):
    """Every answer the project generates (eval, chat, rollouts) goes through adapters.generate: batched, left-padded
    chat prompts of different lengths give, token for token, the greedy answers of full forward passes over each
    unpadded prompt (the computation training optimises); the same with several answers a prompt. Weights are
    randomised so that the virtual tokens change the answers (a freshly initialised adapter barely does)."""
    from components.chat.generate import generate

    torch.manual_seed(0)
    model = build_model(dataclasses.replace(TINY, n_layers=2), tokenizer, seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.5)
    model = adapters.add_adapter(model, SFTConfig(adapter=method, **SMALL), "sft", 10).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_(0, 3.0)
    prompts = [ex["messages"][:-1] for ex in sft_examples("heldout", 5, 0)]
    lengths = {len(tokenizer(tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"]) for p in prompts}
    assert len(lengths) > 1  # the batch is padded

    def full_forward_greedy(prompt, n: int) -> list[int]:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        for _ in range(n):
            with torch.no_grad():
                ids = torch.cat([ids, model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1:].argmax(-1)], 1)
        return ids[0, -n:].tolist()

    n = 6
    config = dict(min_new_tokens=n, eos_token_id=None)  # every answer n tokens long: compared as ids
    answers = generate(model, tokenizer, prompts, n, batch_size=5, **config)
    expected = [tokenizer.decode(full_forward_greedy(p, n), skip_special_tokens=False) for p in prompts]
    from components.chat.generate import cut_answer
    from components.chat.template import end_of_turn

    assert answers == [cut_answer(tokenizer, e, end_of_turn(tokenizer)) for e in expected]
    # sampling among the top token only is greedy: two answers a prompt, as rollouts draw them, both the greedy one
    twice = generate(model, tokenizer, prompts, n, batch_size=5, num_return_sequences=2, do_sample=True, top_k=1, **config)
    assert twice == [a for a in answers for _ in range(2)]
    # beam search (chat's num_beams): one answer a prompt; over one token, the best beam is the greedy token
    beams = generate(model, tokenizer, prompts, 1, batch_size=5, num_beams=2, min_new_tokens=1, eos_token_id=None)
    assert beams == [cut_answer(tokenizer, tokenizer.decode(full_forward_greedy(p, 1), skip_special_tokens=False),
                                end_of_turn(tokenizer)) for p in prompts]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: qlora can run (tests/test_gpu.py)")
def test_qlora_on_a_cpu_fails_at_config_time_naming_the_key():
    with pytest.raises(ValueError, match=r"sft\.adapter='qlora': needs a CUDA GPU"):
        SFTConfig(adapter="qlora")
    with pytest.raises(ValueError, match=r"align\.adapter='qlora': needs a CUDA GPU"):
        AlignConfig(adapter="qlora")


def test_combinations_that_cannot_work_fail_naming_the_key(tokenizer):
    for method in ("prefix", "prompt", "ptuning"):
        with pytest.raises(ValueError, match=rf"sft\.packing=True: sft\.adapter={method} .* set sft\.packing=false"):
            SFTConfig(adapter=method, packing=True)
        with pytest.raises(ValueError, match=r"align\.prefix_sharing=True: .* set align\.prefix_sharing=false"):
            AlignConfig(adapter=method)
        AlignConfig(adapter=method, prefix_sharing=False)
    with pytest.raises(ValueError, match=r"sft\.adalora_target_rank=9: must be in \[1, sft\.lora_rank=8\]"):
        SFTConfig(adapter="adalora", adalora_target_rank=9)
    with pytest.raises(ValueError, match=r"align\.ia3_targets=\[\]"):
        AlignConfig(adapter="ia3", ia3_targets=[])
    with pytest.raises(ValueError, match=r"sft\.adapter='dora': choose one of"):
        SFTConfig(adapter="dora")
    model = build_model(TINY, tokenizer, seed=0)
    with pytest.raises(ValueError, match=r"sft\.ia3_targets=.*\['c_attn'\] are not modules.*v_proj"):
        adapters.add_adapter(model, SFTConfig(adapter="ia3", ia3_targets=["v_proj", "c_attn"]), "sft", 10)
    with pytest.raises(ValueError, match=r"sft\.max_steps=2: adalora needs more than"):
        adapters.add_adapter(model, SFTConfig(adapter="adalora", max_steps=2, warmup_steps=1), "sft", 2)


ALIGN_FEW = dict(max_steps=4, warmup_steps=1, batch_size=4, lr=5e-3, num_pairs=16, num_val_pairs=8, rpo_alpha=0.0,
                 mixed_precision="no", log_every=1, rejected="generated", prefix_sharing=False, replay=0.0)  # replay: tests/test_replay.py


def test_align_adapters_keep_the_sft_model_as_reference(tokenizer, tmp_path):
    """prompt tuning changes the policy's outputs from step 0 (random virtual tokens): the reference is
    still the sft model's log-probs; the sft weights stay as they were; LoRA starts at the DPO loss ln 2."""
    from accelerate import Accelerator

    from components.align.run import all_logps, encode_fitting, run
    from components.tasks import preference_pairs

    sft_dir = save_tiny_model(tmp_path / "sft", tokenizer, TINY, seed=1)
    sft = adapters.load_model(sft_dir / "model")
    for method in ("prompt", "lora"):
        out = tmp_path / method
        out.mkdir()
        run(AlignConfig(adapter=method, **ALIGN_FEW, **SMALL), {"sft": sft_dir}, StageContext.local(out))
        cfg = AlignConfig(**ALIGN_FEW)
        _, val, _ = encode_fitting(tokenizer, preference_pairs("heldout", cfg.num_val_pairs, cfg.seed), 64)
        ref = torch.load(out / "ref_logps.pt")["heldout"]
        torch.testing.assert_close(ref, all_logps(sft, val, tokenizer.pad_token_id, cfg, Accelerator(cpu=True)))
        first = json.loads((out / "log.jsonl").read_text().splitlines()[0])
        if method == "lora":
            assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
        else:
            assert (out / "model" / "adapter" / "adapter_config.json").is_file()
            base = adapters.load_model(out / "model").get_base_model().state_dict()
            assert all(torch.equal(base[k], v) for k, v in sft.state_dict().items())  # only the prompt trained


def test_align_on_an_unmerged_sft_adapter_trains_it_further_or_names_the_key(tokenizer, tmp_path):
    from components.align.run import load_policy

    model = adapters.add_adapter(build_model(TINY, tokenizer, seed=0), SFTConfig(adapter="prompt", **SMALL), "sft", 4)
    model.get_base_model().save_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "adapter")
    policy = load_policy(AlignConfig(**ALIGN_FEW), tmp_path)
    assert adapters.method_of(policy) == "PROMPT_TUNING"
    assert {k for k, v in policy.named_parameters() if v.requires_grad} == {"prompt_encoder.default.embedding.weight"}
    with pytest.raises(ValueError, match=r"align\.adapter='lora': the model it starts from .* is a PROMPT_TUNING adapter"):
        load_policy(AlignConfig(adapter="lora", **ALIGN_FEW), tmp_path)
    with pytest.raises(ValueError, match=r"align\.prefix_sharing=True: .*set align\.prefix_sharing=false"):
        load_policy(AlignConfig(**{**ALIGN_FEW, "prefix_sharing": True}), tmp_path)
    with pytest.raises(ValueError, match=r"eval\.benchmarks: .* PROMPT_TUNING adapter"):  # the harness would misalign it
        adapters.harness_adapter(tmp_path)
    assert adapters.harness_adapter(tmp_path / "adapter") is None  # a plain model: no adapter to pass


@pytest.mark.parametrize("overrides, key", [
    (["sft.adapter=prompt"], r"align\.prefix_sharing=True: sft\.adapter=prompt"),
    (["sft.adapter=prefix", "align.adapter=lora", "align.prefix_sharing=false"], r"align\.adapter='lora': sft\.adapter=prefix"),
    (["sft.adapter=ptuning", "align.prefix_sharing=false"], r"eval\.benchmarks=.*sft\.adapter=ptuning"),
    (["sft.adapter=prefix", "align.prefix_sharing=false", "reward.enabled=true"], r"reward\.enabled=True: sft\.adapter=prefix"),
    (["sft.adapter=prefix", "align.prefix_sharing=false", "rl.enabled=true", "rl.adapter=lora"], r"rl\.adapter='lora': sft\.adapter=prefix"),
    (["sft.adapter=prefix", "align.prefix_sharing=false", "rl.enabled=true", "rl.algorithm=ppo", "rl.reward=checker"],
     r"rl\.algorithm='ppo': sft\.adapter=prefix"),
    (["rl.enabled=true", "rl.adapter=prompt"], r"eval\.benchmarks=.*rl\.adapter=prompt"),
])
def test_what_later_stages_cannot_do_with_an_adapter_fails_when_the_config_is_read(overrides, key):
    from hydra import compose, initialize_config_dir

    from flows.config import register, to_pipeline_config
    from tests.test_layout import REPO

    register()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        composed = compose("config", overrides=["experiment=smoke", *overrides])
    with pytest.raises(ValueError, match=key):
        to_pipeline_config(composed)


def test_adalora_orthogonality_regulariser_is_pefts_and_the_loop_adds_it(tokenizer, rows):
    """peft adds orth_reg_weight x mean ||PP^T - I|| only to a loss it computes from labels; the loop's losses
    read logits, so the loop adds it: the same figure as peft's, and the gradients of (mean loss + it)."""
    from accelerate import Accelerator

    from components.sft.run import make_batch_fn
    from components.train.losses import lm_loss
    from components.train.loop import accumulate_gradients

    cfg = SFTConfig(adapter="adalora", **FEW, **SMALL)
    model = adapters.add_adapter(build_model(TINY, tokenizer, seed=0).train(), cfg, "sft", 40)
    batch = make_batch_fn(rows, cfg, TINY.context_length, tokenizer.pad_token_id)[0](0, 0)
    penalty = adapters.orthogonal_penalty(model)
    assert penalty is not None and adapters.orthogonal_penalty(build_model(TINY, tokenizer, seed=0)) is None
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": batch["labels"]}
    with torch.no_grad():
        with_reg = model(**inputs).loss  # AdaLoraModel.forward adds it to the labels' loss
        plain = model.base_model.model(**inputs).loss  # the same forward without peft's addition
    assert float(penalty()) > 0
    assert float(with_reg - plain) == pytest.approx(float(penalty()), rel=1e-5)
    accelerator = Accelerator(cpu=True)
    model.zero_grad()
    _, n_targets, extras = accumulate_gradients(model, [batch], lm_loss, accelerator)
    ours = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss_sum, _ = lm_loss(model, batch)
    (loss_sum / n_targets + penalty()).backward()
    for k, grad in ours.items():
        torch.testing.assert_close(grad, model.get_parameter(k).grad, rtol=1e-5, atol=1e-7)
    assert extras["orth_reg"] == pytest.approx(float(penalty()), rel=1e-5)
