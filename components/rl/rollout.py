"""Rollouts: G sampled answers per task prompt through the model's `generate` (the GenerationConfig of
components/chat/generate.py), rewarded by the task's checker (1/0) or the reward model (components/rl/scores.py),
laid out for the GRPO loss."""
from __future__ import annotations

import contextlib
import time

import torch

from components.chat.batches import epoch_indices
from components.chat.generate import cut_answer, generation_config
from components.chat.template import end_of_turn
from components.rl.grpo import group_advantages, token_logps
from components.rl.scores import checker_score
from components.train import adapters
from components.train.device import model_device


def stop_ids(config) -> set[int]:
    eos = config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def answer_tokens(row: torch.Tensor, stops: set[int]) -> list[int]:
    """The generated tokens up to and including the first stop (a turn's end or eos); all of them if none."""
    ids = row.tolist()
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    return ids


@torch.no_grad()
def sample_answers(model, tokenizer, examples: list[dict], cfg, seed: int,
                   autocast=contextlib.nullcontext) -> tuple[list[list[int]], list[list[int]], list[str], float]:
    """(prompt ids per answer, answer ids per answer, answer texts, seconds): cfg.group_size sampled answers
    per example, each example's in a row. Seeded by `seed` alone: a resumed run draws what it would have drawn.
    Sampled under the training precision's autocast: the policy that is scored is the one that sampled."""
    model.eval()
    tokenizer.padding_side = "left"
    config = generation_config(model, tokenizer, cfg.max_new_tokens, do_sample=True, temperature=cfg.temperature,
                               top_k=cfg.top_k, top_p=1.0, num_return_sequences=cfg.group_size)
    texts = [tokenizer.apply_chat_template(ex["messages"][:-1], tokenize=False, add_generation_prompt=True)
             for ex in examples]
    enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt",
                    return_token_type_ids=False).to(model_device(model))
    torch.manual_seed(seed)
    start = time.perf_counter()
    with autocast():
        out = adapters.generate(model, enc["input_ids"], enc["attention_mask"], generation_config=config).cpu()
    seconds = time.perf_counter() - start
    width, stops, end = enc["input_ids"].shape[1], stop_ids(config), end_of_turn(tokenizer)
    prompts = [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"].cpu(), enc["attention_mask"].cpu())]
    prompt_ids, answer_ids, answers = [], [], []
    for row_index, row in enumerate(out[:, width:]):
        answer = answer_tokens(row, stops)
        prompt_ids.append(prompts[row_index // cfg.group_size])
        answer_ids.append(answer)
        answers.append(cut_answer(tokenizer, tokenizer.decode(answer, skip_special_tokens=False), end))
    return prompt_ids, answer_ids, answers, seconds


def rollout_batch(prompt_ids: list[list[int]], answer_ids: list[list[int]], rewards: list[float], cfg,
                  pad_id: int) -> dict:
    """Right-padded prompt + answer rows; completion_mask [B, L-1] marks the targets that are answer tokens."""
    width = max(len(p) + len(a) for p, a in zip(prompt_ids, answer_ids))
    n = len(prompt_ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width - 1), dtype=torch.bool)
    for i, (prompt, answer) in enumerate(zip(prompt_ids, answer_ids)):
        input_ids[i, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        attention_mask[i, : len(prompt) + len(answer)] = 1
        completion_mask[i, len(prompt) - 1 : len(prompt) - 1 + len(answer)] = True  # target t is token t+1
    reward = torch.tensor(rewards)
    n_answer_tokens = int(completion_mask.sum())
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "rewards": reward, "advantages": group_advantages(reward, cfg.group_size, cfg.scale_rewards),
            "n_targets": n if cfg.loss == "grpo" else n_answer_tokens, "n_tokens": int(attention_mask.sum())}


def sample_groups(model, tokenizer, examples: list[dict], cfg, seed: int, autocast, score,
                  more=None) -> tuple[list[list[int]], list[list[int]], list[float], float, int, float]:
    """(prompt ids, answer ids and reward per answer; sampling seconds, prompts sampled, share of them whose
    group had no signal). score(answers, examples) rewards each draw's answers at once (a reward model scores
    them in batches). With cfg.dynamic_sampling = R (DAPO's dynamic sampling), while fewer than
    len(examples) groups disagree (a group of equal rewards has zero advantages: no gradient), up to R more
    draws of prompts, more(r); the batch keeps len(examples) groups, those that disagree first."""
    size, rounds = cfg.group_size, cfg.dynamic_sampling
    groups, seconds, drawn = [], 0.0, 0
    for r in range(rounds + 1):
        batch_examples = examples if r == 0 else more(r)
        prompt_ids, answer_ids, answers, spent = sample_answers(model, tokenizer, batch_examples, cfg,
                                                                seed if r == 0 else seed * 1_000 + r, autocast)
        seconds, drawn = seconds + spent, drawn + len(batch_examples)
        rewards = score(answers, [ex for ex in batch_examples for _ in range(size)])
        for i in range(len(batch_examples)):
            rows = slice(i * size, (i + 1) * size)
            groups.append((prompt_ids[i * size], answer_ids[rows], rewards[rows]))
        if sum(not flat(g) for g in groups) >= len(examples):
            break
    flat_share = sum(map(flat, groups)) / len(groups)
    if rounds:  # a stable sort: the groups that disagree first, each kind in the order drawn
        groups = sorted(groups, key=flat)[: len(examples)]
    return ([g[0] for g in groups for _ in range(size)], [a for g in groups for a in g[1]],
            [x for g in groups for x in g[2]], seconds, drawn, flat_share)


def flat(group: tuple) -> bool:
    """A group whose answers all got the same reward: zero advantages, no gradient."""
    return len(set(group[2])) == 1


def make_rollouts(model, reference, tokenizer, examples: list[dict], cfg, seed: int, autocast,
                  score=checker_score, more=None) -> dict:
    """One global micro-batch of rollouts with the reference's per-token log-probs and the step's rollout
    figures (mean reward, share of groups with no signal, answer length, rollout tokens/s; with
    dynamic sampling, the prompts sampled and the share of their groups that had no signal)."""
    prompt_ids, answer_ids, rewards, seconds, drawn, flat_share = sample_groups(model, tokenizer, examples, cfg, seed,
                                                                          autocast, score, more)
    batch = rollout_batch(prompt_ids, answer_ids, rewards, cfg, tokenizer.pad_token_id)
    if cfg.beta:
        with torch.no_grad(), autocast():
            where = model_device(reference)
            batch["ref_logps"] = token_logps(reference, batch["input_ids"].to(where), batch["attention_mask"].to(where),
                                             cfg.temperature).float().cpu()
    grouped = batch["rewards"].view(-1, cfg.group_size)
    n_generated = sum(len(a) for a in answer_ids)
    batch["stats"] = {"reward_mean": float(grouped.mean()),
                      "groups_without_signal": float((grouped.std(1) == 0).float().mean()),
                      "answer_tokens_mean": n_generated / len(answer_ids),
                      "rollout_tokens": n_generated, "rollout_seconds": seconds}
    if cfg.dynamic_sampling:
        batch["stats"] |= {"prompts_sampled": drawn, "sampled_groups_without_signal": flat_share}
    return batch


def positional_source(prompts: list[dict], cfg, make_batch, pick=None):
    """The loop's batch_fn for rollouts: the micro-batch at a position draws its prompts and its sampling seed
    from the position alone (so a resumed run samples what the uninterrupted one would have);
    make_batch(examples, seed) samples and scores them with the current policy. With
    cfg.updates_per_rollout = U > 1 (ppo's epochs x minibatches), U optimizer steps share each rollout
    batch, sampled at the first of them: step s trains on pick(rollout, s % U, seed)."""
    updates = getattr(cfg, "updates_per_rollout", 1)
    cache: dict = {}  # the current rollouts (the loop asks for step 0's first batch twice: sampled once)

    def batch_fn(step: int, micro: int) -> dict:
        phase, update = divmod(step, updates)
        position = phase * cfg.grad_accum + micro
        seed = cfg.seed * 1_000_003 + position
        if position not in cache:
            for old in [p for p in cache if p < phase * cfg.grad_accum]:
                del cache[old]
            idx = epoch_indices(len(prompts), cfg.batch_size, cfg.seed, position)
            cache[position] = make_batch([prompts[i] for i in idx], seed)
        return cache[position] if updates == 1 else pick(cache[position], update, seed)

    return batch_fn
