"""The run's report: one renderer reading metrics and the stages' manifests and logs."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_OF = {"base": "pretrain", "sft": "sft", "aligned": "align"}


def _manifest(path: Path) -> dict:
    file = Path(path) / "manifest.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def _log_rows(path: Path) -> list[dict]:
    file = Path(path) / "log.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []


def _plot_losses(out_dir: Path, inputs: dict) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, stage in zip(axes, ("pretrain", "sft", "align")):
        rows = _log_rows(inputs[stage])
        ax.plot([r["step"] for r in rows if "loss" in r], [r["loss"] for r in rows if "loss" in r], label="train")
        val = [r for r in rows if "val_loss" in r]
        if val:
            ax.scatter([r["step"] for r in val], [r["val_loss"] for r in val], color="C1", label="validation", zorder=3)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.legend()
    axes[0].set_ylabel("loss")
    fig.tight_layout()
    fig.savefig(out_dir / "loss_curves.png", dpi=90)
    plt.close(fig)
    return "loss_curves.png"


def _plot_accuracy(out_dir: Path, results: dict) -> str:
    names = list(STAGE_OF)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for i, metric in enumerate(("task_accuracy", "preference_accuracy")):
        ax.bar([j + 0.38 * i for j in range(len(names))], [results[n][metric] for n in names], 0.38, label=metric)
    ax.set_xticks([j + 0.19 for j in range(len(names))], names)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "accuracy.png", dpi=90)
    plt.close(fig)
    return "accuracy.png"


def write_report(out_dir: Path, results: dict, samples: dict, inputs: dict) -> None:
    lines = ["# Pipeline report", "", "## Models", "",
             "| model | val_ppl | bits/byte | task_accuracy | preference_accuracy |", "|---|---|---|---|---|"]
    for name in STAGE_OF:
        r = results[name]
        lines.append(f"| {name} | {r['val_ppl']:.2f} | {r['val_bits_per_byte']:.3f} | {r['task_accuracy']:.3f} | "
                     f"{r['preference_accuracy']:.3f} |")
    lines += [f"| unigram baseline | {results['unigram_ppl']:.2f} | {results['unigram_bits_per_byte']:.3f} | | |", "",
              f"Perplexity on {results['val_tokens']} validation tokens. Task accuracy: exact match of greedy answers "
              "to held-out generated instructions. Preference accuracy: share of held-out pairs where the model gives "
              "the correct answer a higher log-probability than the plausible wrong one (summed over response tokens).",
              "", f"![loss curves]({_plot_losses(out_dir, inputs)})", "", f"![accuracy]({_plot_accuracy(out_dir, results)})",
              "", "## Accuracy per task", "", "| task | " + " | ".join(STAGE_OF) + " |", "|---|" + "---|" * len(STAGE_OF)]
    for task in results["per_task"]["base"]:
        lines.append(f"| {task} | " + " | ".join(f"{results['per_task'][n][task]:.2f}" for n in STAGE_OF) + " |")
    data = _manifest(inputs["data"]).get("metrics", {})
    tok = _manifest(inputs["tokenizer"]).get("metrics", {})
    lines += ["", "## Data and tokenizer", "", "| measure | value |", "|---|---|"]
    lines += [f"| data/{k} | {v} |" for k, v in data.items()]
    lines += [f"| tokenizer/{k} | {v} |" for k, v in tok.items()]
    lines += ["", "## Training", "", "| stage | steps | final loss | seconds | tokens/s |", "|---|---|---|---|---|"]
    for stage in ("pretrain", "sft", "align"):
        mt = _manifest(inputs[stage]).get("metrics", {})
        lines.append(f"| {stage} | {mt.get('steps', '')} | {mt.get('final_loss', float('nan')):.4f} | "
                     f"{mt.get('train_seconds', '')} | {mt.get('tokens_per_second', '')} |")
    lines += ["", "## Sample generations", ""]
    for name, rows in samples.items():
        for row in rows:
            lines.append(f"- **{name}** — {row['prompt']}")
            lines += [f"  - {k}: `{v}`" for k, v in row.items() if k != "prompt"]
    (out_dir / "report.md").write_text("\n".join(lines) + "\n")
