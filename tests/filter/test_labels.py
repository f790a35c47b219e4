"""The filter's labels and cut-offs: majority labels need a real majority, every threshold is
tested at exactly its cut-off value (`<` vs `<=`), and the second pass notices traces files that
changed under it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import cotdistill.filter.stage as filter_module
from cotdistill.errors import InputError
from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import filter_traces, run_filter
from tests.helpers.traces import trace, write_traces


def outcome(traces: list, **config: Any) -> dict[int, dict[str, Any]]:
    """{sample_index: output row} after filtering (one problem per call)."""
    kept, rejected, _ = filter_traces(traces, FilterConfig(dedup="off", **config))
    return {r["sample_index"]: r for r in kept + rejected}


def no_gold(*answers: int) -> list:
    return [trace("p1", i, f"attempt {i}: \\boxed{{{a}}}", gold=None)
            for i, a in enumerate(answers)]


# ---------------------------------------------------------------------------------------------
# Majority labels


def test_one_vote_is_not_a_majority() -> None:
    rows = outcome(no_gold(5, 6))
    assert [rows[i]["reasons"] for i in (0, 1)] == [["no_label"], ["no_label"]]
    assert [rows[i]["label"] for i in (0, 1)] == [None, None]
    assert rows[0]["correct"] is None
    assert rows[0]["agreement"] == 0.5  # the agreement is still reported


def test_a_tie_is_not_a_majority() -> None:
    rows = outcome(no_gold(5, 5, 6, 6))
    assert all(rows[i]["reasons"] == ["no_label"] for i in range(4))


def test_three_of_four_is_a_majority() -> None:
    rows = outcome(no_gold(5, 6, 5, 5))
    assert {i: r["reasons"] for i, r in rows.items()} == {0: [], 1: ["wrong"], 2: [], 3: []}
    assert all(r["label"] == "majority" for r in rows.values())
    assert rows[0]["agreement"] == 0.75


def test_a_plurality_of_a_scattered_set_is_not_a_majority() -> None:
    # 2 of 5 agree and every other answer is alone: 2 is not half of 5, so no label.
    rows = outcome(no_gold(5, 5, 6, 7, 8))
    assert all(r["reasons"] == ["no_label"] for r in rows.values())
    # 2 of 4 with the others scattered: half, and nothing else as often: a label.
    rows = outcome(no_gold(5, 5, 6, 7))
    assert rows[0]["reasons"] == [] and rows[0]["label"] == "majority"
    assert rows[2]["reasons"] == ["wrong"]
    # Two answers given twice each: no label.
    tied = outcome(no_gold(5, 5, 6, 6, 8))
    assert all(r["reasons"] == ["no_label"] for r in tied.values())


def test_samples_without_an_answer_do_not_vote() -> None:
    traces = [*no_gold(5), trace("p1", 1, "I do not know.", gold=None),
              trace("p1", 2, "No idea at all.", gold=None)]
    rows = outcome(traces, fallback_last_number=False)
    assert rows[0]["reasons"] == ["no_label"]  # one vote for 5, the others did not answer


def test_min_agreement_rejects_at_low_agreement_not_at_the_label() -> None:
    # 2 of 3 agree: a label exists; min_agreement above 2/3 rejects every trace as low_agreement.
    rows = outcome(no_gold(5, 5, 6), min_agreement=0.7)
    assert {i: r["reasons"] for i, r in rows.items()} == {
        0: ["low_agreement"], 1: ["low_agreement"], 2: ["wrong", "low_agreement"]}
    assert rows[0]["label"] == "majority" and rows[0]["correct"] is True


# ---------------------------------------------------------------------------------------------
# Every threshold at exactly its cut-off: equal to the cut-off passes, just past it rejects.


def test_min_agreement_boundary() -> None:
    traces = [trace("p1", i, f"try {i} \\boxed{{{a}}}") for i, a in enumerate((5, 5, 5, 6))]
    at = outcome(traces, min_agreement=0.75, require_correct=False)
    assert at[0]["agreement"] == 0.75 and at[0]["reasons"] == []
    past = outcome(traces, min_agreement=0.76, require_correct=False)
    assert past[0]["reasons"] == ["low_agreement"]


@pytest.mark.parametrize(
    ("name", "at", "past", "reason", "make"),
    [
        ("min_mean_logprob", -0.5, -0.49, "low_mean_logprob",
         lambda: trace(logprobs=[-0.25, -0.75])),
        ("min_token_logprob", -0.75, -0.74, "low_token_logprob",
         lambda: trace(logprobs=[-0.25, -0.75])),
        ("min_tokens", 10, 11, "too_short", lambda: trace(tokens=10)),
        ("max_tokens", 10, 9, "too_long", lambda: trace(tokens=10)),
        # "a b a b \\boxed{5}": 4 word bigrams, 1 repeats an earlier one -> share exactly 0.25.
        ("max_repeat_ngram_share", 0.25, 0.24, "repetition",
         lambda: trace(completion="a b a b \\boxed{5}")),
    ],
)
def test_threshold_at_its_cut_off(name: str, at: float, past: float, reason: str, make) -> None:
    config = {"repeat_ngram": 2} if name == "max_repeat_ngram_share" else {}
    assert outcome([make()], **{name: at}, **config)[0]["reasons"] == []
    assert reason in outcome([make()], **{name: past}, **config)[0]["reasons"]


# ---------------------------------------------------------------------------------------------
# The second pass


def test_traces_file_that_grows_between_the_passes_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_traces(tmp_path / "t.jsonl", [trace("p1"), trace("p2")])
    real_decide = filter_module.decide

    def decide_then_append(*args: Any, **kwargs: Any) -> None:
        real_decide(*args, **kwargs)
        with open(path, "a", encoding="utf-8") as fh:  # a shard still being written
            fh.write(trace("p3").model_dump_json() + "\n")

    monkeypatch.setattr(filter_module, "decide", decide_then_append)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="changed while filtering; run again") as info:
        run_filter(FilterConfig(traces=[path], out=out))
    assert info.value.file == str(path)
    assert not (out / "kept.jsonl").exists() and not (out / "manifest.json").exists()
    assert not list(out.glob("*.tmp"))  # no half-written outputs left behind


def test_traces_file_that_shrinks_between_the_passes_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_traces(tmp_path / "t.jsonl", [trace("p1"), trace("p2")])
    real_decide = filter_module.decide

    def decide_then_truncate(*args: Any, **kwargs: Any) -> None:
        real_decide(*args, **kwargs)
        path.write_text(json.dumps(json.loads(trace("p1").model_dump_json())) + "\n")

    monkeypatch.setattr(filter_module, "decide", decide_then_truncate)
    with pytest.raises(InputError, match="changed while filtering; run again"):
        run_filter(FilterConfig(traces=[path], out=tmp_path / "out"))


# ---------------------------------------------------------------------------------------------
# Only traces that pass the early checks vote (issue 19, item 4)

# (early check, a trace that fails it and ends with the answer 12, config)
NON_VOTERS = {
    "truncated": (lambda i: trace("p1", i, "so far 12 12 12", gold=None, finish="length"), {}),
    "repetition": (lambda i: trace("p1", i, "again " * 40 + "\\boxed{12}", gold=None), {}),
    "unfinished_thinking": (
        lambda i: trace("p1", i, "<think>\nmaybe it is 12, or 12", gold=None),
        {"answer_from_reasoning": True}),
    "too_long": (lambda i: trace("p1", i, "long " * 30 + "\\boxed{12}", gold=None, tokens=99),
                 {"max_tokens": 50}),
}


@pytest.mark.parametrize("check", sorted(NON_VOTERS))
def test_rejected_traces_do_not_vote_for_the_majority_label(check: str) -> None:
    make, config = NON_VOTERS[check]
    losers = [make(i) for i in range(3)]
    winners = [trace("p1", 3 + i, f"attempt {i}: \\boxed{{7}}", gold=None) for i in range(2)]
    rows = outcome([*losers, *winners], **config)
    # Three rejected traces said 12; they must not outvote the two finished ones saying 7.
    assert [rows[i]["reasons"][0] for i in range(3)] == [check] * 3
    assert [rows[i]["reasons"] for i in (3, 4)] == [[], []]
    assert rows[3]["label"] == "majority" and rows[3]["correct"] is True
    assert rows[3]["label_votes"] == 2 and rows[3]["voters"] == 2


def test_a_rejected_majority_leaves_one_voter_and_no_label() -> None:
    truncated = [trace("p1", i, "so 12 12 12", gold=None, finish="length") for i in range(3)]
    rows = outcome([*truncated, trace("p1", 3, "so \\boxed{7}", gold=None)])
    assert rows[3]["reasons"] == ["no_label"]  # not "wrong" against a label of 12
    assert rows[3]["label"] is None


def test_contaminated_traces_do_not_vote() -> None:
    question = "Problem p1: what is the number?"
    leaked = [trace("p1", i, "\\boxed{12}", gold=None, question=question) for i in range(3)]
    kept, rejected, _ = filter_traces(
        [*leaked, trace("p1", 3, "\\boxed{7}", gold=None, question=question)],
        FilterConfig(dedup="off"), eval_questions=[question])
    # Every sample of a leaked problem is contaminated: nobody votes, nothing is labelled 12.
    assert all(r["reasons"][0] == "contaminated" for r in rejected) and not kept
    assert all(r["label"] is None and r["label_votes"] is None for r in rejected)


def test_report_counts_the_votes_of_each_majority_label(tmp_path: Path) -> None:
    traces = [
        *(trace("p1", i, "so 12 12 12", gold=None, finish="length") for i in range(2)),
        *(trace("p1", 2 + i, f"try {i}: \\boxed{{7}}", gold=None) for i in range(3)),
        trace("p1", 5, "try: \\boxed{8}", gold=None),
        *(trace("p2", i, f"go {i}: \\boxed{{3}}", gold=None) for i in range(2)),
    ]
    _, _, report = filter_traces(traces, FilterConfig(dedup="off"))
    assert report["majority_votes"] == {
        "problems": 2, "votes": {"2/2": 1, "3/4": 1}, "traces_not_voting": 2}
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[write_traces(tmp_path / "t.jsonl", traces)], out=out,
                            dedup="off"))
    written = json.loads((out / "report.json").read_text())
    assert written["majority_votes"] == report["majority_votes"]
    assert "| 3/4 | 1 |" in (out / "report.md").read_text()
