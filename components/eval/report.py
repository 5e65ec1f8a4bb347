"""The run's report: one renderer reading metrics and the stages' manifests and logs.

Stages record metrics, never prose; this module is the only place that turns them into
a report (STYLE rule 9). Missing manifests, keys or log files render as "n/a" or an
empty plot, never as an error.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from components.eval.decoding import describe  # noqa: E402
from components.eval.benchmarks import table as benchmark_table  # noqa: E402
from components.eval.html import render_html  # noqa: E402
from components.eval.metrics import difference_interval  # noqa: E402
from components.eval.passkey_report import passkey_section  # noqa: E402
from components.eval.reward_scores import reward_lines  # noqa: E402

STAGE_OF = {"base": "pretrain", "sft": "sft", "aligned": "align", "rl": "rl"}  # rl: when its stage ran
STARTED_FROM = {"sft": "base", "aligned": "sft", "rl": "sft"}  # each model against the one it was trained from
TRAINING_STAGES = ("pretrain", "sft", "align", "reward", "rl")


def _models(results: dict) -> list[str]:
    """The run's models, in stage order: base, sft, aligned, and rl when it ran."""
    return [name for name in STAGE_OF if name in results]
DATA_HEADLINE = ("docs_in", "docs_out", "train_docs", "validation_docs", "train_bytes", "quarantined",
                 "exact_dedup_dropped", "minhash_dropped")
TOKENIZER_HEADLINE = ("vocab_size", "bytes_per_token", "train_tokens", "validation_tokens")
PREFERENCE_DEFINITION = (
    "Preference accuracy: share of held-out pairs where sum log p(chosen | prompt) > "
    "sum log p(rejected | prompt), the sums running over the response tokens (answer content followed by "
    "`<|end|>`) and the prompt being the chat template with its generation prompt; ties count as wrong."
)


def read_manifest(path: Path | str | None) -> dict:
    file = Path(path or "") / "manifest.json"
    return json.loads(file.read_text()) if path and file.is_file() else {}


def _log_rows(path: Path | str | None) -> list[dict]:
    file = Path(path or "") / "log.jsonl"
    if not path or not file.is_file():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _code(text: str) -> str:
    """An answer shown verbatim in one markdown list item (code span on one line)."""
    return "`" + str(text).replace("`", "'").replace("\n", "\\n") + "`"


def _plot_losses(out_dir: Path, inputs: dict) -> str:
    stages = [s for s in TRAINING_STAGES if s in ("pretrain", "sft", "align") or s in inputs]
    fig, axes = plt.subplots(1, len(stages), figsize=(4.4 * len(stages), 3.5))
    for ax, stage in zip(axes, stages):
        rows = _log_rows(inputs.get(stage))
        train = [r for r in rows if "loss" in r and "step" in r]
        val = [r for r in rows if "val_loss" in r and "step" in r]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", color="C1", label="validation")
        ax.set_title(read_manifest(inputs.get(stage)).get("stage", stage))  # extend, when it stood in for pretrain
        ax.set_xlabel("step")
        if train or val:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no log.jsonl", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curves.png", dpi=90)
    plt.close(fig)
    return "loss_curves.png"


def _plot_accuracy(out_dir: Path, results: dict) -> str:
    names = _models(results)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, metric in enumerate(("task_accuracy", "preference_accuracy")):
        ax.bar([j + 0.38 * i for j in range(len(names))], [results[n][metric] for n in names], 0.38, label=metric)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")  # chance level of preference accuracy
    ax.set_xticks([j + 0.19 for j in range(len(names))], names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=90)
    plt.close(fig)
    return "accuracy.png"


def _with_ci(r: dict, metric: str) -> str:
    ci = r.get(f"{metric}_ci95")
    return _fmt(r[metric]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _headline(results: dict) -> list[str]:
    lines = ["| model | val_ppl | bits/byte | task_accuracy [95% CI] | preference_accuracy [95% CI] |",
             "|---|---|---|---|---|"]
    for name in _models(results):
        r = results[name]
        lines.append(f"| {name} | {_fmt(r['val_ppl'], 2)} | {_fmt(r.get('val_bits_per_byte'))} | "
                     f"{_with_ci(r, 'task_accuracy')} | {_with_ci(r, 'preference_accuracy')} |")
    lines.append(f"| unigram baseline | {_fmt(results['unigram_ppl'], 2)} | "
                 f"{_fmt(results.get('unigram_bits_per_byte'))} | | |")
    return lines


def _differences(results: dict) -> list[str]:
    """Each model against the one it was trained from: is the change larger than the noise of n items?"""
    n = results.get("n", {})
    lines = ["| change | task_accuracy | preference_accuracy |", "|---|---|---|"]
    for after in _models(results)[1:]:
        before, cells = STARTED_FROM[after], []
        for metric, count in (("task_accuracy", n.get("tasks")), ("preference_accuracy", n.get("pairs"))):
            if not count:
                cells.append("n/a")
                continue
            diff, half = difference_interval(results[before][metric], results[after][metric], count, count)
            verdict = "within noise" if abs(diff) <= half else ("better" if diff > 0 else "worse")
            cells.append(f"{diff:+.3f} ± {half:.3f} ({verdict})")
        lines.append(f"| {before} → {after} | " + " | ".join(cells) + " |")
    return lines


def _per_task(results: dict) -> list[str]:
    tasks = sorted({t for per in results["per_task"].values() for t in per})
    names = [n for n in _models(results) if n in results["per_task"]]
    lines = ["| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for task in tasks:
        lines.append(f"| {task} | " + " | ".join(_fmt(results["per_task"][n].get(task), 2) for n in names) + " |")
    return lines


def _summary(title: str, metrics: dict, headline: tuple) -> list[str]:
    """Headline keys first ("n/a" when missing), then whatever else the stage recorded."""
    lines = [f"### {title}", "", "| measure | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(metrics.get(k), 4)} |" for k in headline]
    lines += [f"| {k} | {_fmt(v, 4)} |" for k, v in sorted(metrics.items()) if k not in headline]
    return lines + [""]


def _training(inputs: dict) -> list[str]:
    lines = ["| stage | steps | final loss | val_loss | seconds | tokens/s |", "|---|---|---|---|---|---|"]
    for stage in [s for s in TRAINING_STAGES if s in ("pretrain", "sft", "align") or s in inputs]:
        manifest = read_manifest(inputs.get(stage))
        mt = manifest.get("metrics", {})
        lines.append(f"| {manifest.get('stage', stage)} | {_fmt(mt.get('steps'))} | {_fmt(mt.get('final_loss'), 4)} | "
                     f"{_fmt(mt.get('val_loss'), 4)} | {_fmt(mt.get('train_seconds'), 1)} | "
                     f"{_fmt(mt.get('tokens_per_second'), 0)} |")
    return lines


def _data_funnel(out_dir: Path, data: dict) -> list[str]:
    """Documents kept after each block, and the reasons behind the drops (from the data manifest)."""
    from components.data.report import plot_blocks

    lines = ["### Data funnel", ""]
    if plot_blocks(data, out_dir / "data_funnel.png"):
        lines += ["![documents kept after each block](data_funnel.png)", ""]
    reasons = [(n, block, reason) for block, per in data.get("drop_reasons", {}).items() for reason, n in per.items()]
    if reasons:
        lines += ["| block | reason | documents dropped |", "|---|---|---|"]
        lines += [f"| {block} | {reason} | {n} |" for n, block, reason in sorted(reasons, reverse=True)]
    return lines + [""] if len(lines) > 2 else []


def _decoding(results: dict) -> list[str]:
    """Task accuracy and pass@k per decoding strategy (eval.decoding), one row per model and strategy."""
    strategies = results.get("decoding_strategies", {})
    ks = sorted({k for name in _models(results) for d in results[name].get("decoding", {}).values() for k in d
                 if k.startswith("pass@")}, key=lambda k: int(k[5:]))
    lines = ["| model | strategy | GenerationConfig | n per task | task_accuracy [95% CI] | " + " | ".join(ks) + " |",
             "|---|---|---|---|---|" + "---|" * len(ks)]
    for name in _models(results):
        for strategy, d in results[name].get("decoding", {}).items():
            lines.append(f"| {name} | {strategy} | {describe(strategies.get(strategy, {}))} | {d['samples_per_task']} | "
                         f"{_with_ci(d, 'task_accuracy')} | " + " | ".join(_fmt(d.get(k)) for k in ks) + " |")
    return lines


def _samples(samples: dict) -> list[str]:
    lines = []
    for name, rows in samples.items():
        for row in rows:
            lines.append(f"- **{name}**: {row['prompt']}")
            lines += [f"  - {k}: {_code(v)}" for k, v in row.items() if k != "prompt"]
    return lines or ["(none requested: eval.num_samples = 0)"]


def _own_data(results: dict) -> list[str]:
    """The user's held-out data (metrics.json `<model>.sources`); nothing when no stage held any out."""
    scored = [name for name in _models(results) if results.get(name, {}).get("sources")]
    if not scored:
        return []

    def cell(value, n) -> str:
        return "n/a" if value is None else f"{value:.3f} (n={n})"

    lines = ["## Your held-out data", "",
             "Scored on the share of `sft.sources` / `align.sources` the sft and align stages held out by a hash of "
             "the prompt (never trained on; `heldout.jsonl` in their artifacts). SFT loss: mean NLL per assistant "
             "token under each model's chat template (lower is better). Preference accuracy: as defined above, on "
             "the held-out pairs. Examples or pairs longer than a model's context are not scored.", "",
             "| model | sft_loss | preference_accuracy |", "|---|---|---|"]
    for name in scored:
        s = results[name]["sources"]
        lines.append(f"| {name} | {cell(s.get('sft_loss'), s.get('sft_n'))} | "
                     f"{cell(s.get('preference_accuracy'), s.get('preference_n'))} |")
    return lines + [""]


def write_report(out_dir: Path, results: dict, samples: dict, inputs: dict) -> None:
    out_dir = Path(out_dir)
    lines = ["# Pipeline report", "", "## Models", "", *_headline(results), "",
             f"Perplexity: exp(mean next-token NLL) over {results['val_tokens']} validation tokens (fixed "
             "non-overlapping windows of the model's context). The unigram baseline uses add-one smoothed token "
             "frequencies of the training shard, scored on the same tokens. Bits per byte divide by the "
             "tokenizer's validation bytes per token. Task accuracy: exact match (whitespace stripped) of the first "
             "decoding strategy's (eval.decoding; greedy by default) answers to held-out generated instructions.", "", PREFERENCE_DEFINITION, "",
             "Intervals: 95% Wilson score intervals over the n items scored "
             f"({results.get('n', {}).get('tasks', 'n/a')} tasks, {results.get('n', {}).get('pairs', 'n/a')} pairs). "
             "A change between stages is called noise when it is within the 95% interval of the difference of two "
             "proportions (normal approximation).", "", *_differences(results), "",
             f"![loss curves]({_plot_losses(out_dir, inputs)})", "",
             f"![accuracy]({_plot_accuracy(out_dir, results)})", "",
             "## Accuracy per task", "", *_per_task(results), "", *_own_data(results),
             *reward_lines(results),
             "## Decoding strategies", "", "Exact match per strategy (eval.decoding). A sampling strategy draws n "
             "answers per task: its accuracy is their mean, pass@k the unbiased estimate of Chen et al. (2021) "
             "that one of k draws is right.", "", *_decoding(results), "",
             *benchmark_table(results, _models(results)),
             *passkey_section(out_dir, results, _models(results)),
             "## Data and tokenizer", "",
             *_data_funnel(out_dir, read_manifest(inputs.get("data")).get("metrics", {})),
             *_summary("Data", read_manifest(inputs.get("data")).get("metrics", {}), DATA_HEADLINE),
             *_summary("Tokenizer", read_manifest(inputs.get("tokenizer")).get("metrics", {}), TOKENIZER_HEADLINE),
             "## Training", "", *_training(inputs), "",
             "## Sample generations", "",
             "One answer per decoding strategy (" + "; ".join(
                 f"{k}: {describe(v)}" for k, v in results.get("decoding_strategies", {}).items())
             + "), each reseeded with eval.seed.", "",
             *_samples(samples)]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
    render_html(out_dir / "report.md")
