"""Pure metric functions for the evaluation stage: no files, no models, plain numbers in and out.

    pass_at_k(n=4, c=1, k=4)                       -> 1.0
    majority_correct(["7", "7", "8"], [1, 1, 0])   -> True
    majority_vote(verify.group_equivalent(answers), correct)   # .correct, .tied, .votes
    expected_calibration_error([0.9, 0.2], [True, False], bins=10)
    bootstrap_ratio(student_scores, teacher_scores, resamples=1000, seed=0)
    bootstrap_difference(after_scores, before_scores)   # paired change, e.g. per round

pass@k uses the unbiased estimator of Chen et al. (2021), "Evaluating Large Language Models
Trained on Code", eq. 1. ECE follows Guo et al. (2017): equal-width confidence bins, weighted by
their share of the samples. Intervals are percentile bootstraps over problems; a retention
interval resamples the same problems for student and teacher (a paired bootstrap).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) is correct."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"need 0 < k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


@dataclass(frozen=True)
class MajorityVote:
    """maj@k for one problem: whether the winning group is correct, and how it won.

    `tied` is True when several groups had the top vote count; the winner is then the tied group
    whose first answer came first (sample order), and evaluate reports how many problems tied.
    """

    correct: bool
    votes: int
    tied: bool
    winner: tuple[int, ...]


def majority_vote(groups: Sequence[Sequence[int]], correct: Sequence[bool]) -> MajorityVote:
    """The most voted group of answers and whether it is correct.

    `groups` are indices into `correct` (from `verify.group_equivalent`, which puts
    mathematically equal answers in one group); unanswered samples are in no group. The verdict
    of a group is that of its first answer. With no group the problem counts as wrong.
    """
    live = [sorted(g) for g in groups if g]
    if not live:
        return MajorityVote(False, 0, False, ())
    best = max(len(g) for g in live)
    tied = [g for g in live if len(g) == best]
    winner = min(tied, key=lambda g: g[0])  # explicit tie rule: earliest first answer wins
    return MajorityVote(bool(correct[winner[0]]), best, len(tied) > 1, tuple(winner))


def majority_correct(
    answers: Sequence[str | None],
    correct: Sequence[bool],
    key: Callable[[str], str] = str.strip,
    groups: Sequence[Sequence[int]] | None = None,
) -> bool:
    """Whether the most frequent answer is correct (maj@k for one problem).

    Pass `groups` from `verify.group_equivalent(answers)` to vote by math equivalence (what the
    evaluation should do: `0.5`, `1/2` and `\\frac{1}{2}` are one vote); without it answers
    vote by `key` alone (`verify.answer_key`: "3" and "3.0" are one vote). Samples with no
    answer do not vote; a tie goes to the tied group whose first answer came first (see
    `majority_vote`, which also says whether there was a tie).
    """
    if len(answers) != len(correct):
        raise ValueError("answers and correct differ in length")
    if groups is None:
        by_key: dict[str, list[int]] = {}
        for index, answer in enumerate(answers):
            if answer is not None:
                by_key.setdefault(key(answer), []).append(index)
        groups = list(by_key.values())
    return majority_vote(groups, correct).correct


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    mean_confidence: float | None
    accuracy: float | None


def calibration_bins(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> list[CalibrationBin]:
    """Equal-width bins over [0, 1]; a confidence of exactly 1 falls in the last bin."""
    if len(confidences) != len(correct):
        raise ValueError("confidences and correct differ in length")
    members: list[list[int]] = [[] for _ in range(bins)]
    for index, confidence in enumerate(confidences):
        if not 0.0 <= confidence <= 1.0:
            raise ValueError(f"confidence {confidence} outside [0, 1]")
        members[min(int(confidence * bins), bins - 1)].append(index)
    result = []
    for b, indices in enumerate(members):
        count = len(indices)
        result.append(
            CalibrationBin(
                low=b / bins,
                high=(b + 1) / bins,
                count=count,
                mean_confidence=sum(confidences[i] for i in indices) / count if count else None,
                accuracy=sum(bool(correct[i]) for i in indices) / count if count else None,
            )
        )
    return result


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = 10
) -> float | None:
    """Sum over bins of |accuracy - mean confidence|, weighted by the bin's share of samples."""
    total = len(confidences)
    if total == 0:
        return None
    return sum(
        b.count / total * abs(b.accuracy - b.mean_confidence)  # type: ignore[operator]
        for b in calibration_bins(confidences, correct, bins)
        if b.count
    )


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None
    # Resamples where the statistic was undefined (teacher scored 0 on every drawn problem).
    undefined: int = 0

    def as_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "low": self.low, "high": self.high,
                "undefined_resamples": self.undefined}


def _percentiles(values: Sequence[float], confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(np.asarray(values), [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean(
    scores: Sequence[float], resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Interval:
    """Mean of per-problem scores with a percentile bootstrap interval over problems."""
    import numpy as np

    if not scores:
        return Interval(None, None, None)
    values = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(resamples, len(values)))
    low, high = _percentiles(values[draws].mean(axis=1), confidence)
    return Interval(float(values.mean()), low, high)


def bootstrap_ratio(
    numerator: Sequence[float],
    denominator: Sequence[float],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """mean(numerator) / mean(denominator), paired: each resample draws the same problems.

    The scores are per problem and aligned (index i is the same problem in both). Resamples
    whose denominator mean is 0 have no ratio; they are left out of the interval and counted.
    """
    import numpy as np

    if len(numerator) != len(denominator):
        raise ValueError("paired scores differ in length")
    if not numerator:
        return Interval(None, None, None)
    top = np.asarray(numerator, dtype=float)
    bottom = np.asarray(denominator, dtype=float)
    value = float(top.mean() / bottom.mean()) if bottom.mean() > 0 else None
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(top), size=(resamples, len(top)))
    top_means = top[draws].mean(axis=1)
    bottom_means = bottom[draws].mean(axis=1)
    defined = bottom_means > 0
    if not defined.any():
        return Interval(value, None, None, undefined=resamples)
    low, high = _percentiles(top_means[defined] / bottom_means[defined], confidence)
    return Interval(value, low, high, undefined=int((~defined).sum()))


def bootstrap_difference(
    after: Sequence[float],
    before: Sequence[float],
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """mean(after) - mean(before), paired: each resample draws the same problems for both.

    For one model before and after a change (a refinement round) on the same problems: pairing
    removes the spread between easy and hard problems, which both share.
    """
    import numpy as np

    if len(after) != len(before):
        raise ValueError("paired scores differ in length")
    if not after:
        return Interval(None, None, None)
    change = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(change), size=(resamples, len(change)))
    low, high = _percentiles(change[draws].mean(axis=1), confidence)
    return Interval(float(change.mean()), low, high)
