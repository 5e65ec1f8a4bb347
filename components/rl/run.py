"""RL stage (GRPO with checker rewards, or the reward model's): the sft model is the starting policy and the
frozen reference.

Inside the shared training loop: batch_fn(step, micro) samples that position's rollouts from the
current policy (the prompts and the sampling seed are functions of the position, so a resumed run
draws what the uninterrupted one would have), loss_fn is the GRPO loss over them. Each rollout serves
one update (TRL's num_iterations=1): the policy is always on-policy, pi_old = pi in value.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.context import StageContext
from components.rl.config import RLConfig
from components.rl.grpo import grpo_loss, token_logps
from components.reward.model import scalar_head_model
from components.rl.rollout import make_rollouts, positional_source
from components.rl.scores import checker_score, heldout_figures, reward_model_score
from components.tasks import sft_examples
from components.train import adapters
from components.train.budget import count_parameters
from components.train.epochs import with_epochs
from components.train.loop import make_accelerator, train

log = logging.getLogger(__name__)


def grpo_objective(cfg: RLConfig):
    """The training loop's loss_fn: the policy's per-token log-probs of its own answers, against the
    reference's (cached in the batch), weighted by the group-normalised advantages."""
    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        logps = token_logps(model, batch["input_ids"], batch["attention_mask"], cfg.temperature)
        loss_sum, kl = grpo_loss(logps, logps.detach(), batch.get("ref_logps"), batch["advantages"],
                                 batch["completion_mask"], cfg.beta, cfg.epsilon, cfg.loss)
        stats = batch["stats"]
        return loss_sum, {"reward_mean": stats["reward_mean"], "kl": float(kl),
                          "groups_without_signal": stats["groups_without_signal"],
                          "answer_tokens_mean": stats["answer_tokens_mean"],
                          "rollout_tokens_per_s": stats["rollout_tokens"] / max(1e-9, stats["rollout_seconds"]),
                          **{k: stats[k] for k in ("prompts_sampled", "sampled_groups_without_signal") if k in stats}}

    return loss_fn


def rollout_source(model, reference, tokenizer, prompts: list[dict], cfg: RLConfig, autocast,
                   score=checker_score):
    """The loop's batch_fn: the GRPO rollouts of the micro-batch at a position, sampled from the current policy.
    score(answers, examples) -> [float]."""
    def more(seed: int, round_: int) -> list[dict]:  # dynamic sampling's extra prompts: from the position's seed
        rng = random.Random(seed * 1_000 + round_)  # alone, so a resumed run draws what it would have drawn
        return [prompts[i] for i in rng.sample(range(len(prompts)), min(cfg.batch_size, len(prompts)))]

    return positional_source(prompts, cfg, lambda examples, seed: make_rollouts(
        model, reference, tokenizer, examples, cfg, seed, autocast, score, more=lambda r: more(seed, r)))


def per_step(log_path: Path, key: str) -> list[float]:
    """One metric of every step in log.jsonl (cut to the resumed step, so a resumed run's too)."""
    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [round(row[key], 4) for row in rows if key in row]


def run(cfg: RLConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    if ctx.strategy == "fsdp":  # rollouts call generate on the whole model, which FSDP shards
        raise ValueError("config error: launcher.strategy=fsdp: the rl stage samples with the unsharded model; "
                         "use single or ddp")
    if cfg.algorithm == "ppo":
        from components.rl.ppo_run import run_ppo

        return run_ppo(cfg, inputs, ctx, per_step)
    out_dir = ctx.out_dir
    src = Path(inputs["sft"]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(src)
    torch.manual_seed(cfg.seed)
    model = adapters.load_trainable(src, cfg, "rl")  # an sft adapter that does not merge trains further
    reference = adapters.load_model(src).eval().requires_grad_(False)  # the sft model as it came in
    accelerator = make_accelerator(cfg, model, ctx.strategy)
    if cfg.adapter != "qlora":  # a 4-bit model was placed on its GPU as it loaded
        model.to(accelerator.device)
    reference.to(accelerator.device)
    reward_model = None
    if cfg.reward_source == "model":  # the reward stage's model scores each answer (needs reward.enabled)
        reward_model = scalar_head_model(Path(inputs["reward"]) / "model", tokenizer.pad_token_id, cfg.seed)
        reward_model = reward_model.eval().requires_grad_(False).to(accelerator.device)
    score = reward_model_score(reward_model, tokenizer) if reward_model is not None else checker_score
    prompts = sft_examples("train", cfg.num_prompts, cfg.seed)
    heldout = sft_examples("heldout", cfg.num_val_prompts, cfg.seed)
    cfg, epochs = with_epochs(cfg, len(prompts), "prompts")
    before = heldout_figures(model, tokenizer, heldout, cfg, reward_model)  # the sft model, before any adapter's init
    model = adapters.add_adapter(model, cfg, "rl", cfg.max_steps)  # adalora schedules its pruning by the steps
    batch_fn = rollout_source(model, reference, tokenizer, prompts, cfg, accelerator.autocast, score)

    def evaluate(policy: torch.nn.Module) -> dict:
        return heldout_figures(accelerator.unwrap_model(policy), tokenizer, heldout, cfg, reward_model)

    n_params, n_trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    log.info("rl: sft model's held-out figures %s on %d prompts; %d training prompts, %d answers each, rewarded by "
             "the %s; %d of %d parameters trainable (adapter %s)", before, len(heldout), len(prompts), cfg.group_size,
             cfg.reward_source, n_trainable, n_params, cfg.adapter)
    metrics = train(model, cfg, batch_fn, grpo_objective(cfg), out_dir, evaluate, accelerator=accelerator,
                    export=(tokenizer, out_dir / "model"), ctx=ctx)
    rewards, kls = per_step(out_dir / "log.jsonl", "reward_mean"), per_step(out_dir / "log.jsonl", "kl")
    speeds = per_step(out_dir / "log.jsonl", "rollout_tokens_per_s")
    tail = max(1, len(rewards) // 10)
    return {**metrics, **epochs, **{f"{k}_before": v for k, v in before.items()}, "trainable_params": n_trainable,
            "reward_mean_first": sum(rewards[:tail]) / tail, "reward_mean_last": sum(rewards[-tail:]) / tail,
            "rollout_tokens_per_s": round(sum(speeds) / max(1, len(speeds)), 1),
            "reward_per_step": rewards, "kl_per_step": kls}
