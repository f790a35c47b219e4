"""One model's figures from its samples: accuracy, maj@k, pass@k, calibration, thinking, retention.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from cotdistill.answers.workers import group_equivalent_many
from cotdistill.evaluate.config import EvalSample
from cotdistill.evaluate.measures.metrics import (
    bootstrap_mean,
    bootstrap_ratio,
    calibration_bins,
    expected_calibration_error,
    majority_vote,
    pass_at_k,
)
from cotdistill.evaluate.measures.samples import by_problem, is_truncated, problem_scores
from cotdistill.evaluate.score import UNSCORED, sample_confidence


def summarize_model(
    samples: Sequence[EvalSample],
    *,
    bins: int = 10,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Accuracy (pass@1 over the k samples), maj@k and pass@k, lengths, truncation, ECE."""
    groups = by_problem(samples)
    scores = [sum(s.correct for s in g) / len(g) for g in groups.values()]
    accuracy = bootstrap_mean(scores, resamples, seed, level)
    sizes = {len(g) for g in groups.values()}
    k = min(sizes) if sizes else 0
    summary: dict[str, Any] = {
        "problems": len(groups),
        "samples": len(samples),
        "samples_per_problem": k,
        "accuracy": accuracy.value,
        "accuracy_ci": [accuracy.low, accuracy.high],
    }
    unscored = Counter(s.verdict for s in samples if s.verdict in UNSCORED)
    # Counted as not correct in `accuracy`; the share says how much of the figure is unknown.
    summary["unscored"] = dict(unscored)
    summary["unscored_share"] = sum(unscored.values()) / len(samples) if samples else None
    if k > 1:
        # Answers vote by math equivalence (`0.5`, `1/2`, `\\frac{1}{2}` are one vote), the
        # rule the filter's majority uses; a tie goes to the group answered first, and is counted.
        problems = list(groups.values())
        votes = [
            majority_vote(answer_groups, [s.correct for s in g])
            for g, answer_groups in zip(problems, group_equivalent_many(
                [[s.predicted_answer for s in g] for g in problems]), strict=True)
        ]
        summary[f"maj@{k}"] = sum(v.correct for v in votes) / len(groups)
        summary[f"maj@{k}_ties"] = sum(v.tied for v in votes)
        summary[f"pass@{k}"] = sum(
            pass_at_k(len(g), sum(s.correct for s in g), k) for g in groups.values()
        ) / len(groups)
    rated = [(sample_confidence(s), s.correct) for s in samples if s.mean_logprob is not None]
    confidences = [c for c, _ in rated]
    outcomes = [ok for _, ok in rated]
    counted = [s.num_tokens for s in samples if s.num_tokens is not None]
    truncated = [s for s in samples if is_truncated(s)]
    summary.update(
        {
            # Over the samples whose length is known (a server may not say).
            "mean_reasoning_tokens": sum(counted) / len(counted) if counted else None,
            "truncated": len(truncated),
            "truncated_share": len(truncated) / len(samples) if samples else None,
            # Cut samples that still closed a box or answer marker before the cut.
            "truncated_answered": sum(s.predicted_answer is not None for s in truncated),
            "verdicts": dict(Counter(s.verdict for s in samples)),
            "ece": expected_calibration_error(confidences, outcomes, bins),
            # Samples without token logprobs cannot be placed on the reliability diagram.
            "calibration_samples": len(rated),
            "calibration_bins": [
                vars(b) for b in calibration_bins(confidences, outcomes, bins)
            ],
            "thinking": thinking_summary(samples),
        }
    )
    return summary


def thinking_summary(samples: Sequence[EvalSample]) -> dict[str, Any] | None:
    """Reasoning models: mean thinking and answer tokens, the share that never finished
    thinking, accuracy when it finished vs not. None when no sample has thinking."""
    thinking = [s for s in samples if s.finished_thinking is not None]
    if not thinking:
        return None

    def mean(values: list[int | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(sum(known) / len(known), 2) if known else None

    def accuracy(group: list[EvalSample]) -> float | None:
        return round(sum(s.correct for s in group) / len(group), 4) if group else None

    finished = [s for s in thinking if s.finished_thinking]
    unfinished = [s for s in thinking if not s.finished_thinking]
    return {
        "samples_with_thinking": len(thinking),
        "mean_thinking_tokens": mean([s.reasoning_tokens for s in thinking]),
        "mean_answer_tokens": mean([s.answer_tokens for s in thinking]),
        "unfinished_share": round(len(unfinished) / len(thinking), 4),
        "accuracy_finished": accuracy(finished),
        "accuracy_unfinished": accuracy(unfinished),
    }


def retention(
    per_model: dict[str, Sequence[EvalSample]],
    reference: str,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Accuracy of each other model over the reference's, with a paired bootstrap interval."""
    if reference not in per_model:
        return {}
    ref_scores = problem_scores(per_model[reference])
    table: dict[str, Any] = {}
    for name, samples in per_model.items():
        if name == reference:
            continue
        scores = problem_scores(samples)
        if scores.keys() != ref_scores.keys():
            raise ValueError(f"{name} and {reference} were scored on different problems")
        ids = list(ref_scores)
        interval = bootstrap_ratio(
            [scores[i] for i in ids], [ref_scores[i] for i in ids], resamples, seed, level
        )
        table[name] = {"reference": reference, **interval.as_dict()}
    return table


def paired_differences(
    per_model: dict[str, Sequence[EvalSample]],
    pairs: Sequence[tuple[str, str]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[dict[str, Any]]:
    """Accuracy of `model` minus that of `versus` for each pair, on the problems both answered,
    with a paired bootstrap interval (each resample draws the same problems for both), and how
    many problems each got right more often. Pairs naming a model not evaluated are skipped."""
    rows = []
    for model, versus in pairs:
        if model not in per_model or versus not in per_model or model == versus:
            continue
        own, other = problem_scores(per_model[model]), problem_scores(per_model[versus])
        both = [pid for pid in own if pid in other]
        interval = bootstrap_mean([own[p] - other[p] for p in both], resamples, seed, level)
        rows.append({"model": model, "versus": versus, "problems": len(both),
                     **interval.as_dict(),
                     "better": sum(own[p] > other[p] for p in both),
                     "worse": sum(own[p] < other[p] for p in both)})
    return rows
