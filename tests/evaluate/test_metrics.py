"""The evaluation's metrics against hand-computed values, with cases chosen so that the usual
mistakes fail: ECE as an unweighted mean over bins, a bootstrap that ignores its confidence
level, an interval that does not cover the true value as often as it says."""

from __future__ import annotations

import numpy as np
import pytest

from cotdistill.evaluate.config import EvalSample
from cotdistill.evaluate.measures.metrics import (
    bootstrap_mean,
    bootstrap_ratio,
    calibration_bins,
    expected_calibration_error,
)
from cotdistill.evaluate.summary import retention, summarize_model

# ---------------------------------------------------------------------------------------------
# Calibration


def test_ece_weights_bins_by_their_share_of_samples() -> None:
    # Bin [0.9, 1.0]: 3 samples, mean confidence 0.95, accuracy 2/3 -> gap 0.95 - 2/3 = 17/60.
    # Bin [0.1, 0.2): 1 sample, confidence 0.15, accuracy 0 -> gap 0.15.
    # ECE = 3/4 * 17/60 + 1/4 * 0.15 = 0.2125 + 0.0375 = 0.25.
    confidences = [0.95, 0.95, 0.95, 0.15]
    correct = [True, True, False, False]
    assert expected_calibration_error(confidences, correct, bins=10) == pytest.approx(0.25)
    # What the two wrong formulas would give, so the case really tells them apart:
    unweighted_nonempty = (17 / 60 + 0.15) / 2
    unweighted_all = (17 / 60 + 0.15) / 10
    assert abs(0.25 - unweighted_nonempty) > 0.03 and abs(0.25 - unweighted_all) > 0.2


def test_ece_with_three_unequal_bins() -> None:
    # 5 samples at 0.85 (4 right), 2 at 0.55 (both wrong), 1 at 0.25 (right):
    # gaps |0.8 - 0.85| = 0.05, |0 - 0.55| = 0.55, |1 - 0.25| = 0.75, weights 5/8, 2/8, 1/8.
    confidences = [0.85] * 5 + [0.55] * 2 + [0.25]
    correct = [True, True, True, True, False, False, False, True]
    expected = 5 / 8 * 0.05 + 2 / 8 * 0.55 + 1 / 8 * 0.75
    assert expected_calibration_error(confidences, correct, bins=10) == pytest.approx(expected)
    assert expected == pytest.approx(0.2625)


def test_bin_edges() -> None:
    bins = calibration_bins([0.0, 0.3, 0.5, 0.999, 1.0], [True] * 5, bins=10)
    assert [b.count for b in bins] == [1, 0, 0, 1, 0, 1, 0, 0, 0, 2]  # 1.0 in the last bin
    assert bins[9].mean_confidence == pytest.approx((0.999 + 1.0) / 2)
    assert expected_calibration_error([], []) is None
    with pytest.raises(ValueError):
        calibration_bins([1.2], [True])


# ---------------------------------------------------------------------------------------------
# Bootstrap intervals


def test_bootstrap_interval_uses_its_level_hand_computed() -> None:
    # Two problems scored 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2,
    # 1/4. The 95% interval (2.5th to 97.5th percentile) is [0, 1]; the 40% interval (30th to
    # 70th) holds only the middle value 0.5.
    wide = bootstrap_mean([0.0, 1.0], resamples=4000, seed=0, confidence=0.95)
    narrow = bootstrap_mean([0.0, 1.0], resamples=4000, seed=0, confidence=0.40)
    assert (wide.value, wide.low, wide.high) == (0.5, 0.0, 1.0)
    assert (narrow.low, narrow.high) == (0.5, 0.5)


def test_ratio_interval_uses_its_level() -> None:
    rng = np.random.default_rng(1)
    teacher = rng.binomial(1, 0.6, size=80).astype(float).tolist()
    student = rng.binomial(1, 0.4, size=80).astype(float).tolist()
    wide = bootstrap_ratio(student, teacher, resamples=2000, seed=0, confidence=0.95)
    narrow = bootstrap_ratio(student, teacher, resamples=2000, seed=0, confidence=0.50)
    assert wide.value == narrow.value == pytest.approx(sum(student) / sum(teacher))
    assert wide.low < narrow.low < narrow.value < narrow.high < wide.high  # type: ignore[operator]
    # Normal approximation: the 50% interval is about 0.674 / 1.96 = 0.34 of the 95% one.
    share = (narrow.high - narrow.low) / (wide.high - wide.low)  # type: ignore[operator]
    assert 0.25 < share < 0.45


def test_bootstrap_interval_covers_the_true_mean_as_often_as_it_says() -> None:
    # 400 data sets of 60 Bernoulli(0.3) scores: a 90% interval should hold 0.3 about 90% of
    # the time (binomial sd over 400 trials: 1.5 points; the percentile bootstrap runs a little
    # under nominal at this size). A 50% interval should hold it about half the time.
    rng = np.random.default_rng(7)
    hits = {0.9: 0, 0.5: 0}
    trials = 400
    for trial in range(trials):
        scores = rng.binomial(1, 0.3, size=60).astype(float).tolist()
        for level in hits:
            interval = bootstrap_mean(scores, resamples=500, seed=trial, confidence=level)
            hits[level] += interval.low <= 0.3 <= interval.high  # type: ignore[operator]
    assert 0.84 <= hits[0.9] / trials <= 0.95
    assert 0.38 <= hits[0.5] / trials <= 0.62


def sample(model: str, problem: str, correct: bool) -> EvalSample:
    return EvalSample(model=model, problem_id=problem, sample_index=0, question="q",
                      gold_answer="1", completion="1", predicted_answer="1",
                      verdict="correct" if correct else "wrong", correct=correct, num_tokens=1,
                      finish_reason="stop", mean_logprob=-0.1)


def test_evaluation_passes_its_level_to_the_intervals() -> None:
    rng = np.random.default_rng(3)
    outcomes = rng.binomial(1, 0.5, size=(2, 50)).astype(bool)
    teacher = [sample("teacher", f"p{i}", bool(a or b)) for i, (a, b) in enumerate(outcomes.T)]
    student = [sample("student", f"p{i}", bool(ok)) for i, ok in enumerate(outcomes[1])]
    wide = summarize_model(student, resamples=2000, level=0.95)["accuracy_ci"]
    narrow = summarize_model(student, resamples=2000, level=0.5)["accuracy_ci"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]
    per_model = {"teacher": teacher, "student": student}
    wide_r = retention(per_model, "teacher", resamples=2000, level=0.95)["student"]
    narrow_r = retention(per_model, "teacher", resamples=2000, level=0.5)["student"]
    assert wide_r["low"] < narrow_r["low"] < narrow_r["high"] < wide_r["high"]


def test_paired_differences_pair_by_problem_and_count_better_and_worse() -> None:
    from cotdistill.evaluate.summary import paired_differences

    right = {"teacher": "1100", "self": "1011", "control": "1000"}
    per_model = {name: [sample(name, f"p{i}", c == "1") for i, c in enumerate(marks)]
                 for name, marks in right.items()}
    rows = paired_differences(per_model, [("self", "teacher"), ("self", "control"),
                                          ("self", "missing")], resamples=200)
    assert [(r["model"], r["versus"]) for r in rows] == [("self", "teacher"),
                                                         ("self", "control")]
    versus_teacher, versus_control = rows
    assert versus_teacher["value"] == pytest.approx(0.25)
    assert (versus_teacher["better"], versus_teacher["worse"]) == (2, 1)
    assert versus_control["value"] == pytest.approx(0.5)
    assert (versus_control["better"], versus_control["worse"]) == (2, 0)
    # Paired: the per-problem differences are 0, 0, 1, 1, so no resample goes below 0.
    assert versus_control["low"] >= 0.0 and versus_control["high"] <= 1.0
    assert versus_teacher["problems"] == 4
