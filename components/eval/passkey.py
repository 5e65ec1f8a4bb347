"""Passkey retrieval across context lengths (the position-interpolation paper's test, in miniature).

A 5-digit key is stated once inside filler text (held-out validation documents) at a depth from
0 (first) to 1 (just before the question), in prompts of a multiple of the trained context; the
model answers greedily; a cell's accuracy is the share of exact matches. Each condition loads the
model with its RoPE set for the target length, the way components/model does for `extend`: `none`
(RoPE as trained: extrapolation past the trained length), `linear` (position interpolation with no
fine-tuning), `dynamic` (NTK), `yarn`, and `extend` (the extend stage's model, PI plus a short
continued pretraining), when the run has one. Lengths count the whole sequence, prompt and answer
(one more token is generated, to see that no digit follows the key), so at 1x the key is read and
answered within the trained positions.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from components.model.build import max_positions, rope_parameters
from components.model.config import ModelConfig
from components.tasks.passkey import KEY_SENTENCE, QUESTION, answered, random_key
from components.train import adapters
from components.train.device import model_device

log = logging.getLogger(__name__)


def filler_tokens(tokenizer_dir: Path, tokenizer) -> np.ndarray:
    """The validation shard's documents, special tokens dropped, those with a planted key left out
    (their key would be a second, wrong answer in the filler)."""
    shards = Path(tokenizer_dir) / "shards"
    from components.train.data import load_shard

    tokens = np.asarray(load_shard(tokenizer_dir, "validation"), dtype=np.int64)
    index = shards / "validation.idx.npy"
    starts = list(np.load(index)) if index.is_file() else [0]
    special = np.array(sorted(set(tokenizer.all_special_ids)), dtype=np.int64)
    kept = []
    for begin, end in zip(starts, [*starts[1:], len(tokens)]):
        doc = tokens[begin:end]
        doc = doc[~np.isin(doc, special)]
        if len(doc) and "pass key" not in tokenizer.decode(doc.tolist()).lower():
            kept.append(doc)
    if not kept:
        raise ValueError(f"passkey: no filler text: the validation shard of {tokenizer_dir} has no document without a pass key")
    return np.concatenate(kept)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_ids(tokenizer, key: str) -> list[int]:
    """The key's tokens as they follow the question (what the model must generate)."""
    return _encode(tokenizer, f"{QUESTION} {key}")[len(_encode(tokenizer, QUESTION)) :]


def answer_length(tokenizer, key: str) -> int:
    return len(answer_ids(tokenizer, key))


def build_prompt(tokenizer, filler: np.ndarray, length: int, depth: float, key: str, rng: random.Random) -> tuple[list[int], int]:
    """(prompt ids, index of the key sentence's first token): BOS, filler with the key sentence after
    `depth` of it (moved to the nearest word start), the question; prompt + answer = `length` tokens."""
    key_ids, question = _encode(tokenizer, KEY_SENTENCE.format(key=key)), _encode(tokenizer, QUESTION)
    n_filler = length - 1 - len(key_ids) - len(question) - answer_length(tokenizer, key)
    if n_filler <= 0:
        raise ValueError(f"config error: eval.passkey_lengths: {length} tokens leave no room for filler (the key "
                         f"sentence, question and answer take {length - n_filler - 1}): use longer lengths")
    if len(filler) < n_filler + 1:
        filler = np.resize(filler, n_filler + 1)  # a short validation shard: repeat its text
    start = rng.randrange(len(filler) - n_filler + 1)
    span = filler[start : start + n_filler].tolist()
    at = round(depth * n_filler)
    word_starts = [i for i, piece in enumerate(tokenizer.convert_ids_to_tokens(span)) if piece.startswith("▁")]
    if 0 < at < n_filler and word_starts:
        at = min(word_starts, key=lambda i: abs(i - at))
    ids = [tokenizer.bos_token_id, *span[:at], *key_ids, *span[at:], *question]
    return ids, 1 + at


def load_with_rope(model_dir: Path, scaling: str, factor: float, original: int, device) -> torch.nn.Module:
    """The model with its RoPE set to `scaling` x factor from the `original` context, as
    components/model does for extend (none: as it was saved)."""
    config = AutoConfig.from_pretrained(model_dir)
    if scaling != "none":
        scaled = ModelConfig(rope_scaling=scaling, rope_factor=factor)
        config.rope_parameters = rope_parameters(scaled, config.rope_parameters["rope_theta"], original)
        config.max_position_embeddings = max_positions(scaled, original)
    return adapters.load_model(model_dir, config=config).to(device).eval()  # with its adapter where it does not merge


@torch.no_grad()
def greedy(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Greedy continuations of equal-length prompts (no padding needed)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = torch.tensor(prompts[i : i + batch_size], device=model_device(model))
        new = adapters.generate(model, ids, torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out += new[:, ids.shape[1] :].tolist()
    return out


def passkey_prompts(tokenizer, filler: np.ndarray, length: int, depths: list[float], trials: int,
                    seed: int) -> list[tuple[float, str, list[int]]]:
    """(depth, key, prompt ids), `trials` per depth. Keys and filler spans depend only on (seed,
    length, depth, trial): every condition and model answers the same prompts."""
    out = []
    for depth in depths:
        for trial in range(trials):
            rng = random.Random(f"{seed}:{length}:{depth}:{trial}")
            key = random_key(rng)
            out.append((depth, key, build_prompt(tokenizer, filler, length, depth, key, rng)[0]))
    return out


def accuracy_by_depth(model, tokenizer, filler: np.ndarray, length: int, depths: list[float], trials: int,
                      batch_size: int, seed: int) -> dict[str, float]:
    """{depth: share of exact greedy answers} over the `trials` prompts of each depth."""
    prompts = passkey_prompts(tokenizer, filler, length, depths, trials, seed)
    hits: dict[str, list[bool]] = {_label(d): [] for d in depths}
    for n in sorted({len(ids) for _, _, ids in prompts}):  # a key of another token count: a prompt one shorter
        rows = [p for p in prompts if len(p[2]) == n]
        budget = 1 + max(answer_length(tokenizer, key) for _, key, _ in rows)  # + 1: no digit may follow the key
        for (depth, key, _), answer in zip(rows, greedy(model, tokenizer, [ids for *_, ids in rows], budget, batch_size)):
            hits[_label(depth)].append(answered(tokenizer.decode(answer), tokenizer.decode(answer_ids(tokenizer, key))))
    return {cell: sum(h) / len(h) for cell, h in hits.items()}


def _label(x: float) -> str:
    return f"{x:g}"


def conditions_for(cfg, model_dir: Path, unscaled_dir: Path | None) -> list[tuple[str, Path]]:
    """(condition, model dir) pairs to measure. `unscaled_dir`: the pretrain model under an extend
    model (the RoPE conditions are measured on it, `extend` on model_dir). A model already trained
    with a RoPE scaling (sft after extend) is measured only as it is."""
    rope_type = (AutoConfig.from_pretrained(model_dir).rope_parameters or {}).get("rope_type", "default")
    base = unscaled_dir or model_dir
    pairs = []
    for condition in cfg.passkey_conditions:
        if condition == "extend":
            if unscaled_dir is not None:
                pairs.append((condition, model_dir))
        elif unscaled_dir is not None or rope_type == "default" or condition == "none":
            pairs.append((condition, base))
    skipped = [c for c in cfg.passkey_conditions if c not in {p[0] for p in pairs}]
    if skipped:
        log.info("NOTE: passkey on %s: %s not measured (%s)", model_dir, ", ".join(skipped),
                 "no extend model in this run" if rope_type == "default" else f"its RoPE is already {rope_type}")
    return pairs


def unscaled_source(stage_dir: Path) -> Path | None:
    """The pretrain model below an extend artifact (eval's base model when extend ran), else None."""
    manifest = json.loads((Path(stage_dir) / "manifest.json").read_text()) if (Path(stage_dir) / "manifest.json").is_file() else {}
    if manifest.get("stage") != "extend":
        return None
    return Path(manifest["inputs"]["pretrain"]["path"]) / "model"


@dataclass(frozen=True)
class PasskeyProbe:
    """What every model's test shares: the config, the filler, the trained context (the pretrain
    model's) and, when extend ran, the pretrain model under it."""

    cfg: Any  # EvalConfig
    filler: np.ndarray
    context: int
    unscaled_dir: Path | None

    @classmethod
    def from_inputs(cls, cfg, inputs: dict[str, Path]) -> PasskeyProbe:
        unscaled = unscaled_source(inputs["pretrain"])
        source = unscaled or Path(inputs["pretrain"]) / "model"
        filler = filler_tokens(inputs["tokenizer"], AutoTokenizer.from_pretrained(source))
        return cls(cfg, filler, AutoConfig.from_pretrained(source).max_position_embeddings, unscaled)

    def measure(self, model_dir: Path, tokenizer, with_extend: bool, device) -> dict:
        """metrics.json's `<model>.passkey`: {condition: {length: {depth: accuracy}}, n, context}.
        with_extend: model_dir is eval's base model (the extend model, when extend ran)."""
        cfg = self.cfg
        result: dict = {"n": cfg.passkey_trials, "context": self.context}
        unscaled = self.unscaled_dir if with_extend else None
        for condition, directory in conditions_for(cfg, model_dir, unscaled):
            result[condition] = {}
            for multiple in cfg.passkey_lengths:
                scaling = "none" if condition == "extend" else condition
                model = load_with_rope(directory, scaling, max(1.0, float(multiple)), self.context, device)
                result[condition][_label(multiple)] = accuracy_by_depth(
                    model, tokenizer, self.filler, round(multiple * self.context), cfg.passkey_depths,
                    cfg.passkey_trials, cfg.batch_size, cfg.seed)
                del model
            log.info("passkey %s, %s: %s", Path(model_dir).parent.name, condition,
                     {x: round(mean_accuracy(result, condition, x), 3) for x in result[condition]})
        return result


def mean_accuracy(passkey: dict, condition: str, length: str) -> float | None:
    cell = passkey.get(condition, {}).get(length)
    return sum(cell.values()) / len(cell) if cell else None


def flat_means(model: str, passkey: dict) -> dict[str, float]:
    """`<model>/passkey_<condition>_<length>x`: mean accuracy over depths (the run's flat metrics)."""
    return {f"{model}/passkey_{c}_{x}x": mean_accuracy(passkey, c, x)
            for c, grid in passkey.items() if isinstance(grid, dict) for x in grid}
