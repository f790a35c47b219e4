"""The filter's figures: confidence of kept and rejected traces, reasoning lengths, yield."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def plot_yield(report: dict[str, Any], path: Path) -> str | None:
    """solved@k / kept@k curves and the finished traces' lengths against max_tokens, from the
    report's `yield`; the file name, or None when there are no samples."""
    if not report or not report["samples"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, lengths) = plt.subplots(1, 2, figsize=(11, 4))
    for name, values in (("solved@k (with gold)", report["solved_at_k"]),
                         ("kept@k (all problems)", report["kept_at_k"])):
        if values:
            curve.plot(range(1, len(values) + 1), values, marker="o", label=name)
    curve.set_xlabel("samples per problem (k)")
    curve.set_ylabel("share of problems")
    curve.set_ylim(0, 1)
    per_k = report["kept_per_1k_tokens"]
    curve.set_title(f"{'?' if per_k is None else f'{per_k:.2f}'} kept per 1,000 teacher tokens")
    curve.xaxis.get_major_locator().set_params(integer=True)
    curve.legend()
    t = report["truncation"]
    if t["histogram"]:
        edges, counts = t["histogram"]["edges"], t["histogram"]["counts"]
        lengths.bar(edges[:-1], counts, width=edges[1] - edges[0], align="edge",
                    label=f"finished ({sum(counts)})")
    for limit in t["max_tokens"]:
        lengths.axvline(limit, color="red", linestyle="--",
                        label=f"max_tokens {limit}: {t['truncated']} cut")
    if t["suggested_max_tokens"] is not None:
        lengths.axvline(t["suggested_max_tokens"], color="green", linestyle=":",
                        label=f"cuts < 2 %: {t['suggested_max_tokens']}")
    lengths.set_xlabel("output tokens")
    lengths.set_ylabel("traces")
    lengths.set_title(f"length: {t['share']:.1%} truncated" if t["share"] is not None
                      else "length")
    lengths.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path).name
