"""PNG figures for the failure-mode and per-capability sections (matplotlib, Agg backend,
imported inside the functions so importing cotdistill stays instant).

    failure_plot(failure_table, out / "failures.png")
    category_plot(category_table, "teacher", out / "categories.png")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cotdistill.evaluate.measures.failures import CAUSES
from cotdistill.infra.plotting import pyplot

CAUSE_COLORS = {
    "correct": "#54a24b",
    "wrong_answer": "#e45756",
    "no_answer": "#b279a2",
    "repeated": "#f58518",
    "token_limit": "#9d755d",
}


def failure_plot(table: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """One stacked bar per model: share of samples per cause (they add up to 1)."""
    plt = pyplot()
    names = list(table)
    fig, ax = plt.subplots(figsize=(1.4 * len(names) + 3.5, 3.8))
    bottoms = [0.0] * len(names)
    for cause in CAUSES:
        shares = [table[n]["causes"][cause] / max(table[n]["samples"], 1) for n in names]
        ax.bar(names, shares, bottom=bottoms, color=CAUSE_COLORS[cause],
               label=cause.replace("_", " "))
        bottoms = [b + s for b, s in zip(bottoms, shares, strict=True)]
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of samples")
    ax.set_title("Outcome per sample (first cause that applies)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def category_plot(table: Mapping[str, Any], reference: str, path: Path) -> Path | None:
    """Retention per category for each student with its interval, and the collapse line."""
    rows = table.get("categories") or []
    students = [n for n in (rows[0]["models"] if rows else {}) if n != reference]
    if not students:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(rows) * len(students) + 2.5), 3.8))
    width = 0.8 / len(students)
    for k, name in enumerate(students):
        xs, values, lows, highs = [], [], [], []
        for i, row in enumerate(rows):
            ret = row["models"][name]["retention"]
            if not ret or ret["value"] is None:
                # The reference solved nothing here: no ratio, say so instead of a silent gap.
                ax.text(i + (k - (len(students) - 1) / 2) * width, 0.02, "n/a", ha="center",
                        fontsize=7, color="grey")
                continue
            value = ret["value"]
            xs.append(i + (k - (len(students) - 1) / 2) * width)
            values.append(value)
            lows.append(value - ret["low"] if ret["low"] is not None else 0.0)
            highs.append(ret["high"] - value if ret["high"] is not None else 0.0)
        ax.bar(xs, values, width=width, yerr=[lows, highs], capsize=4, label=name)
    ax.axhline(table["collapse_below"], color="grey", linestyle="--",
               label=f"collapse below {table['collapse_below']}")
    ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=20, ha="right",
                  fontsize=8)
    ax.set_ylabel(f"retention vs {reference}")
    ax.set_title("Retention per category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
