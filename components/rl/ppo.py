"""PPO's pieces (InstructGPT / DeepSpeed-Chat step 3), as TRL's PPOTrainer computes them (tests/test_ppo.py
checks them against TRL's loop): per-token rewards (a KL penalty to the frozen reference on every answer
token, the reward model's or the checker's score added at the last one), GAE advantages and returns,
advantages whitened over the batch's answer tokens, and the clipped policy + clipped value loss.

Every tensor is [B, T] over targets (target t is token t+1, as token_logps lays them out); mask [B, T]
marks the answer tokens. One difference from TRL, on purpose: the score goes on the last answer token
(DeepSpeed-Chat's place), where TRL puts it one position past it (on a padding token whose value is kept)."""
from __future__ import annotations

import torch

WHITEN_EPS = 1e-8  # TRL's masked_whiten


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum()


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, var with Bessel's correction (TRL's);
    shift_mean=False adds the mean back (TRL's whiten_rewards: the scale changes, the sign of the mean stays)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask) * mask.sum() / (mask.sum() - 1).clamp(min=1)
    whitened = (values - mean) * torch.rsqrt(var + WHITEN_EPS)
    return whitened if shift_mean else whitened + mean


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """[B]: the position of each row's last answer token (mask: [B, T], contiguous answers)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(1).values


def token_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [B, T], kl [B, T]): -kl_coef * (logp - ref_logp) on each answer token (TRL's k1 estimate),
    plus the sequence's score on its last answer token; 0 off the answer."""
    mask = mask.to(logps.dtype)
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(len(scores), device=scores.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), [B, T]: generalised advantage estimation, right to left (TRL's loop):
    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; returns = A + V.
    Values off the answer are taken as 0 (the episode ends after its last token); advantages are then
    whitened over the answer tokens and zeroed elsewhere, returns are not."""
    mask = mask.to(values.dtype)
    values = values * mask
    last = torch.zeros_like(values[:, 0])
    reversed_advantages = []
    for t in reversed(range(values.shape[1])):
        next_values = values[:, t + 1] if t < values.shape[1] - 1 else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        reversed_advantages.append(last)
    advantages = torch.stack(reversed_advantages[::-1], 1)
    returns = advantages + values
    return masked_whiten(advantages, mask) * mask, returns


def ppo_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
             old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange: float,
             cliprange_value: float, vf_coef: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, policy loss, value loss), each a mean over the answer tokens (TRL's):
    policy: max(-A * ratio, -A * clip(ratio, 1 - c, 1 + c)); value: 0.5 * max((V - R)^2,
    (clip(V, V_old - cv, V_old + cv) - R)^2); loss = policy + vf_coef * value."""
    mask = mask.to(logps.dtype)
    values_clipped = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (values_clipped - returns) ** 2), mask)
    ratio = torch.exp(logps - old_logps)
    policy_losses = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange))
    policy_loss = masked_mean(policy_losses, mask)
    return policy_loss + vf_coef * value_loss, policy_loss, value_loss
