"""Refinement's report: each round against the one before, per category."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotdistill.infra.files import (
    read_manifest,
)

if TYPE_CHECKING:
    from cotdistill.evaluate.config import EvaluateConfig
from cotdistill.run.refine.select import problem_scores
from cotdistill.run.refine.stages import rows_of

# --- the report: what each round did to the student on the evaluation set ------------------


def _interval(value: float | None, low: float | None, high: float | None,
              signed: bool = False) -> str:
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if low is None or high is None:
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def _categories(rows: Sequence[Mapping[str, Any]], reference: str) -> dict[str, str]:
    """problem_id -> category as the evaluation grouped them: the problems' labels, else the
    reference model's answer-length quartiles (cotdistill/evaluation/categories.py)."""
    from types import SimpleNamespace

    from cotdistill.evaluate.measures.categories import labelled_categories, length_quartiles

    samples = [SimpleNamespace(**row) for row in rows]
    labelled = labelled_categories(samples)  # type: ignore[arg-type]
    if labelled is not None:
        return labelled
    return length_quartiles([s for s in samples if s.model == reference])[0]  # type: ignore[misc]


def refinement_report(plan: Any,  # a run.refine.plan.Refinement (it calls this)
                       evaluate: EvaluateConfig) -> list[str]:
    """Accuracy on the evaluation set per round with its paired change against round 0, the
    per-category change, and what each round validated, sampled and kept."""
    from cotdistill.evaluate.measures.metrics import bootstrap_difference, bootstrap_mean

    results = Path(str(evaluate.out)) / "results.jsonl"
    rows = [row for _, row in rows_of(results)] if results.is_file() else []
    names = [plan.student, *plan.models]
    scores = {name: problem_scores(rows, name) for name in names}
    base = scores[plan.student]
    stats = {"resamples": evaluate.bootstrap_resamples, "seed": evaluate.bootstrap_seed,
             "confidence": evaluate.confidence}
    config = plan.config
    lines = [
        "## Refinement", "",
        f"`{plan.student}` refined for {config.rounds} round(s). Validation: training problems "
        "held out from the start (never the evaluation set); a validation problem with fewer "
        f"than {config.fail_below:.0%} of its samples correct is failed, the teacher samples "
        f"{config.samples} traces for it, and it leaves the validation set (it is training data "
        "from then on), so each round is validated on problems its student never trained on. "
        "Each round continues training on everything kept so far. Sampled: the failed problems "
        "the teacher sampled (+ training problems of weak categories). Accuracy is on the "
        f"evaluation set; the change is against round 0 with a {evaluate.confidence:.0%} "
        "paired bootstrap interval over problems.", "",
        "| round | model | validated on | failed | sampled | new traces kept | training "
        "examples | evaluation accuracy | change vs round 0 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for index, name in enumerate(names):
        folder = plan.rounds[index - 1].folder if index else None
        select = manifest_counts(folder / "select") if folder else {}
        train = manifest_counts(folder / "train" if folder else plan.base_train)
        kept = manifest_counts(folder / "filter").get("kept") if folder else None
        sampled = select.get("chosen")
        if select.get("extra"):
            sampled = f"{sampled} + {select['extra']}"
        mine = scores[name]
        accuracy = bootstrap_mean(list(mine.values()), **stats) if mine else None
        change = None
        if index and mine and mine.keys() == base.keys():
            ids = list(base)
            change = bootstrap_difference([mine[i] for i in ids], [base[i] for i in ids], **stats)
        cells = [str(index), name, *(("-" if v is None else str(v)) for v in (
            select.get("validation"), select.get("failed"), sampled, kept,
            train.get("train_examples"))),
            "not evaluated yet" if accuracy is None else _interval(
                accuracy.value, accuracy.low, accuracy.high),
            "-" if change is None else _interval(change.value, change.low, change.high, True)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if rows and base:
        lines += _category_change(rows, names, scores, evaluate, stats)
    return lines


def _category_change(rows: Sequence[Mapping[str, Any]], names: list[str],
                     scores: Mapping[str, Mapping[str, float]], evaluate: EvaluateConfig,
                     stats: Mapping[str, Any]) -> list[str]:
    from cotdistill.evaluate.measures.metrics import bootstrap_difference

    groups: dict[str, list[str]] = {}
    for pid, category in _categories(rows, evaluate.reference).items():
        groups.setdefault(category, []).append(pid)
    first, last = names[0], names[-1]
    lines = [
        "Per category (as the evaluation below groups its problems): accuracy at each round, "
        f"and the change from round 0 to the last round with a {evaluate.confidence:.0%} paired "
        "bootstrap interval over the category's problems.", "",
        "| category | problems | " + " | ".join(names) + " | change |",
        "|---|---:|" + "---:|" * (len(names) + 1),
    ]
    for category in sorted(groups):
        ids = [i for i in groups[category] if all(i in scores[n] for n in names)]
        if not ids:
            continue
        means = [sum(scores[n][i] for i in ids) / len(ids) for n in names]
        change = bootstrap_difference([scores[last][i] for i in ids],
                                      [scores[first][i] for i in ids], **stats)
        lines.append(f"| {category} | {len(ids)} | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | {_interval(change.value, change.low, change.high, True)} |")
    return [*lines, ""]


def manifest_counts(folder: Path | None) -> dict[str, Any]:
    return (read_manifest(folder) or {}).get("counts", {}) if folder is not None else {}
