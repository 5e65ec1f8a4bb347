"""Pair batches for DPO and the log-probs of their responses, in one of two layouts.

Two rows per pair (`pairs_batch`): chosen and rejected each a right-padded row, the prompt
computed twice. Prefix-shared (`shared_pairs_batch`, align.prefix_sharing): one segment per
pair, [shared prefix][chosen rest][rejected rest], the prefix (the prompt, and any first
answer tokens both share) computed once. Positions restart after the prefix for the
rejected tokens, and a 4D attention mask lets them see the prefix and themselves, never
the chosen tokens: each branch sees what it would see alone. Several pairs are packed
into a row (no attention across them) up to align.pack_tokens, so rows carry almost no
padding. The first answer token of each branch is scored from the prefix's last position,
which is shared: the targets are given per scoring position, one channel per branch.

Both layouts give the same log-probs (to float32 summation error, tested) and carry, per
pair slot, "pair_index" (its place in the list the batch was built from; -1: an empty
slot), "n_response" (response tokens of chosen and rejected) and optionally "ref". Every
tensor has rows first, and pairs are never split across rows, so the loop's shard() hands
each rank whole pairs.
"""
from __future__ import annotations

import torch

from components.chat.batches import pack, pad_batch
from components.train.losses import IGNORE, sequence_logps

Encoded = tuple[list[int], list[int]]  # ids, labels (IGNORE outside the response)
Pair = tuple[Encoded, Encoded]  # chosen, rejected


def response_tokens(labels: list[int]) -> int:
    """Scored tokens of a sequence: labelled ones after the first position (nothing predicts position 0)."""
    return sum(1 for lab in labels[1:] if lab != IGNORE)


def pairs_batch(encoded: list[Pair], idx: list[int], pad_id: int, ref: torch.Tensor | None = None) -> dict:
    """Tensors [pairs, 2 (chosen, rejected), length]: rows are pairs, so ranks split them whole."""
    flat = pad_batch([seq for i in idx for seq in encoded[i]], pad_id)
    batch = {k: v.view(len(idx), 2, -1) for k, v in flat.items()}
    batch["pair_index"] = torch.arange(len(idx))
    batch["n_response"] = torch.tensor([[response_tokens(seq[1]) for seq in encoded[i]] for i in idx])
    if ref is not None:
        batch["ref"] = ref
    batch["n_targets"] = len(idx)
    batch["n_tokens"] = int(flat["attention_mask"].sum())
    return batch


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def segment(pair: Pair) -> tuple[list[int], list[int], list[int], list[list[tuple[int, int]]]]:
    """(ids, positions, branch per token (0 shared, 1 chosen, 2 rejected), per branch the (scoring
    position in the segment, target token) of each labelled token)."""
    (c_ids, c_lab), (r_ids, r_lab) = pair
    k = common_prefix(c_ids, r_ids)
    ids = c_ids + r_ids[k:]
    positions = list(range(len(c_ids))) + list(range(k, len(r_ids)))
    branch = [0] * k + [1] * (len(c_ids) - k) + [2] * (len(r_ids) - k)
    targets = []
    for labels, offset in ((c_lab, k), (r_lab, len(c_ids))):
        # the token at branch position j is predicted by branch position j - 1: shared below k
        targets.append([(j - 1 if j - 1 < k else offset + j - 1 - k, lab)
                        for j, lab in enumerate(labels) if j > 0 and lab != IGNORE])
    return ids, positions, branch, targets


def packed_rows(lengths: list[int], groups: int, pack_tokens: int) -> list[list[int]]:
    """Rows of pair positions: each group's pairs packed apart (pack_tokens 0: one per row), the groups
    padded with empty rows to the same count so shard() hands every rank its own rows."""
    per_group = []
    for part in torch.arange(len(lengths)).tensor_split(groups):
        part = part.tolist()
        if pack_tokens:
            part_lengths = [lengths[j] for j in part]  # a pair longer than pack_tokens gets a row of its own
            per_group.append([[part[j] for j in row] for row in pack(part_lengths, max([pack_tokens, *part_lengths]))])
        else:
            per_group.append([[j] for j in part])
    n_rows = max(len(packed) for packed in per_group)
    return [row for packed in per_group for row in packed + [[] for _ in range(n_rows - len(packed))]]


def shared_pairs_mask(pair_of: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
    """[rows, 1, q, k]: causal, within a pair, a branch's token sees the shared prompt and its own branch;
    a padding query sees itself only (no query without a key)."""
    width = pair_of.shape[1]
    order = torch.arange(width)
    causal = order[None, :] <= order[:, None]  # [q, k]
    same_pair = (pair_of[:, :, None] == pair_of[:, None, :]) & (pair_of[:, :, None] >= 0)
    same_branch = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])  # key shared or own branch
    padding_self = (pair_of[:, :, None] < 0) & torch.eye(width, dtype=torch.bool)
    return ((causal & same_pair & same_branch) | padding_self)[:, None]


def shared_pairs_batch(encoded: list[Pair], idx: list[int], pad_id: int, pack_tokens: int, groups: int = 1,
                       ref: torch.Tensor | None = None) -> dict:
    """Prefix-shared rows of packed pairs (see the module docstring).

    groups: the ranks the loop will shard the batch over. Each rank's pairs are the ones
    pairs_batch would give it (idx.tensor_split(groups)); they are packed apart and the
    groups padded to the same number of rows, so shard() hands every rank its own rows.
    pack_tokens 0: one pair per row.
    """
    segments = [segment(encoded[i]) for i in idx]
    lengths = [len(s[0]) for s in segments]
    rows = packed_rows(lengths, groups, pack_tokens)
    width = max(1, max(sum(lengths[j] for j in row) for row in rows))
    slots = max(1, max(len(row) for row in rows))
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    pair_of = torch.full((n, width), -1, dtype=torch.long)  # the token's slot in its row; -1: padding
    branch = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, 2, width), IGNORE, dtype=torch.long)  # token scored by the logit at that position
    pair_index = torch.full((n, slots), -1, dtype=torch.long)
    n_response = torch.zeros((n, slots, 2), dtype=torch.long)
    ref_slots = torch.zeros((n, slots, 2), dtype=ref.dtype if ref is not None else torch.float32)
    for r, row in enumerate(rows):
        at = 0
        for s, j in enumerate(row):
            ids, pos, br, tgt = segments[j]
            end = at + len(ids)
            input_ids[r, at:end] = torch.tensor(ids)
            position_ids[r, at:end] = torch.tensor(pos)
            branch[r, at:end] = torch.tensor(br)
            pair_of[r, at:end] = s
            for b, scored in enumerate(tgt):
                if scored:
                    where, tokens = zip(*scored)
                    targets[r, b, torch.tensor(where) + at] = torch.tensor(tokens)
                n_response[r, s, b] = len(scored)
            pair_index[r, s] = j
            if ref is not None:
                ref_slots[r, s] = ref[j]
            at = end
        position_ids[r, at:] = torch.arange(width - at)
    batch = {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": shared_pairs_mask(pair_of, branch),
             "targets": targets, "target_slot": pair_of, "pair_index": pair_index, "n_response": n_response,
             "n_targets": len(idx), "n_tokens": sum(lengths)}
    if ref is not None:
        batch["ref"] = ref_slots
    return batch


def attention_implementation(model: torch.nn.Module) -> str:
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) or "sdpa"


def shared_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """[rows, slots, 2] summed log-probs of each slot's chosen and rejected responses, in float32.
    Logits are computed only at the scoring positions (transformers' boolean logits_to_keep)."""
    mask = batch["attention_mask"]
    impl = attention_implementation(model)
    if impl == "eager":  # eager attention adds the mask: make it additive
        blocked = torch.finfo(torch.float32).min
        mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(~mask, blocked)
    elif impl != "sdpa":
        raise ValueError(f"align.prefix_sharing needs a 4D attention mask, which {impl} attention does not take: "
                         "set align.prefix_sharing=false")
    targets = batch["targets"]  # [rows, 2, width]
    keep = (targets != IGNORE).any(1)  # [rows, width]
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask,
                   use_cache=False, logits_to_keep=keep).logits
    if logits.dim() != 2 or logits.shape[0] != int(keep.sum()):
        raise RuntimeError(f"align.prefix_sharing: a boolean logits_to_keep gave logits of shape {tuple(logits.shape)}, "
                           f"not ({int(keep.sum())}, vocab): it needs a transformers whose models take one (5.24 does), "
                           "or align.prefix_sharing=false")
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    wanted = targets.transpose(1, 2)[keep]  # [scored positions, 2]
    logp = torch.gather(logits.log_softmax(-1), 1, wanted.clamp(min=0)) * (wanted != IGNORE)
    rows, slots = batch["pair_index"].shape
    slot = (torch.arange(rows, device=keep.device)[:, None] * slots + batch["target_slot"])[keep]
    return logp.new_zeros(rows * slots, 2).index_add(0, slot, logp).view(rows, slots, 2).float()


def pair_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Summed log-probs of the chosen and rejected responses, one forward pass: [pairs, 2] for
    pairs_batch, [rows, slots, 2] for shared_pairs_batch (empty slots where pair_index < 0)."""
    if "targets" in batch:
        return shared_logps(model, batch)
    ids, labels, mask = (batch[k].flatten(0, 1) for k in ("input_ids", "labels", "attention_mask"))
    return sequence_logps(model, ids, labels, mask).float().view(-1, 2)
