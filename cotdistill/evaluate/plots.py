"""PNG plots for the evaluation report: accuracy with intervals, reliability, reasoning length.

matplotlib is imported inside the functions with the Agg backend, so no display is needed and
importing cotdistill stays instant.

    paths = write_plots(summary, {"teacher": samples, ...}, out_dir)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotdistill.infra.plotting import pyplot


def accuracy_plot(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """One bar per model with its bootstrap interval as an error bar."""
    plt = pyplot()
    names = list(models)
    values = [models[n]["accuracy"] or 0.0 for n in names]
    intervals = [models[n]["accuracy_ci"] for n in names]
    pairs = list(zip(values, intervals, strict=True))
    lows = [v - (ci[0] if ci[0] is not None else v) for v, ci in pairs]
    highs = [(ci[1] if ci[1] is not None else v) - v for v, ci in pairs]
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 2.5, 3.5))
    ax.bar(names, values, yerr=[lows, highs], capsize=6, color="#4c78a8")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (pass@1)")
    ax.set_title("Accuracy with bootstrap intervals")
    for x, v in enumerate(values):
        ax.text(x, min(v + 0.03, 0.95), f"{v:.2f}", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def reliability_plot(models: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy per confidence bin against the diagonal of perfect calibration."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for name, m in models.items():
        bins = [b for b in m.get("calibration_bins", []) if b["count"]]
        if not bins:
            continue
        ece = m.get("ece")
        label = f"{name} (ECE {ece:.3f})" if ece is not None else name
        ax.plot(
            [b["mean_confidence"] for b in bins], [b["accuracy"] for b in bins],
            marker="o", label=label,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence exp(mean logprob)")
    ax.set_ylabel("accuracy")
    ax.set_title("Reliability diagram")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def length_plot(lengths: dict[str, Sequence[int]], path: Path) -> Path:
    """Histogram of output tokens per sample, one panel per model on a shared axis."""
    plt = pyplot()
    names = list(lengths)
    fig, axes = plt.subplots(
        len(names), 1, figsize=(5.5, 1.6 * len(names) + 0.8), sharex=True, squeeze=False
    )
    top = max((max(v) for v in lengths.values() if v), default=1)
    for ax, name in zip(axes[:, 0], names, strict=True):
        ax.hist(lengths[name], bins=30, range=(0, top), color="#72b7b2")
        ax.set_ylabel(name, rotation=0, ha="right")
    axes[-1, 0].set_xlabel("reasoning tokens per sample")
    axes[0, 0].set_title("Reasoning length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(
    summary: dict[str, Any], lengths: dict[str, Sequence[int]], out: Path
) -> list[Path]:
    models = summary["models"]
    return [
        accuracy_plot(models, Path(out) / "accuracy.png"),
        reliability_plot(models, Path(out) / "reliability.png"),
        length_plot(lengths, Path(out) / "lengths.png"),
    ]
