from __future__ import annotations

from dataclasses import dataclass

from components.config import check, check_choice, log_only
from components.train.adapter_config import AdapterConfig
from components.train.config import TrainConfig

ALGORITHMS = ("grpo", "ppo")
REWARDS = ("auto", "model", "checker")
LOSSES = ("grpo", "dapo")
SCALE_REWARDS = ("group", "none")


@dataclass(frozen=True, kw_only=True)
class RLConfig(TrainConfig, AdapterConfig):
    """RL from rewards after sft: each step samples group_size answers per generated task prompt,
    rewards them 1/0 with the task's checker (exact match, as eval scores; or with the reward stage's model,
    rl.reward=model), and takes a clipped
    policy-gradient step on the group-normalised advantages with a KL penalty to the frozen sft model
    (GRPO, Shao et al. 2024, as TRL's GRPOTrainer computes it). On by default; rl.enabled=false drops it."""

    enabled: bool = True
    # grpo (group-normalised advantages, checker rewards) | ppo (value head, GAE, per-token KL reward: InstructGPT,
    # as TRL's PPOTrainer; components/rl/ppo.py)
    algorithm: str = "grpo"
    lr: float = 2e-5
    max_steps: int = 40  # optimizer steps, each on freshly sampled rollouts
    warmup_steps: int = 5
    eval_every: int = log_only(20)  # steps between greedy held-out accuracy passes (0: only at the end)
    batch_size: int = 16  # prompts per micro-batch, each answered group_size times
    group_size: int = 8  # G: sampled answers per prompt; their rewards are normalised within the group
    beta: float = 0.04  # weight of the KL penalty to the frozen sft model (k3 estimator per token, as TRL); 0: none
    epsilon: float = 0.2  # the ratio pi/pi_old is clipped to [1 - epsilon, 1 + epsilon] (PPO's clip)
    # grpo: token mean per answer, then mean over answers (TRL loss_type=grpo) | dapo: mean over every answer
    # token of the step (TRL's default)
    loss: str = "grpo"
    scale_rewards: str = "group"  # group: advantages (r - mean) / (std + 1e-4) within each group | none: r - mean (Dr. GRPO)
    # grpo: DAPO's dynamic sampling: up to this many more draws of batch_size prompts a step while fewer than
    # batch_size groups disagree (all answers right or all wrong: zero advantages, no gradient); the batch keeps
    # batch_size groups, those that disagree first. Costs up to that many more rollouts a step; 0: off
    dynamic_sampling: int = 0
    temperature: float = 1.0  # sampling temperature of the rollouts; the log-probs are of logits / temperature (as TRL)
    top_k: int = 0  # sample among the top_k tokens only (0: the whole vocabulary)
    max_new_tokens: int = 16  # answer budget per rollout (the tasks' answers are a few tokens)
    num_prompts: int = 4000  # training prompts: generated tasks of the train split, drawn in seeded order
    num_val_prompts: int = 200  # held-out task prompts scored (greedy, exact match) at each validation
    # what scores an answer: model: the reward stage's model scores (prompt, answer) (needs reward.enabled=true) |
    # checker: the task's check, 1/0 | auto: checker with grpo, model with ppo (reward_source)
    reward: str = "auto"
    kl_coef: float = 0.05  # ppo: per-token reward -kl_coef * (logp - ref_logp) (TRL's kl_coef); 0: no KL penalty
    gamma: float = 1.0  # ppo: discount of GAE (TRL's)
    lam: float = 0.95  # ppo: GAE's lambda (TRL's)
    vf_coef: float = 0.1  # ppo: weight of the value loss beside the policy loss (TRL's)
    cliprange: float = 0.2  # ppo: the ratio pi/pi_old is clipped to [1 - cliprange, 1 + cliprange]
    cliprange_value: float = 0.2  # ppo: the value prediction is clipped to old value +- cliprange_value
    whiten_rewards: bool = False  # ppo: per-token rewards scaled to unit variance over the batch's answer tokens, mean kept (TRL's)
    # ppo: taken off the score of an answer that ran to max_new_tokens without ending its turn (TRL's); 0: none
    missing_eos_penalty: float = 0.0
    ppo_epochs: int = 4  # ppo: passes over each rollout batch before sampling again (TRL's num_ppo_epochs, its default)
    num_mini_batches: int = 1  # ppo: each pass splits the rollout batch into this many updates (TRL's), a fresh shuffle each pass

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("rl.algorithm", self.algorithm, ALGORITHMS)
        check(self.algorithm == "ppo" or self.group_size >= 2, "rl.group_size", self.group_size,
              "must be >= 2 with grpo: advantages are normalised within a group of answers to one prompt")
        check(self.group_size >= 1, "rl.group_size", self.group_size, "must be >= 1")
        self.check_ppo()
        self.check_adapter("rl")
        check(self.dynamic_sampling >= 0, "rl.dynamic_sampling", self.dynamic_sampling, "must be >= 0 (0: off)")
        check(self.dynamic_sampling == 0 or self.algorithm == "grpo", "rl.dynamic_sampling", self.dynamic_sampling,
              "is grpo's (groups of answers to one prompt); set 0 with ppo")
        check(self.beta >= 0, "rl.beta", self.beta, "must be >= 0 (0: no KL penalty)")
        check(0 < self.epsilon < 1, "rl.epsilon", self.epsilon, "must be in (0, 1)")
        check_choice("rl.loss", self.loss, LOSSES)
        check_choice("rl.scale_rewards", self.scale_rewards, SCALE_REWARDS)
        check(self.temperature > 0, "rl.temperature", self.temperature, "must be > 0")
        check(self.top_k >= 0, "rl.top_k", self.top_k, "must be >= 0 (0: no top-k cut)")
        check(self.max_new_tokens > 0, "rl.max_new_tokens", self.max_new_tokens, "must be > 0")
        check(self.num_prompts > 0, "rl.num_prompts", self.num_prompts, "must be > 0")
        check(self.num_val_prompts > 0, "rl.num_val_prompts", self.num_val_prompts, "must be > 0")

    def check_ppo(self) -> None:
        check_choice("rl.reward", self.reward, REWARDS)
        check(self.kl_coef >= 0, "rl.kl_coef", self.kl_coef, "must be >= 0 (0: no KL penalty)")
        check(0 <= self.gamma <= 1, "rl.gamma", self.gamma, "must be in [0, 1]")
        check(0 <= self.lam <= 1, "rl.lam", self.lam, "must be in [0, 1]")
        check(self.vf_coef > 0, "rl.vf_coef", self.vf_coef, "must be > 0: the value head learns only through it")
        check(0 < self.cliprange < 1, "rl.cliprange", self.cliprange, "must be in (0, 1)")
        check(self.cliprange_value > 0, "rl.cliprange_value", self.cliprange_value, "must be > 0")
        check(self.missing_eos_penalty >= 0, "rl.missing_eos_penalty", self.missing_eos_penalty,
              "must be >= 0 (it is subtracted from the score; 0: none)")
        for key in ("ppo_epochs", "num_mini_batches"):
            check(getattr(self, key) >= 1, f"rl.{key}", getattr(self, key), "must be >= 1")
        rows = self.batch_size * self.group_size
        check(self.algorithm != "ppo" or rows % self.num_mini_batches == 0, "rl.num_mini_batches", self.num_mini_batches,
              f"must divide the rollout batch's {rows} answers (rl.batch_size x rl.group_size)")
        updates = self.updates_per_rollout
        # a checkpoint mid-rollout would resume on a rollout sampled by the partly updated policy
        check(self.save_every % updates == 0, "rl.save_every", self.save_every,
              f"must be a multiple of rl.ppo_epochs x rl.num_mini_batches = {updates}: checkpoints fall between "
              "rollouts, so a resumed run samples what the uninterrupted one sampled")

    @property
    def updates_per_rollout(self) -> int:
        """Optimizer steps on each rollout batch: ppo's epochs x minibatches; grpo takes one (its ratio is 1)."""
        return self.ppo_epochs * self.num_mini_batches if self.algorithm == "ppo" else 1

    @property
    def reward_source(self) -> str:
        """model or checker: rl.reward, with auto resolved (checker for grpo, model for ppo)."""
        if self.reward != "auto":
            return self.reward
        return "checker" if self.algorithm == "grpo" else "model"

    def reads_input(self, role: str) -> bool:
        """The reward stage's model is an input only where it scores the answers (components/stages.py)."""
        return role != "reward" or self.reward_source == "model"
