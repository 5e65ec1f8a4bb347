"""GRPO's pieces, as TRL's GRPOTrainer computes them (tests/test_grpo.py checks them against TRL):
advantages normalised within each group of answers to one prompt, per-token log-probs of the answers,
and the clipped policy-gradient loss with a k3 KL penalty to the frozen reference."""
from __future__ import annotations

import torch

STD_EPS = 1e-4  # TRL's: a group whose answers all score the same gets advantage 0, not 0/0


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """(r - mean of its group) / (std of its group + 1e-4), std with Bessel's correction (TRL's nanstd);
    scale="none": r - mean (Dr. GRPO: no division, so easy and hard prompts weigh alike). rewards: [groups * G],
    each group's answers in a row."""
    grouped = rewards.view(-1, group_size)
    advantages = grouped - grouped.mean(1, keepdim=True)
    if scale == "group":
        advantages = advantages / (grouped.std(1, keepdim=True) + STD_EPS)
    elif scale != "none":
        raise ValueError(f"unknown reward scaling {scale!r}: choose group or none")
    return advantages.flatten()


def token_logps(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
    """[B, L-1]: log p(token t+1 | tokens <= t) under logits / temperature (the sampling distribution, as
    TRL scores it), in float32 at least. Right-padded rows: no position shift from padding."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, -input_ids.shape[1]:-1]  # prompt / p-tuning adapters add logits for their virtual tokens
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return torch.gather(logits.log_softmax(-1), 2, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, beta: float, epsilon: float,
              kind: str = "grpo") -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the loss over the batch's targets, mean per-token KL to the reference).

    Per answer token: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) + beta * KL, with ratio =
    pi / pi_old (1 in value when every rollout is used for one update, but its gradient is the policy
    gradient) and KL = ratio * (exp(ref - logp) - (ref - logp) - 1) (Schulman's k3, >= 0, weighted by the
    ratio as TRL's use_bias_correction_kl does: the gradient of pi's KL, not pi_old's). The targets:
    grpo: answers (each answer's token mean is one target, TRL loss_type=grpo); dapo: answer tokens
    (the loop divides by the step's tokens: TRL loss_type=dapo). mask: [B, T] answer tokens."""
    mask = mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps)
    adv = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    kl = torch.zeros_like(logps)
    if beta != 0.0 and ref_logps is not None:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + beta * kl * ratio  # importance-weighted: the KL of pi, not of pi_old (TRL's default)
    if kind == "grpo":
        loss_sum = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum()
    elif kind == "dapo":
        loss_sum = (per_token * mask).sum()
    else:
        raise ValueError(f"unknown GRPO loss {kind!r}: choose grpo or dapo")
    kl_mean = (kl * mask).sum() / mask.sum().clamp(min=1.0)
    return loss_sum, kl_mean.detach()
