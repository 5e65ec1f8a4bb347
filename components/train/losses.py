"""Objectives: each returns (sum of losses over the batch's targets, metrics)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE = -100


def token_nll_sum(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token NLL over labels != IGNORE (labels aligned with input_ids).
    position_ids restarting mid-row mark packed examples (see packing.py); transformers honours
    them only without a KV cache, hence use_cache=False (training needs none anyway)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )


def lm_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Pretraining: every next token is a target."""
    ids = batch["input_ids"]
    return token_nll_sum(model, ids, batch.get("labels", ids), batch.get("attention_mask")), {}


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum of log p(label tokens)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logp = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, kind: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference losses and the implicit rewards beta * (log pi - log pi_ref).

    sigmoid: DPO (Rafailov et al. 2023); ipo: (h - 1/(2 beta))^2 (Azar et al. 2023);
    hinge: relu(1 - beta h) (SLiC), with h the log-ratio margin.
    """
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * margin)
    elif kind == "ipo":
        losses = (margin - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * margin)
    else:
        raise ValueError(f"unknown preference loss {kind!r}: choose sigmoid, ipo or hinge")
    chosen_reward = beta * (policy_chosen - ref_chosen).detach()
    rejected_reward = beta * (policy_rejected - ref_rejected).detach()
    return losses, chosen_reward, rejected_reward


LN2 = math.log(2.0)
