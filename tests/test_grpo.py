"""GRPO (the rl stage): our loss against TRL's GRPOTrainer on a fixed batch, the group-normalised
advantages, a tiny run that learns a toy verifiable task, and the config checks."""
import dataclasses
import json

import pytest
import torch

from components.context import StageContext
from components.model.config import ModelConfig
from components.rl.config import RLConfig
from components.rl.grpo import group_advantages, grpo_loss, token_logps
from components.rl.run import grpo_objective, rollout_source
from components.rl.rollout import rollout_batch
from components.rl.scores import per_answer
from components.tasks import sft_examples
from components.train.loop import make_accelerator, train
from tests.tiny import save_tiny_model, tiny_tokenizer

TINY = ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, ffn_hidden=64, context_length=64)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tokenizer):
    return save_tiny_model(tmp_path_factory.mktemp("sft"), tokenizer, TINY, seed=1)


def fixed_batch(tokenizer, n_prompts: int = 3, group: int = 2, seed: int = 0) -> dict:
    """TRL's layout: left-padded prompts, right-padded completions of different lengths (random tokens)."""
    gen = torch.Generator().manual_seed(seed)
    texts = [tokenizer.apply_chat_template(ex["messages"][:-1], tokenize=False, add_generation_prompt=True)
             for ex in sft_examples("train", n_prompts)]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt", return_token_type_ids=False)
    prompt_ids, prompt_mask = enc["input_ids"].repeat_interleave(group, 0), enc["attention_mask"].repeat_interleave(group, 0)
    n, width = len(prompt_ids), 6
    completion_ids = torch.randint(10, len(tokenizer), (n, width), generator=gen)
    lengths = torch.randint(1, width + 1, (n,), generator=gen)
    completion_mask = (torch.arange(width)[None] < lengths[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.randn(n, generator=gen)}


@pytest.fixture(scope="module")
def trl_trainer(sft_dir, tokenizer, tmp_path_factory):
    trl = pytest.importorskip("trl")
    from datasets import Dataset

    args = trl.GRPOConfig(output_dir=str(tmp_path_factory.mktemp("trl")), report_to=[], use_cpu=True, bf16=False,
                          beta=0.04, epsilon=0.2, num_generations=2, per_device_train_batch_size=2,
                          max_completion_length=6)
    return trl.GRPOTrainer(model=str(sft_dir / "model"), reward_funcs=[lambda completions, **kw: [0.0] * len(completions)],
                           args=args, train_dataset=Dataset.from_list([{"prompt": "x"}] * 4), processing_class=tokenizer)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_grpo_loss_equals_trl(trl_trainer, tokenizer, loss_type, monkeypatch):
    """TRL's _compute_loss on a fixed batch whose old and reference log-probs differ from the policy's
    (ratios outside the clip range, non-zero KL) equals ours, as the loop normalises it; our per-token
    log-probs equal TRL's (its fused LM head)."""
    trainer = trl_trainer
    monkeypatch.setattr(trainer, "loss_type", loss_type)  # what GRPOConfig(loss_type=...) sets
    policy = trainer.model.eval()  # eval mode: TRL's loss is not divided by gradient accumulation
    batch = fixed_batch(tokenizer)
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    width = batch["completion_ids"].shape[1]
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        trl_logps, _, _ = trainer._get_per_token_logps_and_entropies(policy, input_ids, attention_mask, width)
        ours = token_logps(policy, input_ids, attention_mask)[:, -width:]
        old = trl_logps + 0.3 * torch.randn(trl_logps.shape, generator=gen)  # ratios from 0.4 to 2.5: clipping matters
        ref = trl_logps + 0.5 * torch.randn(trl_logps.shape, generator=gen)
        mask = batch["completion_mask"]
        theirs = trainer._compute_loss(policy, {**batch, "old_per_token_logps": old, "ref_per_token_logps": ref,
                                                "num_items_in_batch": mask.sum()})
        loss_sum, kl = grpo_loss(trl_logps, old, ref, batch["advantages"], mask, 0.04, 0.2, loss_type)
    ratio = (trl_logps - old).exp()[mask.bool()]
    assert ((ratio < 0.8) | (ratio > 1.2)).any()  # the clip is exercised
    torch.testing.assert_close(ours[mask.bool()], trl_logps[mask.bool()], rtol=0, atol=2e-5)
    n_targets = len(mask) if loss_type == "grpo" else mask.sum()  # what the rollout batch counts (rollout_batch)
    torch.testing.assert_close(loss_sum / n_targets, theirs, rtol=0, atol=1e-6)
    assert kl > 0


def test_group_advantages_are_normalised_within_each_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    adv = group_advantages(rewards, 4).view(3, 4)
    # group 1: mean 1/4, std (Bessel) 1/2; group 2: all solved, no signal; group 3: mean 1/2, std 0.577
    torch.testing.assert_close(adv[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4))
    assert torch.equal(adv[1], torch.zeros(4))
    torch.testing.assert_close(adv.sum(1), torch.zeros(3), rtol=0, atol=1e-6)  # zero mean in every group
    torch.testing.assert_close(group_advantages(rewards, 4, "none").view(3, 4)[0], torch.tensor([0.75, -0.25, -0.25, -0.25]))
    assert not torch.allclose(group_advantages(rewards, 2), group_advantages(rewards, 4))  # the group, not the batch


def test_rollout_batch_marks_exactly_the_answer_tokens():
    cfg = RLConfig(group_size=2)
    batch = rollout_batch([[1, 5, 6], [1, 5, 6]], [[7, 2], [9]], [1.0, 0.0], cfg, pad_id=3)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7, 2], [1, 5, 6, 9, 3]]
    targets = batch["input_ids"][:, 1:][batch["completion_mask"]]  # target t is token t+1
    assert targets.tolist() == [7, 2, 9]
    assert batch["n_targets"] == 2  # loss grpo: one target per answer
    dapo = rollout_batch([[1, 5, 6], [1, 5, 6]], [[7, 2], [9]], [1.0, 0.0], RLConfig(group_size=2, loss="dapo"), 3)
    assert dapo["n_targets"] == 3  # loss dapo: one per answer token
    assert batch["advantages"][0] > 0 > batch["advantages"][1]


def starts_early_in_alphabet(answer: str, example: dict) -> float:
    """A toy verifiable task a random model solves sometimes: answer with a word starting a-m."""
    return float(answer[:1].lower() in "abcdefghijklm" and answer[:1] != "")


def test_tiny_run_raises_the_mean_reward(sft_dir, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = RLConfig(enabled=True, max_steps=14, warmup_steps=1, lr=2e-2, batch_size=8, group_size=8, max_new_tokens=2,
                   beta=0.0, mixed_precision="no", log_every=100)
    model = AutoModelForCausalLM.from_pretrained(sft_dir / "model", dtype=torch.float32)
    accelerator = make_accelerator(cfg, model)
    prompts = sft_examples("train", 64)
    batch_fn = rollout_source(model, None, tokenizer, prompts, cfg, accelerator.autocast, per_answer(starts_early_in_alphabet))
    train(model, cfg, batch_fn, grpo_objective(cfg), tmp_path, accelerator=accelerator,
          ctx=StageContext.local(tmp_path, stage="rl"))
    rewards = [json.loads(line)["reward_mean"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(rewards) == 14
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert 0.05 < first < 0.7, first  # the task has signal at the start (measured 0.41)
    assert last > first + 0.3, rewards  # measured 0.90


def test_dynamic_sampling_keeps_the_groups_that_disagree_and_redraws_the_same_on_resume(sft_dir, tokenizer, cpu_bf16):
    """rl.dynamic_sampling (DAPO): groups whose answers all got the same reward are dropped and more prompts
    drawn, up to R rounds; the batch keeps batch_size groups, the disagreeing ones first; the extra draws come
    from the position's seed alone (the same batch again), and 0 samples once, as before."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(sft_dir / "model", dtype=torch.float32)
    prompts = sft_examples("train", 64)
    off = RLConfig(enabled=True, batch_size=4, group_size=4, max_new_tokens=2, beta=0.0, mixed_precision="bf16")
    on = dataclasses.replace(off, dynamic_sampling=6)
    autocast = make_accelerator(off, model).autocast  # sampled in bf16 where the CPU has it, fp32 where not

    def first_batch(cfg):
        return rollout_source(model, None, tokenizer, prompts, cfg, autocast, per_answer(starts_early_in_alphabet))(0, 0)

    plain, dynamic = first_batch(off), first_batch(on)
    assert "prompts_sampled" not in plain["stats"]
    flat = lambda b: (b["rewards"].view(-1, 4).std(1) == 0).float().mean().item()  # noqa: E731
    assert plain["stats"]["groups_without_signal"] == flat(plain) > 0  # the toy task leaves some groups flat
    assert dynamic["rewards"].numel() == 16 and dynamic["stats"]["prompts_sampled"] > 4
    assert dynamic["stats"]["groups_without_signal"] == flat(dynamic) < flat(plain)
    again = first_batch(on)
    assert torch.equal(again["input_ids"], dynamic["input_ids"]) and torch.equal(again["rewards"], dynamic["rewards"])


@pytest.mark.parametrize("overrides,key", [
    ({"dynamic_sampling": -1}, "rl.dynamic_sampling"), ({"dynamic_sampling": 2, "algorithm": "ppo"}, "rl.dynamic_sampling"),
    ({"algorithm": "reinforce"}, "rl.algorithm"),
    ({"group_size": 1}, "rl.group_size"), ({"epsilon": 1.5}, "rl.epsilon"), ({"loss": "bnpo"}, "rl.loss"),
    ({"beta": -0.1}, "rl.beta"), ({"scale_rewards": "batch"}, "rl.scale_rewards"), ({"lr": 0}, "rl.lr"),
])
def test_bad_rl_values_name_their_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        RLConfig(**overrides)


def test_eval_reads_the_rl_model_only_when_rl_is_enabled():
    from flows.config import PipelineConfig
    from flows.plan import make_plan

    off = {s.stage: s for s in make_plan(PipelineConfig(rl=RLConfig(enabled=False)))}
    on = {s.stage: s for s in make_plan(PipelineConfig())}  # on by default
    assert "rl" not in off and "rl" not in off["eval"].inputs
    assert on["eval"].inputs["rl"] == on["rl"].key and on["rl"].inputs == {"sft": on["sft"].key}
    assert on["eval"].key != off["eval"].key and on["sft"].key == off["sft"].key  # upstream untouched


def test_rollouts_and_updates_run_in_the_resolved_precision_on_either_kind_of_cpu(sft_dir, tokenizer, tmp_path,
                                                                                   cpu_bf16):
    """rl.mixed_precision=bf16 samples and trains in bf16 where the CPU has it, fp32 (logged) where it does not."""
    from transformers import AutoModelForCausalLM

    cfg = RLConfig(enabled=True, max_steps=2, warmup_steps=1, batch_size=2, group_size=2, max_new_tokens=2,
                   beta=0.0, mixed_precision="bf16", log_every=100)
    model = AutoModelForCausalLM.from_pretrained(sft_dir / "model", dtype=torch.float32)
    seen = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    accelerator = make_accelerator(cfg, model)
    batch_fn = rollout_source(model, None, tokenizer, sft_examples("train", 8), cfg, accelerator.autocast,
                              per_answer(starts_early_in_alphabet))
    metrics = train(model, cfg, batch_fn, grpo_objective(cfg), tmp_path, accelerator=accelerator,
                    ctx=StageContext.local(tmp_path, stage="rl"))
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")
    # every forward pass (sampling, reference, update) in bf16 where the CPU has it; none where it has not
    assert seen == ({torch.bfloat16} if cpu_bf16 else {torch.float32}), seen
    assert metrics["steps"] == 2 and torch.isfinite(torch.tensor(metrics["final_loss"]))


def test_a_resumed_grpo_stage_equals_the_uninterrupted_one(sft_dir, tmp_path, cpu_bf16):
    """The rl stage (grpo, checker rewards) cut at step 3, step 2's checkpoint left, then run to the end: the same
    rollouts (sampled from the position's seed by the restored policy), rewards, KL and losses as one whole run."""
    from components.rl.run import run

    cfg = RLConfig(enabled=True, max_steps=4, warmup_steps=1, lr=1e-2, batch_size=4, group_size=4, max_new_tokens=4,
                   num_prompts=32, num_val_prompts=8, mixed_precision="bf16", log_every=100, eval_every=0, save_every=2)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    metrics = run(cfg, {"sft": sft_dir}, StageContext.local(whole, stage="rl"))
    assert metrics["steps"] == 4 and len(metrics["reward_per_step"]) == 4
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")  # this kind of CPU's branch ran
    run(dataclasses.replace(cfg, max_steps=3), {"sft": sft_dir}, StageContext.local(cut, stage="rl"))
    assert any((cut / "checkpoints").iterdir())
    resumed = run(cfg, {"sft": sft_dir}, StageContext.local(cut, stage="rl"))
    assert resumed["reward_per_step"] == metrics["reward_per_step"] and resumed["kl_per_step"] == metrics["kl_per_step"]
    losses = [[json.loads(line)["loss"] for line in (d / "log.jsonl").read_text().splitlines()] for d in (whole, cut)]
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    assert resumed["val_task_accuracy"] == metrics["val_task_accuracy"]


def test_grpo_with_the_reward_model_scores_answers_with_it_and_reads_the_reward_stage(sft_dir, tokenizer, tmp_path,
                                                                                     cpu_bf16):
    """rl.reward=model with grpo: the reward stage's model scores every sampled answer (real-valued rewards, the
    same scores score_conversations gives), the held-out figures gain its mean score, and the plan makes the
    reward stage an input of rl only then (auto: checker with grpo, model with ppo)."""
    from flows.config import PipelineConfig
    from flows.plan import make_plan

    from components.reward.config import RewardConfig
    from components.reward.model import scalar_head_model, score_conversations
    from components.rl.run import run

    reward_dir = tmp_path / "reward"
    scalar_head_model(sft_dir / "model", tokenizer.pad_token_id, seed=7).save_pretrained(reward_dir / "model")
    cfg = RLConfig(enabled=True, reward="model", max_steps=2, warmup_steps=1, lr=1e-3, batch_size=2, group_size=4,
                   max_new_tokens=3, num_prompts=16, num_val_prompts=4, mixed_precision="bf16", log_every=100, eval_every=0)
    out = tmp_path / "out"
    out.mkdir()
    metrics = run(cfg, {"sft": sft_dir, "reward": reward_dir}, StageContext.local(out, stage="rl"))
    assert "val_reward_model_score" in metrics and "val_reward_model_score_before" in metrics
    rewards = metrics["reward_per_step"]
    assert len(rewards) == 2 and all(r not in (0.0, 1.0) for r in rewards)  # a score, not the checker's 1/0
    # the first step's rollouts, sampled again as the stage sampled them: their rewards are the reward model's scores
    from transformers import AutoModelForCausalLM

    from components.chat.batches import epoch_indices
    from components.rl.rollout import sample_answers

    examples = [sft_examples("train", 16, cfg.seed)[i] for i in epoch_indices(16, 2, cfg.seed, 0)]  # position 0's
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")  # the fixture forces each kind of CPU
    policy = AutoModelForCausalLM.from_pretrained(sft_dir / "model")
    _, _, answers, _ = sample_answers(policy, tokenizer, examples, cfg, cfg.seed * 1_000_003,
                                      make_accelerator(cfg, policy).autocast)  # sampled as the stage sampled
    model = scalar_head_model(reward_dir / "model", tokenizer.pad_token_id, seed=0).eval()
    scores = score_conversations(model, tokenizer, [examples[i // 4]["messages"][:-1] + [{"role": "assistant", "content": a}]
                                                    for i, a in enumerate(answers)], 8)
    assert rewards[0] == pytest.approx(sum(scores) / len(scores), abs=1e-4)
    grpo = {s.stage: s for s in make_plan(PipelineConfig(rl=RLConfig(enabled=True), reward=RewardConfig(enabled=True)))}
    assert grpo["rl"].inputs == {"sft": grpo["sft"].key}  # auto: the checker; the reward model's key is not rl's
    on = {s.stage: s for s in make_plan(PipelineConfig(rl=RLConfig(enabled=True, reward="model"), reward=RewardConfig(enabled=True)))}
    assert on["rl"].inputs == {"sft": on["sft"].key, "reward": on["reward"].key}
    with pytest.raises(ValueError, match=r"reward\.enabled.*rl\.reward=model"):
        PipelineConfig(rl=RLConfig(enabled=True, reward="model"), reward=RewardConfig(enabled=False))


@pytest.mark.parametrize("adapter", ["lora", "prefix", "prompt"])
def test_rl_adapters_train_only_themselves_and_export_as_sfts_do(sft_dir, tokenizer, tmp_path, adapter, monkeypatch,
                                                                 cpu_bf16):
    """rl.adapter (grpo): the held-out figure before training is the sft model's, the adapter moves, the base
    weights stay; lora is exported merged, prefix and prompt as base + adapter that load_model puts back together
    with the logits the stage trained (prompt's virtual tokens: their logits are cut off before the log-probs)."""
    from transformers import AutoModelForCausalLM

    from components.rl import run as rl_run
    from components.rl.run import run
    from components.train import adapters

    # the tiny model never answers a task right: a reward it can earn gives the adapter a gradient
    monkeypatch.setattr(rl_run, "rollout_source", lambda *a: rollout_source(*a[:6], score=per_answer(starts_early_in_alphabet)))
    cfg = RLConfig(enabled=True, max_steps=3, warmup_steps=1, lr=5e-2, batch_size=4, group_size=4, max_new_tokens=4,
                   num_prompts=32, num_val_prompts=8, mixed_precision="bf16", log_every=100, eval_every=0,
                   adapter=adapter, lora_rank=4, num_virtual_tokens=4)  # rollouts through adapters.generate, either CPU
    (tmp_path / "none").mkdir(), (tmp_path / "out").mkdir()
    plain = run(dataclasses.replace(cfg, adapter="none", max_steps=1, warmup_steps=0), {"sft": sft_dir},
                StageContext.local(tmp_path / "none", stage="rl"))
    metrics = run(cfg, {"sft": sft_dir}, StageContext.local(tmp_path / "out", stage="rl"))
    assert metrics["val_task_accuracy_before"] == plain["val_task_accuracy_before"]  # the sft model, no adapter init
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")  # the fixture forces each kind of CPU
    assert 0 < metrics["trainable_params"] < plain["trainable_params"] / 5  # only the adapter trains
    assert all(torch.isfinite(torch.tensor(json.loads(line)["loss"]))
               for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines())
    export = tmp_path / "out" / "model"
    assert (export / adapters.ADAPTER_DIR).is_dir() == (adapter != "lora")
    sft = dict(AutoModelForCausalLM.from_pretrained(sft_dir / "model").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(export).named_parameters())
    moved = {k for k in base if not torch.equal(base[k], sft[k])}
    if adapter == "lora":
        assert moved and all(k.endswith("proj.weight") for k in moved), moved
        return
    assert not moved  # the base is the sft model; the adapter holds what rl learnt
    model = adapters.load_model(export).eval()
    assert adapters.method_of(model) == {"prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING"}[adapter]
    ids = tokenizer("hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logps = token_logps(model, ids, torch.ones_like(ids))
        assert logps.shape == (1, ids.shape[1] - 1)
        assert not torch.allclose(logps, token_logps(AutoModelForCausalLM.from_pretrained(export).eval(), ids,
                                                     torch.ones_like(ids)))
