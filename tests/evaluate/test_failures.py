"""Failure modes on hand-made samples: exact counts per mode, one cause per sample, examples
in problem order, the report section and the stacked-bar plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from cotdistill.evaluate.config import EvalSample
from cotdistill.evaluate.measures.failures import (
    failure_modes,
    render_failures,
    sample_cause,
    sample_modes,
)
from cotdistill.evaluate.measures.plots import failure_plot

LOOP = "and then we add one " * 20  # 4-grams repeat: share far above 0.5


def sample(model: str, pid: str, index: int, predicted: str | None, gold: str = "5",
           text: str = "5 is the answer", finish: str = "stop") -> EvalSample:
    return EvalSample(
        model=model, problem_id=pid, sample_index=index, question=f"question {pid}",
        gold_answer=gold, completion=text, predicted_answer=predicted,
        verdict="correct" if predicted == gold else "wrong", correct=predicted == gold,
        num_tokens=len(text.split()), finish_reason=finish, mean_logprob=None,
    )


def hand_made() -> dict[str, list[EvalSample]]:
    # Teacher, two samples per problem: right on p1 (2/2) and p2 (1/2: half counts as right),
    # wrong on p3 (0/2) and p4 (0/2).
    teacher = [
        sample("teacher", "p1", 0, "5"), sample("teacher", "p1", 1, "5"),
        sample("teacher", "p2", 0, "5"), sample("teacher", "p2", 1, "6"),
        sample("teacher", "p3", 0, "6"), sample("teacher", "p3", 1, None, finish="length"),
        sample("teacher", "p4", 0, "7"), sample("teacher", "p4", 1, "7"),
    ]
    student = [
        sample("student", "p1", 0, "4", text="4 is it"),                   # wrong, teacher right
        sample("student", "p1", 1, None, text=LOOP, finish="length"),       # loop to the limit
        sample("student", "p2", 0, None, text="I am not sure"),             # no answer
        sample("student", "p2", 1, "5"),                                    # right
        sample("student", "p3", 0, "5"),                                    # right, teacher wrong
        sample("student", "p3", 1, "5"),                                    # right, teacher wrong
        sample("student", "p4", 0, "8", text=LOOP + " 8"),                  # loop, wrong answer
        sample("student", "p4", 1, "9"),                                    # wrong, teacher wrong
    ]
    return {"teacher": teacher, "student": student}


def test_modes_of_one_sample() -> None:
    looped = sample("s", "p", 0, None, text=LOOP, finish="length")
    assert sample_modes(looped, teacher_right=True) == [
        "wrong_teacher_right", "no_answer", "token_limit", "repeated",
    ]
    assert sample_cause(sample_modes(looped, True), looped.correct) == "token_limit"
    right = sample("s", "p", 0, "5")
    assert sample_modes(right, teacher_right=False) == ["right_teacher_wrong"]
    assert sample_modes(right, teacher_right=None) == []
    assert sample_cause([], correct=True) == "correct"
    assert sample_cause(["wrong_teacher_right"], correct=False) == "wrong_answer"


def test_failure_counts_on_a_hand_made_set() -> None:
    table = failure_modes(hand_made(), "teacher", examples=1)
    student = table["student"]
    assert student["samples"] == 8
    assert student["counts"] == {
        "wrong_teacher_right": 3,  # p1#0, p1#1, p2#0
        "right_teacher_wrong": 2,  # p3#0, p3#1
        "no_answer": 2,            # p1#1, p2#0
        "token_limit": 1,          # p1#1
        "repeated": 2,             # p1#1, p4#0
    }
    assert student["causes"] == {"correct": 3, "token_limit": 1, "repeated": 1,
                                 "no_answer": 1, "wrong_answer": 2}
    assert sum(student["causes"].values()) == student["samples"]
    # The first example of each mode, in problem order, with the teacher's answer beside it.
    first = student["examples"]["wrong_teacher_right"]
    assert len(first) == 1
    assert (first[0]["problem_id"], first[0]["sample_index"], first[0]["predicted"],
            first[0]["teacher_predicted"]) == ("p1", 0, "4", "5")
    assert student["examples"]["repeated"][0]["problem_id"] == "p1"
    assert student["examples"]["repeated"][0]["completion_tail"].startswith("...")

    teacher = table["teacher"]
    # The reference is not compared with itself.
    assert teacher["counts"]["wrong_teacher_right"] == 0
    assert teacher["counts"]["right_teacher_wrong"] == 0
    assert teacher["counts"]["no_answer"] == 1 and teacher["counts"]["token_limit"] == 1
    assert teacher["reference"] is None and student["reference"] == "teacher"


def test_more_examples_are_capped_by_the_count() -> None:
    table = failure_modes(hand_made(), "teacher", examples=10)
    assert [e["problem_id"] for e in table["student"]["examples"]["wrong_teacher_right"]] == [
        "p1", "p1", "p2",
    ]


def test_report_section_and_plot(tmp_path: Path) -> None:
    table = failure_modes(hand_made(), "teacher", examples=2)
    text = "\n".join(render_failures(table, "teacher"))
    assert "| student | 8 | 3 | 2 | 2 | 1 | 2 |" in text
    assert "| teacher | 8 | - | - | 1 | 1 | 0 |" in text
    assert "### Examples: student" in text
    assert "**wrong where the teacher was right** (3 samples)" in text
    assert "gold `5`, student `4`, teacher `5`" in text
    path = failure_plot(table, tmp_path / "failures.png")
    assert path.stat().st_size > 1000


def test_without_a_reference_there_is_no_comparison() -> None:
    table = failure_modes({"student": hand_made()["student"]}, "teacher")
    assert table["student"]["counts"]["wrong_teacher_right"] == 0
    assert table["student"]["reference"] is None
    assert "| student | 8 | - | - | 2 | 1 | 2 |" in "\n".join(render_failures(table, "teacher"))


@pytest.mark.parametrize(("text", "expected"), [("a b c a b c a b c", 4 / 7), ("a b", 0.0)])
def test_repeat_share_is_shared_with_the_filter(text: str, expected: float) -> None:
    from cotdistill.filter import summary as filter_stage
    from cotdistill.textstats import repeat_share

    assert filter_stage.repeat_share is repeat_share
    assert repeat_share(text, 3) == pytest.approx(expected)
