"""Objectives: each returns (sum of losses over the batch's targets, metrics); and the one
validation measure built on them, the mean next-token loss over fixed windows."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from components.train.device import model_device

IGNORE = -100


def router_aux_coef(model: torch.nn.Module) -> float:
    """The MoE load-balancing loss weight (0 for dense models); through DDP's wrapper too."""
    config = getattr(getattr(model, "module", model), "config", None)
    experts = getattr(config, "num_local_experts", 0) or getattr(config, "num_experts", 0)  # Mixtral | Qwen-MoE, OLMoE
    return float(getattr(config, "router_aux_loss_coef", 0.0) or 0.0) if experts else 0.0


def nll_and_router_aux(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                       attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                       with_aux: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed next-token NLL over labels != IGNORE (labels aligned with input_ids), and the MoE
    router's load-balancing loss (a mean over tokens; None for dense models or unless asked).
    position_ids restarting mid-row mark packed examples (see components/chat/batches.py); transformers honours
    them only without a KV cache, hence use_cache=False (training needs none anyway)."""
    kwargs = {"output_router_logits": True} if with_aux and router_aux_coef(model) else {}
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs)
    logits = out.logits[:, -input_ids.shape[1]:]  # prompt / p-tuning adapters add logits for their virtual tokens
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
    )
    return nll, (out.aux_loss if kwargs else None)


def token_nll_sum(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                  attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Summed next-token NLL over labels != IGNORE (labels aligned with input_ids)."""
    return nll_and_router_aux(model, input_ids, labels, attention_mask, position_ids)[0]


@torch.no_grad()
def mean_token_nll(model: torch.nn.Module, windows: torch.Tensor, batch_size: int) -> float:
    """Mean next-token NLL over token windows (each scores its seq_len - 1 targets), batch by batch:
    pretrain's and extend's validation loss, and eval's log-perplexity."""
    total, count, where = 0.0, 0, model_device(model)
    for i in range(0, len(windows), batch_size):
        ids = windows[i : i + batch_size].to(where)
        total += float(token_nll_sum(model, ids, ids))
        count += ids.numel() - len(ids)
    return total / count


def lm_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
    """Next-token loss on labels (pretraining: every next token; sft: the assistant's), plus the MoE
    router's load-balancing loss. The loop divides the sum by the targets of the whole step, so the
    aux loss (a per-token mean) enters weighted by this shard's targets: coef * aux per target, as in HF."""
    ids = batch["input_ids"]
    labels = batch.get("labels", ids)
    nll, aux = nll_and_router_aux(model, ids, labels, batch.get("attention_mask"), batch.get("position_ids"),
                                  with_aux=model.training)
    if aux is None:
        return nll, {}
    n_targets = (labels[:, 1:] != IGNORE).sum()
    return nll + router_aux_coef(model) * aux * n_targets, {"moe_aux_loss": float(aux.detach())}


def sequence_logps(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor,
                   attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum of log p(label tokens), in float32 at least (float64 models stay float64)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, -input_ids.shape[1]:-1]  # no virtual tokens
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logp = torch.gather(logits.log_softmax(-1), 2, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, kind: str = "sigmoid", chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair preference losses and the implicit rewards beta * (log pi - log pi_ref).

    With h the log-ratio margin (log pi/pi_ref of chosen minus that of rejected, summed over tokens):
    sigmoid: -log sigmoid(beta h), DPO (Rafailov et al. 2023); hinge: relu(1 - beta h), SLiC;
    ipo: (h' - 1/(2 beta))^2 (Azar et al. 2023) with h' from per-token averaged log-ratios, as TRL
    does and the IPO authors confirmed (a summed h makes beta depend on the answers' length):
    it needs the response token counts.
    """
    chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
    if kind == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    elif kind == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss averages log-ratios per token: pass chosen_tokens and rejected_tokens")
        margin = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (margin - 1 / (2 * beta)) ** 2
    elif kind == "hinge":
        losses = torch.relu(1 - beta * (chosen_ratio - rejected_ratio))
    else:
        raise ValueError(f"unknown preference loss {kind!r}: choose sigmoid, ipo or hinge")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()



def pairwise_reward_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: float = 0.0,
                         center_coef: float = 0.0) -> torch.Tensor:
    """Per-pair reward-model losses -log sigmoid(r_chosen - r_rejected - margin) (the Bradley-Terry
    pairwise loss of InstructGPT and DeepSpeed-Chat step 2), plus center_coef * (r_chosen + r_rejected)^2,
    which keeps the rewards centred on 0 (Eisenstein et al. 2023). Their mean is TRL's RewardTrainer loss
    (its margin column, its center_rewards_coefficient)."""
    losses = -F.logsigmoid(chosen - rejected - margin)
    if center_coef:
        losses = losses + center_coef * (chosen + rejected) ** 2
    return losses
