"""PPO (rl.algorithm=ppo): GAE, whitening and the clipped policy + value loss against TRL's PPOTrainer
formulas on fixed batches, and the config checks. TRL 1.16 no longer ships PPOTrainer (removed, not moved
to trl.experimental), so its loop and loss are reproduced below line for line as its trl/trainer/ppo_trainer.py wrote them
(written from that source as last released, not imported: no installed copy to import)."""
import json

import pytest
import torch

from components.rl.config import RLConfig
from components.rl.ppo import gae, masked_whiten, ppo_loss, token_rewards


def trl_masked_mean(values, mask):
    return (values * mask).sum() / mask.sum()


def trl_masked_var(values, mask, unbiased=True):
    mean = trl_masked_mean(values, mask)
    centered_values = values - mean
    variance = trl_masked_mean(centered_values**2, mask)
    if unbiased:
        mask_sum = mask.sum()
        bessel_correction = mask_sum / (mask_sum - 1)
        variance = variance * bessel_correction
    return variance


def trl_masked_whiten(values, mask, shift_mean=True):
    mean, var = trl_masked_mean(values, mask), trl_masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened += mean
    return whitened


def trl_gae(rewards, values, padding_mask, gamma, lam):
    """TRL's PPOTrainer.train, from `# 4. compute advantages and returns` (values already masked to 0)."""
    lastgaelam = 0
    advantages_reversed = []
    gen_length = rewards.shape[1]
    for t in reversed(range(gen_length)):
        nextvalues = values[:, t + 1] if t < gen_length - 1 else 0.0
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], axis=1)
    returns = advantages + values
    advantages = trl_masked_whiten(advantages, ~padding_mask)
    advantages = torch.masked_fill(advantages, padding_mask, 0)
    return advantages, returns


def hand_gae(rewards, values, lengths, gamma, lam):
    """The textbook recursion per row, in plain Python, over the answer tokens only."""
    out = []
    for r, v, n in zip(rewards.tolist(), values.tolist(), lengths):
        adv, running = [0.0] * n, 0.0
        for t in reversed(range(n)):
            next_v = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * next_v - v[t] + gamma * lam * running
            adv[t] = running
        out.append(adv)
    return out


def fixed_batch(seed=0, rows=4, width=7):
    gen = torch.Generator().manual_seed(seed)
    lengths = [7, 3, 5, 1][:rows]
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    logps = -torch.rand(rows, width, generator=gen) * 3
    ref = logps + 0.3 * torch.randn(rows, width, generator=gen)
    values = torch.randn(rows, width, generator=gen) * mask
    scores = torch.randn(rows, generator=gen)
    return mask, logps, ref, values, scores, lengths


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0)])
def test_gae_equals_trl_loop_and_hand_recursion(gamma, lam):
    mask, logps, ref, values, scores, lengths = fixed_batch()
    rewards, kl = token_rewards(logps, ref, scores, mask, kl_coef=0.05)
    # rewards: the KL penalty on every answer token, the score on the last one, nothing elsewhere
    expected = -0.05 * (logps - ref) * mask
    expected[torch.arange(4), torch.tensor(lengths) - 1] += scores
    torch.testing.assert_close(rewards, expected)
    assert torch.equal(kl, (logps - ref) * mask)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    theirs_adv, theirs_ret = trl_gae(rewards, values, ~mask, gamma, lam)
    torch.testing.assert_close(advantages, theirs_adv, rtol=0, atol=1e-6)
    torch.testing.assert_close(returns[mask], theirs_ret[mask], rtol=0, atol=1e-6)
    raw = hand_gae(rewards, values, lengths, gamma, lam)
    for i, n in enumerate(lengths):
        torch.testing.assert_close(returns[i, :n], torch.tensor(raw[i]) + values[i, :n], rtol=0, atol=1e-5)
    flat = torch.tensor([a for row in raw for a in row])
    torch.testing.assert_close(advantages[mask], (flat - flat.mean()) / (flat.var() + 1e-8).sqrt(), rtol=0, atol=1e-5)
    assert advantages[~mask].abs().max() == 0
    torch.testing.assert_close(masked_whiten(flat, torch.ones_like(flat)), theirs_adv[mask], rtol=0, atol=1e-5)


def trl_ppo_loss(new_logprobs, mb_logprobs, mb_advantage, vpred, mb_values, mb_return, padding_mask,
                 padding_mask_p1, cliprange, cliprange_value, vf_coef):
    """TRL's PPOTrainer.train, the minibatch loss, in its own names."""
    vpredclipped = torch.clamp(vpred, mb_values - cliprange_value, mb_values + cliprange_value)
    vf_losses1 = torch.square(vpred - mb_return)
    vf_losses2 = torch.square(vpredclipped - mb_return)
    vf_loss_max = torch.max(vf_losses1, vf_losses2)
    vf_loss = 0.5 * trl_masked_mean(vf_loss_max, ~padding_mask_p1)
    logprobs_diff = new_logprobs - mb_logprobs
    ratio = torch.exp(logprobs_diff)
    pg_losses = -mb_advantage * ratio
    pg_losses2 = -mb_advantage * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    pg_loss_max = torch.max(pg_losses, pg_losses2)
    pg_loss = trl_masked_mean(pg_loss_max, ~padding_mask)
    loss = pg_loss + vf_coef * vf_loss
    return loss, pg_loss, vf_loss


def test_ppo_loss_equals_trl_on_a_fixed_batch():
    mask, logps, ref, values, scores, _ = fixed_batch(seed=3)
    gen = torch.Generator().manual_seed(5)
    rewards, _ = token_rewards(logps, ref, scores, mask, 0.05)
    advantages, returns = gae(rewards, values, mask, 1.0, 0.95)
    new_logps = logps + 0.4 * torch.randn(logps.shape, generator=gen)  # ratios outside the clip range
    new_values = values + 0.5 * torch.randn(values.shape, generator=gen)  # predictions outside the value clip
    ours = ppo_loss(new_logps, logps, advantages, new_values, values, returns, mask, 0.2, 0.2, 0.1)
    theirs = trl_ppo_loss(new_logps, logps, advantages, new_values, values, returns, ~mask, ~mask, 0.2, 0.2, 0.1)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    ratio = (new_logps - logps).exp()[mask]
    assert ((ratio < 0.8) | (ratio > 1.2)).any() and ((new_values - values)[mask].abs() > 0.2).any()
    # gradients reach both the policy's log-probs and the value predictions
    new_logps.requires_grad_(True), new_values.requires_grad_(True)
    ppo_loss(new_logps, logps, advantages, new_values, values, returns, mask, 0.2, 0.2, 0.1)[0].backward()
    assert new_logps.grad[mask].abs().sum() > 0 and new_values.grad[mask].abs().sum() > 0
    assert new_logps.grad[~mask].abs().sum() == 0


@pytest.mark.parametrize("overrides,key", [
    ({"reward": "judge"}, "rl.reward"), ({"kl_coef": -0.1}, "rl.kl_coef"), ({"gamma": 1.5}, "rl.gamma"),
    ({"lam": -0.1}, "rl.lam"), ({"vf_coef": 0.0}, "rl.vf_coef"), ({"cliprange": 1.0}, "rl.cliprange"),
    ({"cliprange_value": 0.0}, "rl.cliprange_value"), ({"algorithm": "reinforce"}, "rl.algorithm"),
    ({"ppo_epochs": 0}, "rl.ppo_epochs"), ({"num_mini_batches": 3}, "rl.num_mini_batches"),  # 16 x 8 answers do not split in 3
    ({"ppo_epochs": 3}, "rl.save_every"),  # 200 is no multiple of 3: a checkpoint would fall mid-rollout
])
def test_bad_ppo_values_name_their_key(overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        RLConfig(**{"algorithm": "ppo", **overrides})


def test_ppo_takes_group_size_one_and_grpo_does_not():
    assert RLConfig(algorithm="ppo", group_size=1).group_size == 1
    # ppo's passes are ppo's alone: grpo takes one update per rollout whatever ppo_epochs says (a checkpoint anywhere)
    assert RLConfig(algorithm="ppo").updates_per_rollout == 4 and RLConfig(save_every=3).updates_per_rollout == 1
    with pytest.raises(ValueError, match=r"rl\.group_size"):
        RLConfig(group_size=1)


def test_ppo_with_model_reward_needs_the_reward_stage_and_reads_it():
    from flows.config import PipelineConfig
    from flows.plan import make_plan

    from components.reward.config import RewardConfig

    with pytest.raises(ValueError, match=r"reward\.enabled") as err:
        PipelineConfig(rl=RLConfig(enabled=True, algorithm="ppo"), reward=RewardConfig(enabled=False))
    assert "rl.reward" in str(err.value)
    checker = {s.stage: s for s in make_plan(PipelineConfig(rl=RLConfig(enabled=True, algorithm="ppo", reward="checker"),
                                                            reward=RewardConfig(enabled=False)))}
    assert checker["rl"].inputs == {"sft": checker["sft"].key}
    on = {s.stage: s for s in make_plan(PipelineConfig(rl=RLConfig(enabled=True, algorithm="ppo"),
                                                       reward=RewardConfig(enabled=True)))}
    assert on["rl"].inputs == {"sft": on["sft"].key, "reward": on["reward"].key}
    grpo = {s.stage: s for s in make_plan(PipelineConfig(rl=RLConfig(enabled=True), reward=RewardConfig(enabled=True)))}
    assert grpo["rl"].inputs == {"sft": grpo["sft"].key}  # grpo's key does not follow the reward model


def tiny_sft_and_reward(tmp_path):
    """(sft artifact, reward artifact): a tiny sft model and a reward model made from it (an untrained head)."""
    from components.model.config import ModelConfig
    from components.reward.model import scalar_head_model
    from tests.tiny import save_tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path / "tok")
    sft = save_tiny_model(tmp_path / "sft", tokenizer, ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                                                                    ffn_hidden=64, context_length=64), seed=1)
    reward_dir = tmp_path / "reward"
    scalar_head_model(sft / "model", tokenizer.pad_token_id, seed=7).save_pretrained(reward_dir / "model")
    return sft, reward_dir


def test_tiny_ppo_run_through_the_stage(tmp_path):
    """The rl stage with algorithm=ppo and reward=model, a few steps: finite losses, per-step KL and reward-model
    scores in the manifest's metrics, an exported actor that AutoModelForCausalLM loads; a resumed run equals
    the uninterrupted one."""
    import json

    from transformers import AutoModelForCausalLM

    from components.context import StageContext
    from components.rl.run import run

    sft, reward_dir = tiny_sft_and_reward(tmp_path)
    cfg = RLConfig(enabled=True, algorithm="ppo", max_steps=4, warmup_steps=1, lr=1e-3, batch_size=4, group_size=1,
                   max_new_tokens=4, num_prompts=32, num_val_prompts=8, mixed_precision="no", log_every=100,
                   eval_every=0, save_every=2, ppo_epochs=1)  # one update per rollout (epochs: the tests below)
    inputs = {"sft": sft, "reward": reward_dir}
    whole, first = tmp_path / "whole", tmp_path / "first"
    whole.mkdir(), first.mkdir()
    metrics = run(cfg, inputs, StageContext.local(whole, stage="rl"))
    assert metrics["steps"] == 4 and torch.isfinite(torch.tensor(metrics["final_loss"]))
    assert len(metrics["kl_per_step"]) == 4 and len(metrics["reward_per_step"]) == 4
    assert "reward_mean_last" in metrics and len(metrics["value_loss_per_step"]) == 4 and metrics["rollout_tokens_per_s"] > 0
    assert "val_reward_model_score" in metrics and "val_reward_model_score_before" in metrics
    assert "val_task_accuracy" in metrics and "val_task_accuracy_before" in metrics
    loaded = AutoModelForCausalLM.from_pretrained(whole / "model")
    assert loaded.config.architectures[0].endswith("ForCausalLM")
    trained = dict(loaded.named_parameters())
    start = dict(AutoModelForCausalLM.from_pretrained(sft / "model").named_parameters())
    assert any(not torch.equal(trained[k], start[k]) for k in trained)  # the actor moved
    # resume: a run cut at step 3 leaves step 2's checkpoint (its steps 1-2 have the full run's lr: warmup 1,
    # then cosine at progress 0); the full run resumes there and must match the uninterrupted one
    run(RLConfig(**{**cfg.__dict__, "max_steps": 3}), inputs, StageContext.local(first, stage="rl"))
    assert (first / "checkpoints").is_dir() and any((first / "checkpoints").iterdir())
    resumed = run(cfg, inputs, StageContext.local(first, stage="rl"))
    assert resumed["kl_per_step"] == metrics["kl_per_step"] and resumed["reward_per_step"] == metrics["reward_per_step"]
    loss = [json.loads(line)["loss"] for line in (whole / "log.jsonl").read_text().splitlines()]
    loss_resumed = [json.loads(line)["loss"] for line in (first / "log.jsonl").read_text().splitlines()]
    assert loss_resumed == pytest.approx(loss, abs=1e-6)


@pytest.mark.parametrize("adapter", ["lora", "adalora", "prefix"])
def test_ppo_adapters_train_the_actor_only_beside_the_critic_and_export_as_grpos_do(tmp_path, adapter, cpu_bf16):
    """rl.adapter with ppo: the actor trains only its adapter, the critic in full (TRL's value model); the
    held-out figure before training is the sft model's; adalora prunes its ranks through the ActorCritic
    the loop holds; lora and adalora are exported merged, prefix as the sft base + an adapter load_model reads."""
    from transformers import AutoModelForCausalLM

    from components.context import StageContext
    from components.rl.run import run
    from components.train import adapters

    sft, reward_dir = tiny_sft_and_reward(tmp_path)
    cfg = RLConfig(enabled=True, algorithm="ppo", reward="checker", max_steps=6, warmup_steps=1, lr=5e-2, batch_size=4,
                   group_size=1, max_new_tokens=4, num_prompts=32, num_val_prompts=8, mixed_precision="bf16",
                   log_every=100, eval_every=0, ppo_epochs=1, adapter=adapter, lora_rank=4, adalora_target_rank=2,
                   num_virtual_tokens=4)
    full_dir, out = tmp_path / "full", tmp_path / "out"
    full_dir.mkdir(), out.mkdir()
    full = run(RLConfig(**{**cfg.__dict__, "adapter": "none", "max_steps": 1, "warmup_steps": 0}),
               {"sft": sft}, StageContext.local(full_dir, stage="rl"))
    metrics = run(cfg, {"sft": sft}, StageContext.local(out, stage="rl"))
    assert metrics["val_task_accuracy_before"] == full["val_task_accuracy_before"]  # no adapter init before it
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")  # the fixture forces each kind of CPU
    critic = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(sft / "model").parameters())  # its decoder
    assert critic < metrics["trainable_params"] < full["trainable_params"]  # the critic in full, the actor's adapter
    assert all(torch.isfinite(torch.tensor(json.loads(line)["loss"])) for line in (out / "log.jsonl").read_text().splitlines())
    export = out / "model"
    assert (export / adapters.ADAPTER_DIR).is_dir() == (adapter == "prefix")
    start = dict(AutoModelForCausalLM.from_pretrained(sft / "model").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(export).named_parameters())
    moved = {k for k in base if not torch.equal(base[k], start[k])}
    if adapter == "prefix":
        assert not moved  # the sft base; what ppo learnt is in the adapter
        model = adapters.load_model(export).eval()
        assert adapters.method_of(model) == "PREFIX_TUNING"
        ids = torch.tensor([[1, 5, 6, 7]])
        with torch.no_grad():
            assert not torch.allclose(model(input_ids=ids).logits, AutoModelForCausalLM.from_pretrained(export)(input_ids=ids).logits)
        return
    assert moved and all(k.endswith("proj.weight") for k in moved), moved  # merged into the adapted projections
    if adapter == "adalora":  # pruned during the run: the loop reached the actor's adapter inside ActorCritic
        log = (out / "log.jsonl").read_text()
        assert '"orth_reg"' in log


def test_whiten_rewards_keeps_the_mean_as_trl_does():
    mask, logps, ref, _, scores, _ = fixed_batch(seed=3)
    rewards, _ = token_rewards(logps, ref, scores, mask, kl_coef=0.1)
    ours = masked_whiten(rewards, mask.float(), shift_mean=False) * mask
    theirs = torch.masked_fill(trl_masked_whiten(rewards, mask, shift_mean=False), ~mask, 0)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert float(ours[mask].mean()) == pytest.approx(float(rewards[mask].mean()), abs=1e-5)  # mean kept
    assert float(ours[mask].std()) == pytest.approx(1.0, abs=1e-3)


def test_an_answer_cut_at_max_new_tokens_loses_the_missing_eos_penalty(tmp_path, monkeypatch):
    """TRL's missing_eos_penalty: the score of each answer that did not end its turn (its last token is no stop
    of the policy's generation_config) drops by the penalty, the others keep theirs; the share of cut answers
    is a per-step figure. The answers are fixed (two end, two are cut) so both kinds are in the batch."""
    import contextlib

    from transformers import AutoModelForCausalLM

    from components.model.config import ModelConfig
    from components.reward.model import scalar_head_model
    from components.rl import ppo_run
    from components.rl.rollout import stop_ids
    from components.tasks import sft_examples
    from tests.tiny import save_tiny_model, tiny_tokenizer

    tokenizer = tiny_tokenizer(tmp_path / "tok")
    sft = save_tiny_model(tmp_path / "sft", tokenizer, ModelConfig(n_layers=1, d_model=32, n_heads=2, n_kv_heads=1,
                                                                    ffn_hidden=64, context_length=64), seed=1) / "model"
    policy = AutoModelForCausalLM.from_pretrained(sft)
    model = ppo_run.ActorCritic(policy, scalar_head_model(sft, tokenizer.pad_token_id, seed=0))
    stop = sorted(stop_ids(policy.generation_config))[0]
    answers = [[11, 12, stop], [13, 14, 15], [stop], [16, 17, 18]]  # ended, cut, ended, cut (max_new_tokens 3)
    monkeypatch.setattr(ppo_run, "sample_answers", lambda *a, **k: ([[5, 6, 7]] * 4, answers, ["x"] * 4, 0.1))
    for penalty in (0.0, 1.5):
        cfg = RLConfig(enabled=True, algorithm="ppo", reward="checker", group_size=1, max_new_tokens=3, kl_coef=0.0,
                       missing_eos_penalty=penalty)
        batch = ppo_run.ppo_rollouts(model, policy, tokenizer, sft_examples("train", 4), cfg, 0, contextlib.nullcontext,
                                     lambda texts, owners: [0.5] * len(texts))
        assert batch["rewards"].tolist() == pytest.approx([0.5, 0.5 - penalty, 0.5, 0.5 - penalty])
        assert batch["stats"]["unfinished_share"] == 0.5
        assert batch["stats"]["reward_mean"] == pytest.approx(0.5)  # the score as given, before the penalty


def test_ppo_epochs_and_minibatches_share_one_rollout_batch():
    """ppo_epochs=2, num_mini_batches=2: four optimizer steps train on one rollout batch, sampled once at the
    first; each pass's two minibatches are disjoint and cover it, the passes shuffle differently; the fifth
    step samples anew; a source started afresh (a resumed run) gives the same minibatches."""
    from components.rl.ppo_run import minibatch
    from components.rl.rollout import positional_source

    cfg = RLConfig(algorithm="ppo", batch_size=4, group_size=2, ppo_epochs=2, num_mini_batches=2, save_every=4)
    calls = []

    def make_batch(examples, seed):
        calls.append(seed)
        rows, width = 8, 6
        ids = torch.arange(rows)[:, None].expand(rows, width).clone()  # row i holds i: minibatches show their rows
        lengths = torch.tensor([3, 6, 4, 5, 6, 2, 4, 3])
        mask = (torch.arange(width)[None] < lengths[:, None]).long()
        targets = torch.rand(rows, width - 1, generator=torch.Generator().manual_seed(seed))
        return {"input_ids": ids, "attention_mask": mask, "completion_mask": mask[:, 1:].bool(),
                "rewards": torch.arange(rows).float(), "advantages": targets, "old_logps": targets,
                "old_values": targets, "returns": targets, "n_targets": 1, "n_tokens": int(mask.sum()), "stats": {}}

    prompts = [{"messages": []}] * 40
    source = positional_source(prompts, cfg, make_batch, minibatch(cfg))
    steps = [source(step, 0) for step in range(5)]
    assert len(calls) == 2  # steps 0-3 on the first rollout, step 4 on the second
    for epoch in (0, 1):
        a, b = steps[2 * epoch], steps[2 * epoch + 1]
        rows_a, rows_b = set(a["input_ids"][:, 0].tolist()), set(b["input_ids"][:, 0].tolist())
        assert len(rows_a) == len(rows_b) == 4 and rows_a | rows_b == set(range(8))
        assert a["stats"]["ppo_epoch"] == b["stats"]["ppo_epoch"] == epoch
        for batch in (a, b):  # each tensor keeps its rows together and its own padding
            rows = batch["input_ids"][:, 0]
            assert torch.equal(batch["rewards"], rows.float())
            assert batch["input_ids"].shape[1] == int(batch["attention_mask"].sum(1).max())
            assert batch["old_logps"].shape[1] == batch["input_ids"].shape[1] - 1
            assert batch["n_tokens"] == int(batch["attention_mask"].sum())
    assert steps[0]["input_ids"][:, 0].tolist() != steps[2]["input_ids"][:, 0].tolist()  # a fresh shuffle per pass
    resumed = positional_source(prompts, cfg, make_batch, minibatch(cfg))
    for step in (4, 5, 6):
        again, first = resumed(step, 0), source(step, 0)
        assert torch.equal(again["input_ids"], first["input_ids"]) and torch.equal(again["old_logps"], first["old_logps"])


def test_a_resumed_ppo_run_with_epochs_and_minibatches_equals_the_uninterrupted_one(tmp_path, cpu_bf16):
    """Two passes of two minibatches per rollout, through the real stage: a run cut after step 5 leaves step 4's
    checkpoint (the first rollout's last update; steps 1-4 are warmup, the same lr in both runs); the full run
    resumed from it equals the uninterrupted one."""
    import json

    from components.context import StageContext
    from components.rl.run import run

    sft, reward_dir = tiny_sft_and_reward(tmp_path)
    cfg = RLConfig(enabled=True, algorithm="ppo", max_steps=8, warmup_steps=4, lr=1e-3, batch_size=4, group_size=1,
                   max_new_tokens=4, num_prompts=32, num_val_prompts=8, log_every=100,
                   eval_every=0, save_every=4, ppo_epochs=2, num_mini_batches=2, mixed_precision="bf16")
    inputs = {"sft": sft, "reward": reward_dir}
    whole, first = tmp_path / "whole", tmp_path / "first"
    whole.mkdir(), first.mkdir()
    metrics = run(cfg, inputs, StageContext.local(whole, stage="rl"))
    assert metrics["precision"] == ("bf16" if cpu_bf16 else "no")  # both kinds of CPU: the fixture forces each
    rows = [json.loads(line) for line in (whole / "log.jsonl").read_text().splitlines()]
    assert [r["ppo_epoch"] for r in rows] == [0, 0, 1, 1] * 2
    assert metrics["reward_per_step"][:4] == [metrics["reward_per_step"][0]] * 4  # one rollout's score, 4 updates
    assert [r["policy_loss"] for r in rows[:2]] != [r["policy_loss"] for r in rows[2:4]]
    run(RLConfig(**{**cfg.__dict__, "max_steps": 5}), inputs, StageContext.local(first, stage="rl"))
    resumed = run(cfg, inputs, StageContext.local(first, stage="rl"))
    assert resumed["kl_per_step"] == metrics["kl_per_step"] and resumed["reward_per_step"] == metrics["reward_per_step"]
    loss = [r["loss"] for r in rows]
    loss_resumed = [json.loads(line)["loss"] for line in (first / "log.jsonl").read_text().splitlines()]
    assert loss_resumed == pytest.approx(loss, abs=1e-6)
