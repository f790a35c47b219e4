"""The run report's "Rounds" section: per self-training round, who sampled, what the samples
bought (the round filter's yield figures, `filter/yield_report.py`, read from its report.json)
and the round's student with its evaluation accuracy; round 0 is the main chain.

    lines = rounds_report(training, evaluate_dir)   # training: a rounds.plan.SelfTraining
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotdistill.infra.files import read_manifest


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def round_yield(filter_dir: Path) -> dict[str, Any]:
    """The filter's yield figures (its report.json); a filter that wrote none (a merge of
    shards, a test's fake) gives what its manifest counted."""
    figures = _read_json(filter_dir / "report.json").get("yield")
    if figures:
        return figures
    counts = (read_manifest(filter_dir) or {}).get("counts", {})
    return {"samples": counts.get("traces_in"), "kept": counts.get("kept")}


def solved(generate_dir: Path) -> str:
    """`solved of problems` from an adaptive generate's manifest; "-" when it was not."""
    adaptive = (read_manifest(generate_dir) or {}).get("adaptive")
    if not adaptive:
        return "-"
    outcome = adaptive["problems"]
    return f"{outcome['solved']} of {sum(outcome.values())}"


def _cell(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "?"
    return f"{value:.{digits}f}" if digits is not None else str(value)


def rounds_report(training: Any, evaluate_dir: Path) -> list[str]:
    """The section's lines: a paragraph on what the rounds did, and one row per round."""
    summary = _read_json(Path(evaluate_dir) / "summary.json").get("models", {})
    config = training.config
    who = ("the teacher" if config.generator == "teacher" else
           "the previous round's student (round 1: the main chain's)")
    start = ("the student's own starting point" if config.start == "original" else
             "the previous round's student")
    data = ("its own kept traces and the main chain's" if config.keep_previous else
            "its own kept traces only")
    lines = [
        "## Rounds", "",
        f"`{training.student}` self-trained for {config.count} round(s): each round "
        f"{who} samples the training problems with a gold answer, the run's filter keeps "
        "the verified traces (decontaminated against the evaluation problems like every "
        f"filter of the run), and a student trains from {start} on {data}. Round 0 is the "
        "main chain (the teacher's traces, the student it trained). Kept per 1,000 tokens "
        "and per sample: the round filter's yield, over the generator's output tokens; "
        "solved: problems that reached until_correct verified traces. The unfiltered control "
        "and the evaluation set are not touched by the rounds.", "",
        "| round | generator | samples | solved | kept | kept / 1,000 generator tokens | "
        "kept / sample | student | accuracy |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    rows = [(0, "teacher", training.main_generate, training.main_filter, training.student)]
    rows += [(r.index, r.generator, r.folder / "generate", r.folder / "filter", r.model)
             for r in training.rounds]
    for index, generator, generate_dir, filter_dir, student in rows:
        figures = round_yield(filter_dir)
        accuracy = (summary.get(student) or {}).get("accuracy")
        lines.append(
            f"| {index} | {generator} | {_cell(figures.get('samples'))} | "
            f"{solved(generate_dir)} | {_cell(figures.get('kept'))} | "
            f"{_cell(figures.get('kept_per_1k_tokens'), 2)} | "
            f"{_cell(figures.get('kept_per_sample'), 3)} | {student} | "
            + ("not evaluated yet" if accuracy is None else f"{accuracy:.3f}") + " |")
    return [*lines, ""]
