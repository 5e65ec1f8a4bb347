"""Standard benchmarks scored by lm-evaluation-harness itself, offline, on each model of the run.

Nothing here scores: each task is the harness's own task definition (its yaml `include`d, so
its prompts, choices, filters and metrics are the harness's), with only the data source
replaced by local files (`dataset_path: json|parquet|csv`, `data_files`), and
`lm_eval.simple_evaluate` runs it on an `HFLM` built from the exported model directory, the
same object `lm_eval --model hf --model_args pretrained=<dir>` builds. The task yamls are
written into the artifact (`benchmarks/tasks/`), so the command line reruns them on any
exported model: see docs/readme-lmeval.md.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
from pathlib import Path

import yaml

from components.eval.benchmark_data import GENERATORS
from components.eval.benchmark_specs import EMBEDDED_MAX_GEN_TOKS, SHAPES, BenchmarkSpec
from components.eval.config import EvalConfig
from components.train import adapters

log = logging.getLogger(__name__)
TASKS_DIR = "benchmarks/tasks"  # in the eval artifact: the yamls, for `lm_eval --include_path`
DATA_DIR = "benchmarks/data"  # in the eval artifact: the embedded sets
# the embedded generation set's answers are one line and a `#### n` line: a short budget, and the
# end of an sft/aligned model's turn ends an answer too
EMBEDDED_GENERATION = {"until": ["Question:", "</s>", "<|end|>", "\n\n"], "do_sample": False,
                       "temperature": 0.0, "max_gen_toks": EMBEDDED_MAX_GEN_TOKS}
# the embedded cloze set keeps lambada's accuracy only: the bootstrapped stderr of its last-word
# perplexity costs more than the scoring (eval's val_ppl measures perplexity)
EMBEDDED_CLOZE_METRICS = [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]


def harness_tasks_dir() -> Path:
    """lm_eval's bundled task definitions, found without importing lm_eval (~4 s)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("eval.benchmarks needs lm-eval (pip install lm-eval==0.4.13, as `make setup` does)")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def final_dir(out_dir: Path, key: str) -> Path:
    """Where the artifact will be once built (components.artifacts builds `<stage>/<key>` in `<stage>/.<key>.partial`)."""
    return out_dir.parent / key if out_dir.name == f".{key}.partial" else out_dir


def task_config(spec: BenchmarkSpec, files: list[Path], file_type: str) -> dict:
    """The harness's task for this shape, reading `files` (and `spec.fewshot_files`) instead of the hub."""
    data_files = {"test": [str(p) for p in files]}
    if spec.fewshot_files:
        data_files["fewshot"] = [str(p) for p in spec.fewshot_files]
    config = {
        "include": str(harness_tasks_dir() / SHAPES[spec.task].harness_yaml), "task": spec.name, "tag": [],
        "dataset_path": file_type, "dataset_name": None, "dataset_kwargs": {"data_files": data_files},
        "training_split": None, "validation_split": None, "test_split": "test",
        "fewshot_split": "fewshot" if spec.fewshot_files else "test", "num_fewshot": spec.num_fewshot,
    }
    if spec.embedded == "generation":
        config["generation_kwargs"] = dict(EMBEDDED_GENERATION)
    if spec.max_gen_toks:  # the harness's own generation settings, with this budget
        from lm_eval.tasks._yaml_loader import load_yaml

        own = config.get("generation_kwargs") or load_yaml(config["include"], resolve_func=False)["generation_kwargs"]
        config["generation_kwargs"] = {**own, "max_gen_toks": spec.max_gen_toks}
    if spec.embedded == "cloze":
        config["metric_list"] = EMBEDDED_CLOZE_METRICS
    return config


def write_tasks(cfg: EvalConfig, out_dir: Path, data_root: Path, tasks_dir: Path) -> None:
    """The embedded sets into out_dir/benchmarks/data (once), and every standard-shape task's yaml into
    tasks_dir, naming the embedded data under data_root (out_dir now, or where the artifact will be)."""
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for spec in cfg.benchmark_specs:
        if spec.task == "yaml":
            continue  # the user's own file runs from its own directory
        files, file_type = list(spec.files), spec.file_type
        if spec.embedded:
            data = out_dir / DATA_DIR / f"{spec.name}.jsonl"
            if not data.exists():
                data.parent.mkdir(parents=True, exist_ok=True)
                rows = GENERATORS[spec.embedded](cfg.benchmark_items, cfg.seed)
                data.write_text("".join(json.dumps(row) + "\n" for row in rows))
            files, file_type = [data_root / DATA_DIR / data.name], "json"
        text = yaml.safe_dump(task_config(spec, files, file_type), sort_keys=False)
        (tasks_dir / f"{spec.name}.yaml").write_text(f"# {spec.key}: written by components/eval/benchmarks.py\n{text}")


def _metrics(row: dict) -> tuple[dict, dict]:
    """lm_eval's per-task results {"acc,none": v, "acc_stderr,none": s, ...} -> ({metric,filter: v}, {.. : s})."""
    values, stderrs = {}, {}
    for key, value in row.items():
        metric, sep, filt = key.partition(",")
        if not sep:
            continue  # alias, name, sample_len
        if metric.endswith("_stderr"):
            stderrs[f"{metric.removesuffix('_stderr')},{filt}"] = value if isinstance(value, (int, float)) else None
        else:
            values[key] = value
    return values, stderrs


def _headline(spec: BenchmarkSpec, values: dict) -> str:
    wanted = spec.metric or (SHAPES[spec.task].metric if spec.task in SHAPES else None)
    if wanted is None:
        return next(iter(values))
    if wanted in values:
        return wanted
    found = [k for k in values if k.partition(",")[0] == wanted]
    if not found:
        raise ValueError(f"{spec.key}.metric={wanted!r}: lm_eval reported {sorted(values)} for {spec.name}")
    return found[0]


def summarize(spec: BenchmarkSpec, out: dict, task: str) -> dict:
    """metrics.json's `<model>.benchmarks.<name>`: the headline metric, its stderr, n, shots, and every metric."""
    values, stderrs = _metrics(out["results"][task])
    metric = _headline(spec, values)
    return {"metric": metric, "value": values[metric], "stderr": stderrs.get(metric),
            "n": out["n-samples"][task]["effective"], "num_fewshot": out.get("n-shot", {}).get(task, spec.num_fewshot),
            "task": spec.task if spec.task != "yaml" else str(spec.task_yaml), "all": values}


def score_model(cfg: EvalConfig, tasks_dir: Path, model_dir: Path, device: str, chat_template: bool,
                label: str = "") -> dict:
    """Every benchmark on the exported model in model_dir: {name: summarize(...)}."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    # as `--model_args pretrained=<dir>,dtype=float32` builds it (float32: the dtype eval scores in)
    lm = HFLM(pretrained=str(model_dir), device=device, dtype="float32", batch_size=cfg.batch_size,
              peft=adapters.harness_adapter(model_dir))  # the adapter of a method that does not merge
    for spec in cfg.benchmark_specs:  # fail before scoring anything, naming the entry (lm_eval would assert later)
        if (spec.generation_budget or 0) >= lm.max_length:
            raise ValueError(f"config error: {spec.key}.max_gen_toks={spec.max_gen_toks!r}: {spec.name} generates up "
                             f"to {spec.generation_budget} tokens, but {model_dir} has a context of {lm.max_length}: "
                             f"set {spec.key}.max_gen_toks below it (e.g. {lm.max_length // 2})")
    managers: dict[Path, TaskManager] = {}
    scores = {}
    prefix = adapters.unmerged_method(model_dir) == "PREFIX_TUNING"
    for spec in cfg.benchmark_specs:
        if prefix and spec.generates:  # recorded with its reason, not scored wrong
            reason = ("not scored: the harness generates through peft's own generate, which answers as the base model "
                      "for a prefix adapter (peft 0.21 under transformers 5; README, PEFT methods)")
            scores[spec.name] = {"metric": spec.metric, "value": None, "stderr": None, "n": 0, "skipped": reason,
                                 "num_fewshot": spec.num_fewshot, "task": spec.task if spec.task != "yaml" else str(spec.task_yaml)}
            log.warning("benchmark %s on %s: %s", spec.name, label or model_dir, reason)
            continue
        include = spec.task_yaml.parent if spec.task_yaml else tasks_dir
        if include not in managers:  # only these tasks are indexed: the ~4,000 bundled ones take ~10 s
            managers[include] = TaskManager(include_path=str(include), include_defaults=False)
        task = spec.harness_task or spec.name
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[task], num_fewshot=spec.num_fewshot, limit=spec.limit, task_manager=managers[include],
            log_samples=False, apply_chat_template=chat_template, fewshot_as_multiturn=chat_template)
        scores[spec.name] = summarize(spec, out, task)
        log.info("benchmark %s on %s: %s %.4f (n=%d)", spec.name, label or model_dir,
                 scores[spec.name]["metric"], scores[spec.name]["value"], scores[spec.name]["n"])
    return scores


def prepare(cfg: EvalConfig, out_dir: Path, key: str) -> tuple[Path, tempfile.TemporaryDirectory | None]:
    """The task yamls the run reads (naming this build's files) and those the artifact keeps for the
    command line (naming where the artifact will be). Returns the run's tasks dir and what to clean up."""
    final = final_dir(out_dir, key)
    write_tasks(cfg, out_dir, final, out_dir / TASKS_DIR)
    if final == out_dir:
        return out_dir / TASKS_DIR, None
    scratch = tempfile.TemporaryDirectory(prefix="benchmark-tasks-")
    write_tasks(cfg, out_dir, out_dir, Path(scratch.name))
    return Path(scratch.name), scratch


def add_scores(results: dict, cfg: EvalConfig, inputs: dict, models: dict[str, str], out_dir: Path, key: str,
               device: str) -> None:
    """results[<model>]["benchmarks"] = its scores, for the run's models ({name: stage whose model/ it is});
    nothing when eval.benchmarks is empty.

    Chat template (eval.benchmark_chat_template): never for base, which was not trained on one; for
    sft and aligned only when asked, because by default every model reads the same prompts (the
    harness's plain-text ones), so a difference between stages is the model's, not the prompt's."""
    if not cfg.benchmark_specs:
        return
    tasks_dir, scratch = prepare(cfg, out_dir, key)
    try:
        for name, stage in models.items():
            chat_template = cfg.benchmark_chat_template and name != "base"
            model_dir = Path(inputs[stage]) / "model"
            results[name]["benchmarks"] = score_model(cfg, tasks_dir, model_dir, device, chat_template, name)
    finally:
        if scratch is not None:
            scratch.cleanup()


def table(results: dict, models: list[str]) -> list[str]:
    """The report's benchmark section (markdown lines); empty when no benchmark ran."""
    names = list(dict.fromkeys(b for m in models for b in results.get(m, {}).get("benchmarks", {})))  # config order
    if not names:
        return []
    lines = ["## Benchmarks (lm-evaluation-harness)", "",
             "Scored by lm-evaluation-harness with its own task definitions on local files; value ± stderr "
             "as the harness reports them. The embedded sets are generated (eval.benchmark_items items each): "
             "cloze = last-word accuracy, choice = 4 options (chance 0.25), arithmetic = exact match of `#### n`.",
             "", "| benchmark | task | metric | n | shots | " + " | ".join(models) + " |",
             "|---|---|---|---|---|" + "---|" * len(models)]
    for name in names:
        rows = [results.get(m, {}).get("benchmarks", {}).get(name) for m in models]
        first = next(r for r in rows if r)
        cells = ["not scored" if r and r["value"] is None else f"{r['value']:.3f} ± {r['stderr']:.3f}"
                 if r and r["stderr"] is not None else (f"{r['value']:.3f}" if r else "n/a") for r in rows]
        lines.append(f"| {name} | {Path(first['task']).name} | {first['metric']} | {first['n']} | "
                     f"{first['num_fewshot']} | " + " | ".join(cells) + " |")
    return lines + [""]
