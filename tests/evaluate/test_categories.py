"""Per-capability results on hand-made result sets whose answer is known: which categories
collapse (the whole retention interval below the threshold) and which do not, labelled and by
the reference's answer-length quartiles, and the stage end to end on a fake backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.evaluate.config import EvalSample, EvaluateConfig
from cotdistill.evaluate.measures.categories import (
    category_results,
    length_quartiles,
    render_categories,
)
from cotdistill.evaluate.stage import run_evaluate


def sample(model: str, pid: str, correct: bool, category: str | None = None,
           tokens: int = 10) -> EvalSample:
    return EvalSample(
        model=model, problem_id=pid, sample_index=0, question=f"q {pid}", gold_answer="1",
        completion="...", predicted_answer="1" if correct else "2",
        verdict="correct" if correct else "wrong", correct=correct, num_tokens=tokens,
        finish_reason="stop", mean_logprob=None, category=category,
    )


def labelled_set() -> dict[str, list[EvalSample]]:
    """Ten problems per category; the teacher solves all but `none-right`.

    easy: student 10/10 (retention 1); hard: 2/10 (0.2, interval far below 0.8);
    borderline: 7/10 (0.7, below 0.8 but its interval reaches above it); none-right: the
    teacher solves nothing, so retention has no interval.
    """
    student_right = {"easy": 10, "hard": 2, "borderline": 7, "none-right": 0}
    teacher, student = [], []
    for category, right in student_right.items():
        for i in range(10):
            pid = f"{category}-{i}"
            teacher.append(sample("teacher", pid, category != "none-right", category))
            student.append(sample("student", pid, i < right, category))
    return {"teacher": teacher, "student": student}


def test_collapse_flag_on_labelled_categories() -> None:
    table = category_results(labelled_set(), "teacher", collapse_below=0.8, resamples=500)
    assert table["source"] == "labels"
    rows = {row["name"]: row for row in table["categories"]}
    assert list(rows) == ["borderline", "easy", "hard", "none-right"]
    assert all(row["problems"] == 10 for row in rows.values())
    student = {name: row["models"]["student"] for name, row in rows.items()}
    assert student["hard"]["retention"]["value"] == pytest.approx(0.2)
    assert student["hard"]["retention"]["high"] < 0.8
    assert student["borderline"]["retention"]["value"] == pytest.approx(0.7)
    assert student["borderline"]["retention"]["high"] >= 0.8  # too few problems to tell
    assert student["easy"]["retention"]["value"] == pytest.approx(1.0)
    assert student["none-right"]["retention"]["high"] is None
    assert {n: s["collapsed"] for n, s in student.items()} == {
        "borderline": False, "easy": False, "hard": True, "none-right": False,
    }
    assert table["collapsed"] == {"student": ["hard"]}
    assert rows["hard"]["models"]["teacher"]["retention"] is None
    assert rows["hard"]["models"]["student"]["accuracy"] == pytest.approx(0.2)

    # A lower threshold saves the hard category: the flag follows `collapse_below`.
    assert category_results(labelled_set(), "teacher", collapse_below=0.1,
                            resamples=500)["collapsed"] == {}

    lines = "\n".join(render_categories(table, "teacher", "95%"))
    assert "| hard | 10 |" in lines and "**collapsed**" in lines
    assert "Collapsed capabilities of student: hard." in lines


def test_problems_without_a_label_form_their_own_category() -> None:
    models = {"teacher": [sample("teacher", "a", True, "x"), sample("teacher", "b", True)],
              "student": [sample("student", "a", True, "x"), sample("student", "b", False)]}
    table = category_results(models, "teacher", resamples=50)
    assert [r["name"] for r in table["categories"]] == ["(no category)", "x"]


def test_length_quartiles_of_the_reference() -> None:
    reference = [sample("teacher", f"p{i}", True, tokens=10 * (i + 1)) for i in range(8)]
    assignment, edges = length_quartiles(reference)
    # Lengths 10..80: quartile edges 27.5, 45, 62.5.
    assert edges == pytest.approx([27.5, 45.0, 62.5])
    quartile = {pid: name.split(" (")[0] for pid, name in assignment.items()}
    assert quartile == {"p0": "length Q1", "p1": "length Q1", "p2": "length Q2",
                        "p3": "length Q2", "p4": "length Q3", "p5": "length Q3",
                        "p6": "length Q4", "p7": "length Q4"}


def test_without_labels_long_problems_are_a_category() -> None:
    # 40 problems; the student fails exactly the 10 the teacher answered at greatest length.
    teacher = [sample("teacher", f"p{i}", True, tokens=i + 1) for i in range(40)]
    student = [sample("student", f"p{i}", i < 30, tokens=5) for i in range(40)]
    table = category_results({"teacher": teacher, "student": student}, "teacher",
                             resamples=500)
    assert table["source"] == "reference_length_quartiles"
    names = [row["name"] for row in table["categories"]]
    assert [n.split(" (")[0] for n in names] == [f"length Q{i}" for i in range(1, 5)]
    assert [row["problems"] for row in table["categories"]] == [10, 10, 10, 10]
    assert table["collapsed"] == {"student": [names[3]]}
    assert names[3].startswith("length Q4 (> ")


def test_no_labels_and_no_reference_says_so() -> None:
    table = category_results({"student": [sample("student", "a", True)]}, "teacher")
    assert table["categories"] == [] and "no reference" in table["note"]


def test_stage_reports_collapsed_categories(tmp_path: Path) -> None:
    rows = [{"id": f"{topic}{i}", "question": f"{topic} {i}: what is {i} + 1?",
             "answer": str(i + 1), "topic": topic}
            for topic in ("add", "big") for i in range(12)]
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def factory(path: str) -> FakeBackend:
        def respond(question: str, index: int) -> str:
            topic, rest = question.split(" ", 1)
            i = int(rest.split(":")[0])
            # The student answers every "big" problem wrong; the teacher answers everything.
            answer = i + 1 if path == "teacher" or topic == "add" else i + 2
            return f"So \\boxed{{{answer}}}"

        return FakeBackend(path, responder=respond)

    config = EvaluateConfig(
        problems=problems, out=tmp_path / "eval", model=["teacher=teacher", "student=student"],
        prompt_template="plain", category_field="topic", bootstrap_resamples=200,
        latency_prompts=0,
    )
    run_evaluate(config, factory)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["categories"]["collapsed"] == {"student": ["big"]}
    lines = (tmp_path / "eval" / "results.jsonl").read_text().splitlines()
    assert {json.loads(x)["category"] for x in lines} == {"add", "big"}
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Per-capability results" in report
    assert "Collapsed capabilities of student: big." in report
    assert (tmp_path / "eval" / "categories.png").stat().st_size > 1000


def test_a_category_too_small_to_tell_is_never_flagged_collapsed() -> None:
    """Three problems the student fails and the teacher solves: the bootstrap says [0, 0],
    which is the sample's narrowness, not evidence. No outcome on 3 problems can show a
    retention below 0.8 at 95% (z^2 / n = 1.28), so it is shown as too small, not flagged."""
    models = labelled_set()
    for i in range(3):
        models["teacher"].append(sample("teacher", f"tiny-{i}", True, "tiny"))
        models["student"].append(sample("student", f"tiny-{i}", False, "tiny"))
    table = category_results(models, "teacher", collapse_below=0.8, resamples=500)
    rows = {row["name"]: row for row in table["categories"]}
    tiny = rows["tiny"]["models"]["student"]
    assert tiny["retention"]["high"] == pytest.approx(0.0)  # the bootstrap's [0, 0]
    assert rows["tiny"]["too_small"] is True and tiny["collapsed"] is False
    assert table["collapsed"] == {"student": ["hard"]} and table["too_small"] == ["tiny"]
    assert table["too_small_max_problems"] == 4  # 1.96^2 / 0.8 = 4.8
    lines = "\n".join(render_categories(table, "teacher", "95%"))
    assert "| tiny | 3 (too small to tell) |" in lines and "Too small to tell: tiny." in lines

    # "Too small" follows the level and the threshold, not a fixed count: at 50% confidence
    # (z^2 = 0.45) three failed problems are evidence enough.
    loose = category_results(models, "teacher", collapse_below=0.8, resamples=500, level=0.5)
    assert loose["collapsed"]["student"] == ["hard", "tiny"] and loose["too_small"] == []
