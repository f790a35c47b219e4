"""The filter's figures: confidence of kept and rejected traces, reasoning lengths."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from cotdistill.filter.summary import Summary


def plot_reasoning_lengths(summaries: Sequence[Summary], path: Path) -> bool:
    """Histogram of thinking tokens, correct vs wrong traces; False when there is nothing."""
    return _plot_correct_vs_wrong(
        summaries, "reasoning_tokens", path, xlabel="thinking tokens",
        title="Thinking length: correct vs wrong traces",
        bounds=lambda low, high: (0, high + 1))


def _plot_correct_vs_wrong(
    summaries: Sequence[Summary], attribute: str, path: Path, xlabel: str, title: str,
    bounds: Callable[[float, float], tuple[float, float]],
) -> bool:
    """Overlaid histograms of one per-trace figure for correct and wrong traces (the filter's
    report plots); `bounds` maps the data's (min, max) to the histogram's range. False when
    no trace has the figure."""
    def values_of(flag: bool) -> list[float]:
        return [getattr(s, attribute) for s in summaries
                if s.correct is flag and getattr(s, attribute) is not None]

    correct, wrong = values_of(True), values_of(False)
    if not correct and not wrong:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    span = bounds(min(correct + wrong), max(correct + wrong))
    for label, data in (("correct", correct), ("wrong", wrong)):
        if data:
            ax.hist(data, bins=30, range=span, alpha=0.6, label=f"{label} ({len(data)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("traces")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_confidence(summaries: Sequence[Summary], path: Path) -> bool:
    """Histogram of mean logprob, correct vs wrong traces; False when there is nothing to plot."""
    def bounds(low: float, high: float) -> tuple[float, float]:
        if high - low < 1e-6:  # one value only: give the single bar some width
            return low - 0.05, high + 0.05
        return low, high

    return _plot_correct_vs_wrong(
        summaries, "mean_logprob", path, xlabel="mean token logprob",
        title="Teacher confidence: correct vs wrong traces", bounds=bounds)
