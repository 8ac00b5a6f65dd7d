"""PNG pictures of training: learning curves of one run, or of several runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on training machines
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out: Path) -> None:
    """Training loss and validation KL per epoch, one line per fold (stages run on one epoch axis)."""
    plot_runs({Path(metrics_path).parent.name: read_metrics(metrics_path)}, out)


def plot_runs(runs: dict[str, list[dict]], out: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    for run_index, (name, records) in enumerate(runs.items()):
        color = f"C{run_index % 10}"
        for fold in sorted({r["fold"] for r in records}):
            rows = [r for r in records if r["fold"] == fold]
            x = list(range(1, len(rows) + 1))
            label = f"{name} fold {fold}" if len(runs) > 1 else f"fold {fold}"
            style = dict(color=color if len(runs) > 1 else f"C{fold % 10}", alpha=0.9, marker=".")
            axes[0].plot(x, [r["train_loss"] for r in rows], label=label, **style)
            axes[1].plot(x, [r["val_kl"] for r in rows], label=label, **style)
            axes[2].plot(x, [r["val_kl_10plus"] for r in rows], label=label, **style)
            stage2 = next((i for i, r in enumerate(rows) if r["stage"] == "stage2"), None)
            if stage2 is not None:
                for ax in axes:
                    ax.axvline(stage2 + 0.5, color="grey", linestyle=":", linewidth=1)
    titles = ("training loss", "validation KL (all rows)", "validation KL (>= 10 votes)")
    for ax, title in zip(axes, titles):
        ax.set_title(title)
        ax.set_xlabel("epoch (dotted: stage 2 starts)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(out, dpi=90)
    plt.close(fig)
