"""The ppo run inside the shared loop: the loop's model is ActorCritic (the policy and the critic, so one
optimizer, checkpoint and resume hold both); batch_fn samples rollouts and computes their old log-probs,
values, per-token rewards and GAE under no_grad; loss_fn is PPO's clipped policy + value loss. Each rollout
batch takes ppo_epochs x num_mini_batches optimizer steps (TRL's num_ppo_epochs, num_mini_batches), each on
one shuffled minibatch; batch_fn stays a pure function of the position (checkpoints fall between rollouts)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.reward.model import scalar_head_model
from components.tasks import sft_examples
from components.train import adapters
from components.train.budget import count_parameters
from components.train.epochs import with_epochs
from components.train.loop import make_accelerator, save_model, train
from components.rl.grpo import token_logps
from components.rl.scores import checker_score, heldout_figures, reward_model_score
from components.rl.ppo import gae, masked_whiten, ppo_loss, token_rewards
from components.rl.rollout import positional_source, rollout_batch, sample_answers, stop_ids
from components.train.device import model_device

log = logging.getLogger(__name__)


class ActorCritic(torch.nn.Module):
    """The policy (a causal LM) and the critic: a sequence classifier's decoder + scalar head read at every
    token (DeepSpeed-Chat / TRL initialise it from the reward model; with reward=checker, the sft model and a
    fresh head)."""

    def __init__(self, policy: torch.nn.Module, critic: torch.nn.Module):
        super().__init__()
        self.policy, self.critic = policy, critic

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L-1]: V of the state after token t (the value of target t+1's position, as token_logps lays out)."""
        backbone = getattr(self.critic, self.critic.base_model_prefix)
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.critic.score(hidden).squeeze(-1)[:, :-1].float()

    def forward(self, input_ids, attention_mask, temperature: float = 1.0):
        return token_logps(self.policy, input_ids, attention_mask, temperature), self.values(input_ids, attention_mask)


def ppo_objective(cfg):
    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logps, values = model(batch["input_ids"], batch["attention_mask"], cfg.temperature)
        loss, policy_loss, value_loss = ppo_loss(logps, batch["old_logps"], batch["advantages"], values,
                                                 batch["old_values"], batch["returns"], batch["completion_mask"],
                                                 cfg.cliprange, cfg.cliprange_value, cfg.vf_coef)
        return loss, {**batch["stats"], "policy_loss": float(policy_loss.detach()), "value_loss": float(value_loss.detach())}

    return loss_fn


@torch.no_grad()
def ppo_rollouts(actor_critic: ActorCritic, reference, tokenizer, examples: list[dict], cfg, seed: int,
                 autocast, score) -> dict:
    """One micro-batch: group_size sampled answers per prompt, scored by score(answers, examples), with the
    old log-probs, values, per-token rewards (KL to the reference + score), advantages and returns."""
    prompt_ids, answer_ids, answers, seconds = sample_answers(actor_critic.policy, tokenizer, examples, cfg, seed, autocast)
    owners = [examples[i // cfg.group_size] for i in range(len(answers))]
    raw = torch.tensor(score(answers, owners), dtype=torch.float32)
    stops = stop_ids(actor_critic.policy.generation_config)
    unfinished = torch.tensor([float(not a or a[-1] not in stops) for a in answer_ids])  # cut at max_new_tokens
    scores = raw - cfg.missing_eos_penalty * unfinished
    batch = rollout_batch(prompt_ids, answer_ids, scores.tolist(), _Layout(cfg), tokenizer.pad_token_id)
    where = model_device(actor_critic.policy)
    ids, mask = batch["input_ids"].to(where), batch["attention_mask"].to(where)
    with autocast():
        old_logps, old_values = (t.float().cpu() for t in actor_critic(ids, mask, cfg.temperature))
        ref_logps = token_logps(reference, ids, mask, cfg.temperature).float().cpu()
    answer = batch["completion_mask"]
    rewards, kl = token_rewards(old_logps, ref_logps, scores, answer, cfg.kl_coef)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, answer, shift_mean=False) * answer
    advantages, returns = gae(rewards, old_values, answer, cfg.gamma, cfg.lam)
    n_generated = sum(len(a) for a in answer_ids)
    batch.update(old_logps=old_logps, old_values=old_values * answer, advantages=advantages, returns=returns,
                 n_targets=1)  # ppo_loss is a mean over the micro-batch's answer tokens (TRL's)
    batch["stats"] = {"reward_mean": float(raw.mean()), "unfinished_share": float(unfinished.mean()),
                      "kl": float((kl.sum() / answer.sum()).item()),
                      "answer_tokens_mean": n_generated / len(answer_ids),
                      "rollout_tokens": n_generated, "rollout_seconds": seconds,
                      "rollout_tokens_per_s": n_generated / max(1e-9, seconds)}
    return batch


class _Layout:
    """What rollout_batch reads of the config; its GRPO advantages (overwritten here) unscaled, since a
    one-answer group's std is undefined."""

    def __init__(self, cfg):
        self.group_size, self.scale_rewards, self.loss = cfg.group_size, "none", cfg.loss


ROWS = ("input_ids", "attention_mask", "completion_mask", "rewards", "advantages", "old_logps", "old_values", "returns")


def minibatch(cfg):
    """pick(rollout, update, seed): minibatch update % num_mini_batches of pass update // num_mini_batches, each
    pass a fresh seeded permutation of the rollout's answers (TRL's), its minibatches disjoint and covering it."""
    def pick(rollout: dict, update: int, seed: int) -> dict:
        epoch, part = divmod(update, cfg.num_mini_batches)
        rows = len(rollout["input_ids"])
        order = torch.randperm(rows, generator=torch.Generator().manual_seed(seed * 31 + epoch))
        size = rows // cfg.num_mini_batches
        idx = order[part * size:(part + 1) * size]
        width = int(rollout["attention_mask"][idx].sum(1).max())  # the minibatch's own padding
        sliced = {k: rollout[k][idx] for k in ROWS}
        sliced = {k: v[:, :width] if k in ("input_ids", "attention_mask") else v[:, :width - 1] if v.dim() == 2 else v
                  for k, v in sliced.items()}
        return {**rollout, **sliced, "n_tokens": int(sliced["attention_mask"].sum()),
                "stats": {**rollout["stats"], "ppo_epoch": epoch}}

    return pick


def ppo_source(actor_critic, reference, tokenizer, prompts: list[dict], cfg, autocast, score):
    """The loop's batch_fn: the PPO rollouts (with values and per-token rewards) of the micro-batch at a position,
    or the step's minibatch of them."""
    return positional_source(prompts, cfg, lambda examples, seed: ppo_rollouts(
        actor_critic, reference, tokenizer, examples, cfg, seed, autocast, score), minibatch(cfg))


def run_ppo(cfg, inputs: dict[str, Path], ctx, per_step) -> dict:
    """The rl stage with algorithm=ppo: actor and reference from sft, the critic (and the scorer with
    reward=model) from the reward stage's model; the actor is exported as the rl model."""
    out_dir, src = ctx.out_dir, Path(inputs["sft"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(cfg.seed)
    policy = adapters.load_trainable(src, cfg, "rl")  # an sft adapter that does not merge trains further
    reference = adapters.load_model(src).eval().requires_grad_(False)  # the sft model as it came in
    reward_model = None
    if cfg.reward_source == "model":
        reward_dir = Path(inputs["reward"]) / "model"
        reward_model = scalar_head_model(reward_dir, tokenizer.pad_token_id, cfg.seed).eval().requires_grad_(False)
        critic = scalar_head_model(reward_dir, tokenizer.pad_token_id, cfg.seed)
    else:
        critic = scalar_head_model(src, tokenizer.pad_token_id, cfg.seed)  # the sft decoder and a fresh head
    prompts = sft_examples("train", cfg.num_prompts, cfg.seed)
    heldout = sft_examples("heldout", cfg.num_val_prompts, cfg.seed)
    cfg, epochs = with_epochs(cfg, len(prompts), "prompts")
    before = heldout_figures(policy, tokenizer, heldout, cfg, reward_model)  # the sft model, before any adapter's init
    # rl.adapter adapts the actor alone; the critic (a separate model, as TRL's value model) trains in full
    policy = adapters.add_adapter(policy, cfg, "rl", cfg.max_steps)
    model = ActorCritic(policy, critic)
    accelerator = make_accelerator(cfg, model, ctx.strategy)
    for module in (critic, reference, reward_model) + ((policy,) if cfg.adapter != "qlora" else ()):
        if module is not None:  # a 4-bit policy was placed on its GPU as it loaded
            module.to(accelerator.device)
    score = reward_model_score(reward_model, tokenizer) if reward_model is not None else checker_score
    batch_fn = ppo_source(model, reference, tokenizer, prompts, cfg, accelerator.autocast, score)

    def evaluate(wrapped: torch.nn.Module) -> dict:
        return heldout_figures(accelerator.unwrap_model(wrapped).policy, tokenizer, heldout, cfg, reward_model)

    n_trainable = count_parameters(model, trainable_only=True)
    log.info("rl (ppo): %d of %d parameters trainable (actor adapter %s; the critic in full)", n_trainable,
             count_parameters(model), cfg.adapter)
    metrics = train(model, cfg, batch_fn, ppo_objective(cfg), out_dir, evaluate, accelerator=accelerator, ctx=ctx)
    # the actor alone is the rl model (single process: the loop trained it in place), merged or base + adapter
    save_model(accelerator, policy, tokenizer, out_dir / "model")
    log_path = out_dir / "log.jsonl"
    speeds, rewards = per_step(log_path, "rollout_tokens_per_s"), per_step(log_path, "reward_mean")
    tail = max(1, len(rewards) // 10)
    return {**metrics, **epochs, **{f"{k}_before": v for k, v in before.items()}, "trainable_params": n_trainable,
            "reward_mean_first": sum(rewards[:tail]) / tail, "reward_mean_last": sum(rewards[-tail:]) / tail,
            "reward_per_step": rewards, "kl_per_step": per_step(log_path, "kl"),
            "value_loss_per_step": per_step(log_path, "value_loss"),
            "rollout_tokens_per_s": round(sum(speeds) / max(1, len(speeds)), 1)}
