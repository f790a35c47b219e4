"""What the run's report leads with: each student's paired accuracy difference to the teacher
and to the unfiltered control, with intervals, retention beside it, and the truncation share
of every model (a gain that is only shorter answers would show there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _signed(row: dict[str, Any]) -> str:
    if row.get("value") is None:
        return "-"
    if row.get("low") is None or row.get("high") is None:
        return f"{row['value']:+.3f}"
    return f"{row['value']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"


def _verdict(row: dict[str, Any]) -> str:
    low, high = row.get("low"), row.get("high")
    if low is None or high is None:
        return "no interval"
    if low > 0:
        return "higher"
    if high < 0:
        return "lower"
    return "not measurably different"


def headline_lines(evaluate_dir: Path, confidence: float = 0.95) -> list[str]:
    """The "Headline" section from the evaluation's summary.json; empty before it exists."""
    summary_file = evaluate_dir / "summary.json"
    if not summary_file.exists():
        return []
    summary = json.loads(summary_file.read_text())
    differences = summary.get("differences") or []
    if not differences:
        return []
    models = summary.get("models", {})
    retention = summary.get("retention", {})
    level = f"{confidence:.0%}"
    lines = ["## Headline", "",
             f"Paired accuracy differences on the {_problems(models)} held-out problems "
             f"({level} bootstrap intervals over problems); retention = accuracy / the "
             "teacher's. A difference whose interval excludes 0 is measured; the others are "
             "not.", "",
             "| model | minus | difference | verdict | retention vs teacher | "
             "problems better / worse |", "|---|---|---|---|---|---|"]
    for row in differences:
        kept = retention.get(row["model"]) if row["versus"] == "teacher" else None
        shown = "" if not kept or kept.get("value") is None else (
            f"{kept['value']:.2f}" + (f" [{kept['low']:.2f}, {kept['high']:.2f}]"
                                      if kept.get("low") is not None else ""))
        lines.append(f"| {row['model']} | {row['versus']} | {_signed(row)} | {_verdict(row)} "
                     f"| {shown} | {row['better']} / {row['worse']} |")
    truncated = [f"{name} {m['truncated_share']:.0%}" for name, m in models.items()
                 if m.get("truncated_share") is not None]
    if truncated:
        lines += ["", "Outputs cut at the evaluation's max_tokens: " + ", ".join(truncated)
                  + "."]
    return [*lines, ""]


def _problems(models: dict[str, Any]) -> str:
    counts = {m.get("problems") for m in models.values()}
    return str(counts.pop()) if len(counts) == 1 else "evaluation"
