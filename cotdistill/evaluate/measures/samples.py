"""What the evaluation measures read from a scored sample, and grouping helpers over samples.

The evaluate stage's `EvalSample` satisfies `Sample`; so does any object with these attributes
(tests use the real record). A category is read with `getattr`, since it is an optional field.

    groups = by_problem(samples)          # {problem_id: [samples, by sample_index]}
    scores = problem_scores(samples)      # {problem_id: share correct}
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar


class Sample(Protocol):
    problem_id: str
    sample_index: int
    question: str
    gold_answer: str | None
    completion: str
    predicted_answer: str | None
    correct: bool
    num_tokens: int | None
    finish_reason: str | None


S = TypeVar("S", bound=Sample)


def by_problem(samples: Iterable[S]) -> dict[str, list[S]]:
    """Samples grouped per problem, problems in first-seen order, samples by index."""
    groups: dict[str, list[S]] = {}
    for sample in samples:
        groups.setdefault(sample.problem_id, []).append(sample)
    return {pid: sorted(group, key=lambda s: s.sample_index) for pid, group in groups.items()}


def problem_scores(samples: Iterable[Sample]) -> dict[str, float]:
    """Per problem, the share of its samples that are correct (pass@1 estimate)."""
    return {
        pid: sum(s.correct for s in group) / len(group)
        for pid, group in by_problem(samples).items()
    }


def is_truncated(sample: Sample) -> bool:
    """Cut at the token limit: the evaluation's own mark (`truncated`, which also catches a
    backend that gives no finish reason), else the engine's `length` finish reason (samples
    scored before the mark existed)."""
    marked = getattr(sample, "truncated", None)
    return bool(marked) if marked is not None else sample.finish_reason == "length"


def category_of(sample: object) -> str | None:
    """The sample's problem category, when the problems file gave one."""
    value = getattr(sample, "category", None)
    return None if value is None or value == "" else str(value)
