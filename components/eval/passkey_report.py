"""The passkey part of the eval report: a heat-map per model (one panel per condition) and a table."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONDITION_TITLES = {"none": "RoPE as trained", "linear": "linear PI (no fine-tune)", "dynamic": "dynamic NTK",
                    "yarn": "YaRN", "extend": "extend (PI + fine-tune)"}
DEFINITION = (
    "Passkey retrieval: a 5-digit key stated once in held-out filler text, at a depth from 0 (first) to 1 (just "
    "before the question), in a sequence (prompt + answer) of a multiple of the trained context; accuracy = exact "
    "match of the greedy answer, over n prompts per cell. Conditions set the model's RoPE for the target length "
    "(factor = the multiple): as trained (extrapolation), linear position interpolation without fine-tuning, "
    "dynamic NTK, YaRN; `extend` is the extend stage's model (PI plus a short continued pretraining).")


def conditions(passkey: dict) -> list[str]:
    return [c for c in passkey if isinstance(passkey[c], dict)]


def plot_heatmaps(passkey: dict, path: Path, title: str) -> bool:
    """One panel per condition: accuracy by length (x) and depth (y), the value written in each cell."""
    names = conditions(passkey)
    if not names:
        return False
    lengths = list(passkey[names[0]])
    depths = list(passkey[names[0]][lengths[0]])
    fig, axes = plt.subplots(1, len(names), figsize=(2.5 + (0.9 + 0.6 * len(lengths)) * len(names), 3.4), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes[0], names):
        grid = [[passkey[name][length][depth] for length in lengths] for depth in depths]
        image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for y, row in enumerate(grid):
            for x, value in enumerate(row):
                ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [f"{length}x" for length in lengths])
        ax.set_yticks(range(len(depths)), depths)
        ax.set_title(CONDITION_TITLES.get(name, name), fontsize=8)
    axes[0][0].set_ylabel("depth of the key")
    fig.supxlabel("length (x trained context)", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(f"{title}: passkey accuracy (n={passkey['n']} a cell, context {passkey['context']})", fontsize=10)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return True


def passkey_section(out_dir: Path, results: dict, models: list[str]) -> list[str]:
    """Markdown: per model, mean accuracy over depths per (condition, length), and its heat-map."""
    measured = [m for m in models if results.get(m, {}).get("passkey")]
    if not measured:
        return []
    lines = ["## Passkey retrieval", "", DEFINITION, ""]
    for model in measured:
        passkey = results[model]["passkey"]
        names = conditions(passkey)
        lengths = list(passkey[names[0]]) if names else []
        lines += [f"### {model}", "", "| condition | " + " | ".join(f"{x}x" for x in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for name in names:
            means = [sum(passkey[name][x].values()) / len(passkey[name][x]) for x in lengths]
            lines.append(f"| {CONDITION_TITLES.get(name, name)} | " + " | ".join(f"{v:.2f}" for v in means) + " |")
        if plot_heatmaps(passkey, Path(out_dir) / f"passkey_{model}.png", model):
            lines += ["", f"![passkey heat-map, {model}](passkey_{model}.png)"]
        lines.append("")
    return lines
