"""The validation split, and which problems a refinement round samples again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cotdistill.errors import InputError
from cotdistill.infra.files import (
    sha256_text,
)
from cotdistill.records import Problem

if TYPE_CHECKING:
    pass
from cotdistill.run.config import DEFAULT_FRACTION

# --- the pure core ------------------------------------------------------------------------------


def split_ids(ids: Iterable[str], size: int, seed: int | str) -> set[str]:
    """The `size` ids with the smallest seeded hash: the same split on every rerun, and one that
    moves only at its margin when problems are added to the file (a shuffle would redraw all)."""
    return set(sorted(ids, key=lambda pid: sha256_text(f"{seed}:{pid}"))[:size])


def validation_count(problems: int, labelled: int, fraction: float | None,
                     size: int | None) -> int:
    """How many problems the split sets aside; bad sizes are an InputError naming the key."""
    count = size if size is not None else max(1, round((fraction or DEFAULT_FRACTION) * problems))
    key = "refine.validation_size" if size is not None else "refine.validation_fraction"
    if count > labelled:
        raise InputError(f"{count} validation problems asked for, but only {labelled} training "
                         "problems have a gold answer to score against", field=key)
    if count >= problems:
        raise InputError(f"{count} validation problems would leave no training problem",
                         field=key)
    return count


def problem_scores(rows: Iterable[Mapping[str, Any]], model: str | None = None
                   ) -> dict[str, float]:
    """Per problem, the share of `model`'s samples that are correct (evaluate's results rows)."""
    hits: dict[str, list[bool]] = {}
    for row in rows:
        if model is None or row.get("model") == model:
            hits.setdefault(str(row["problem_id"]), []).append(bool(row.get("correct")))
    return {pid: sum(h) / len(h) for pid, h in hits.items()}


def weak_categories(scores: Mapping[str, float], categories: Mapping[str, str | None]
                    ) -> dict[str, float]:
    """Categories whose accuracy is below the mean over all scored problems -> that accuracy."""
    if not scores:
        return {}
    mean = sum(scores.values()) / len(scores)
    groups: dict[str, list[float]] = {}
    for pid, score in scores.items():
        category = categories.get(pid)
        if category is not None:
            groups.setdefault(category, []).append(score)
    accuracy = {c: sum(v) / len(v) for c, v in sorted(groups.items())}
    return {c: a for c, a in accuracy.items() if a < mean}


def _draw(problems: Sequence[Problem], count: int | None, salt: str) -> list[Problem]:
    """`count` problems chosen by seeded hash, in their original order; all when count is None."""
    if count is None or count >= len(problems):
        return list(problems)
    chosen = split_ids((p.id for p in problems), count, salt)
    return [p for p in problems if p.id in chosen]


@dataclass(frozen=True)
class Selection:
    """What one round samples, and the validation set the next round scores on."""

    failed: list[str]  # every failed validation problem, in validation order
    chosen: list[Problem]  # the failed problems the teacher samples now (<= max_problems)
    weak: dict[str, float]  # weak category -> the student's validation accuracy in it
    extra: list[Problem]  # training problems drawn from the weak categories
    remaining: list[Problem]  # next round's validation set: the validation minus `chosen`
    accuracy: float | None  # the student's mean validation accuracy


def select_round(
    validation: Sequence[Problem],
    scores: Mapping[str, float],
    pool: Sequence[Problem],
    *,
    fail_below: float = 0.5,
    max_problems: int | None = None,
    weak_category_problems: int = 0,
    seed: int = 0,
    round_index: int = 1,
) -> Selection:
    """The failed validation problems (capped by a seeded draw), extra training problems of the
    weak categories, and what stays held out. `scores` must cover every validation problem."""
    missing = [p.id for p in validation if p.id not in scores]
    if missing:
        raise InputError(f"{len(missing)} validation problems have no validation result "
                         f"(first: {missing[0]!r})", field="problem_id")
    held = {p.id: scores[p.id] for p in validation}
    failed = [p for p in validation if held[p.id] < fail_below]
    chosen = _draw(failed, max_problems, f"{seed}:{round_index}:failed")
    taken = {p.id for p in chosen}
    weak = weak_categories(held, {p.id: p.category for p in validation}) \
        if weak_category_problems else {}
    extra = [p for category in weak for p in _draw(
        [q for q in pool if q.category == category and q.id not in taken],
        weak_category_problems, f"{seed}:{round_index}:{category}")]
    return Selection(
        failed=[p.id for p in failed], chosen=chosen, weak=weak, extra=extra,
        remaining=[p for p in validation if p.id not in taken],
        accuracy=sum(held.values()) / len(held) if held else None,
    )
