"""Eval stage: score base, sft and aligned models on the same held-out data; write metrics and report."""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from components.context import StageContext
from components.eval import benchmarks
from components.eval import metrics as m
from components.eval import passkey
from components.eval.config import EvalConfig
from components.eval.report import read_manifest, write_report
from components.eval.reward_scores import reward_scores
from components.eval.sources import heldout_sets, score_sources
from components.tasks import preference_pairs, sft_examples
from components.train import adapters, tracking
from components.train.device import default_device
from components.train.data import fixed_windows, load_shard

log = logging.getLogger(__name__)
MODELS = {"base": "pretrain", "sft": "sft", "aligned": "align", "rl": "rl"}  # model name -> stage whose model/ it is


def run_models(inputs: dict) -> dict[str, str]:
    """The models of this run: rl only when its stage ran (an optional input, components/stages.py)."""
    return {name: stage for name, stage in MODELS.items() if stage in inputs}


def _bits_per_byte(ppl: float, bytes_per_token: float | None) -> float | None:
    return math.log2(ppl) / bytes_per_token if bytes_per_token else None


def run(cfg: EvalConfig, inputs: dict[str, Path], ctx: StageContext) -> dict:
    out_dir = ctx.out_dir
    torch.manual_seed(cfg.seed)
    tasks = sft_examples("heldout", cfg.num_tasks, cfg.seed)
    pairs = preference_pairs("heldout", cfg.num_pairs, cfg.seed)
    validation = load_shard(inputs["tokenizer"], "validation")
    own_examples, own_pairs = heldout_sets(inputs)  # the user's held-out data, from the sft / align artifacts
    results: dict = {}
    samples, answers = {}, {}
    where = default_device()  # the GPU when there is one
    log.info("eval on %s", where)
    probe = passkey.PasskeyProbe.from_inputs(cfg, inputs) if cfg.passkey_trials else None
    models = run_models(inputs)
    for name, stage in models.items():
        start = time.perf_counter()
        model_dir = Path(inputs[stage]) / "model"
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = adapters.load_model(model_dir).to(where).eval()  # with its adapter where the method does not merge
        windows = fixed_windows(validation, model.config.max_position_embeddings, cfg.max_val_tokens)
        if "unigram_ppl" not in results:  # on the base model's windows: the same targets it is scored on
            results["unigram_ppl"] = m.unigram_ppl(load_shard(inputs["tokenizer"], "train"), windows, len(tokenizer))
            results["val_tokens"] = int(windows[:, 1:].numel())
        decoding, per_task, answers[name] = m.decoding_accuracy(model, tokenizer, tasks, cfg)  # the first strategy's
        acc = decoding[next(iter(cfg.decoding))]["task_accuracy"]  # the first (greedy by default): the headline
        pref = m.preference_accuracy(model, tokenizer, pairs, cfg.batch_size)
        results[name] = {
            "val_ppl": m.val_ppl(model, windows, cfg.batch_size),
            "task_accuracy": acc,
            "task_accuracy_ci95": m.wilson_interval(acc, len(tasks)),
            "preference_accuracy": pref,
            "preference_accuracy_ci95": m.wilson_interval(pref, len(pairs)),
            "decoding": decoding,
            **({"passkey": probe.measure(model_dir, tokenizer, with_extend=name == "base", device=where)} if probe else {}),
        }
        results[name]["sources"] = score_sources(model, tokenizer, own_examples, own_pairs, cfg.batch_size)  # {}: none
        results.setdefault("per_task", {})[name] = per_task
        samples[name] = m.samples(model, tokenizer, [t["messages"][:1] for t in tasks[: cfg.num_samples]],
                                  cfg.max_new_tokens, cfg.seed, cfg.decoding)
        log.info("eval %s (%.1fs): %s", name, time.perf_counter() - start,
                 {k: round(v, 4) for k, v in results[name].items() if isinstance(v, float)})
        del model
    results["reward_model"] = reward_scores(inputs.get("reward"), tasks, answers, cfg.batch_size, where)  # {}: none
    for name, value in results["reward_model"].get("mean_reward", {}).items():
        if name in results:
            results[name]["mean_reward"] = value  # flat as <model>/mean_reward
    benchmarks.add_scores(results, cfg, inputs, models, out_dir, ctx.key, str(where))  # results[<model>]["benchmarks"]
    # per byte, perplexities compare across tokenizers (a smaller vocab makes a weaker unigram per token)
    bytes_per_token = read_manifest(inputs["tokenizer"]).get("metrics", {}).get("bytes_per_token")
    if not bytes_per_token:
        log.warning("tokenizer manifest has no bytes_per_token: bits per byte left out")
    results["n"], results["decoding_strategies"] = {"tasks": len(tasks), "pairs": len(pairs)}, cfg.decoding
    results["unigram_bits_per_byte"] = _bits_per_byte(results["unigram_ppl"], bytes_per_token)
    for name in models:
        results[name]["val_bits_per_byte"] = _bits_per_byte(results[name]["val_ppl"], bytes_per_token)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    write_report(out_dir, results, samples, inputs)
    return _track(ctx, cfg, results, samples, out_dir, models)


def _track(ctx: StageContext, cfg: EvalConfig, results: dict, samples: dict, out_dir: Path,
           models: dict[str, str]) -> dict:
    """Log the flat metrics, plots and tables to the tracker; the flat metrics are the stage's result."""
    flat = {k: results[k] for k in ("unigram_ppl", "unigram_bits_per_byte", "val_tokens")}
    for name in models:
        flat.update({f"{name}/{k}": v for k, v in results[name].items() if isinstance(v, (int, float))})
        flat.update({f"{name}/benchmarks/{b}": r["value"] for b, r in results[name].get("benchmarks", {}).items()
                     if r["value"] is not None})
        flat.update(passkey.flat_means(name, results[name].get("passkey", {})))
    flat = {k: v for k, v in flat.items() if v is not None}
    per_task_rows = [[task, *(results["per_task"][name].get(task) for name in models)]
                     for task in sorted({t for per in results["per_task"].values() for t in per})]
    sample_rows = [[name, row["prompt"], strategy, answer] for name, rows in samples.items() for row in rows
                   for strategy, answer in row.items() if strategy != "prompt"]
    tracking.start(ctx, cfg).finish(
        flat, {name: out_dir / f"{name}.png" for name in ("loss_curves", "accuracy", *(f"passkey_{m}" for m in models))},
        tables={"per_task_accuracy": (["task", *models], per_task_rows),
                "samples": (["model", "prompt", "strategy", "answer"], sample_rows)})
    return flat
