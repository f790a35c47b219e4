"""Issue 19, items 6-11 and 14: answers read wrong, empty and numeric cells, maj@k grouping;
and the answer table of docs/answers.md checked against the real functions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cotdistill.answers.extract import extract_answer
from cotdistill.answers.gold import GoldError, extract_gold, read_gold
from cotdistill.answers.workers import check_answers, group_equivalent, group_equivalent_many
from cotdistill.errors import InputError
from cotdistill.evaluate.measures.metrics import majority_correct, majority_vote
from cotdistill.problems import LoadStats, load_problems

DOCS = Path(__file__).resolve().parents[2] / "docs" / "answers.md"

# --- item 6 -----------------------------------------------------------------------------------
BOX_WITHOUT_BRACES = [
    ("So \\boxed 5. Check: \\frac{10}{2}=5", "5"),
    ("\\boxed 12 and then \\sqrt{4}", "12"),
    ("so $\\boxed {7}$ and {9}", "7"),
    ("\\fbox 3, since {2}", "3"),
]


@pytest.mark.parametrize(("text", "expected"), BOX_WITHOUT_BRACES)
def test_boxed_without_braces_does_not_read_past_the_box(text: str, expected: str) -> None:
    assert extract_answer(text) == expected
    assert extract_gold(text) == expected


# --- item 7 -----------------------------------------------------------------------------------
ROOTS = [
    ("Final answer: x = 2 or x = 3", "\\{2, 3\\}"),
    ("The answer is $x = 2$ or $x = 3$.", "\\{2, 3\\}"),
    ("The answer is x = -1, x = 4.", "\\{-1, 4\\}"),
    ("\\boxed{x = 2 \\text{ or } x = 3}", "\\{2, 3\\}"),
    ("The answer is x = \\frac{1}{2} or x = -3", "\\{\\frac{1}{2}, -3\\}"),
    ("So x = 2 or x = 3.", "\\{2, 3\\}"),  # last-number fallback
    ("#### x = 5 or x = 6", "\\{5, 6\\}"),
    # Not roots: a list of counts, a tuple, a thousands separator, a reason after the answer.
    ("He bought 3, 4 and 5 apples", "5"),
    ("The answer is (1, 2).", "(1, 2)"),
    ("The answer is 1,234,567.89.", "1234567.89"),
    ("The answer is 7, since 3+4.", "7"),
]


@pytest.mark.parametrize(("text", "expected"), ROOTS)
def test_roots_joined_by_or_are_one_set_answer(text: str, expected: str) -> None:
    assert extract_answer(text) == expected


def test_roots_set_is_checked_as_a_set_by_math_verify() -> None:
    got = extract_answer("Final answer: x = 2 or x = 3")
    verdicts = check_answers([("2, 3", got), ("\\{3, 2\\}", got), ("2", got)])
    assert verdicts == ["correct", "correct", "wrong"]


# --- item 8 -----------------------------------------------------------------------------------
UNCLOSED = [
    "\\boxed{\\frac{1}{2",
    "so the answer is \\boxed{12",
    "first \\boxed{3}, then \\boxed{\\frac{1}{2",  # the cut box is the last word
    "The answer is 4. \\boxed{x^{2",
]


@pytest.mark.parametrize("text", UNCLOSED)
@pytest.mark.parametrize("fallback", [True, False])
def test_unclosed_box_gives_no_answer(text: str, fallback: bool) -> None:
    assert extract_answer(text, fallback_last_number=fallback) is None


@pytest.mark.parametrize("text", UNCLOSED)
def test_unclosed_box_in_a_gold_is_refused(text: str) -> None:
    with pytest.raises(GoldError, match="never closes"):
        read_gold(text)


# --- item 9 -----------------------------------------------------------------------------------
GOLD_TEXT = [
    # (gold cell, answer, rule)
    ("The total is 42 dollars.", "42", "single_number"),
    ("18 cm", "18", "single_number"),
    ("总数是42美元。", "42", "single_number"),
    ("Итого 42 рубля.", "42", "single_number"),
    ("The answer is 5 apples.", "5", "phrase"),
    ("42", "42", "bare"),
    ("\\frac{1}{2}", "\\frac{1}{2}", "bare"),
    ("x^2 + 1", "x^2 + 1", "bare"),
    ("3\\sqrt{2}", "3\\sqrt{2}", "bare"),
    ("\\text{(C)}", "\\text{(C)}", "bare"),
    ("[0, 1)", "[0, 1)", "bare"),
    ("Paris", "Paris", "bare"),
    ("\\sin(x)", "\\sin(x)", "bare"),
]


@pytest.mark.parametrize(("cell", "answer", "rule"), GOLD_TEXT)
def test_gold_text_is_read_only_when_bare_marked_or_one_number(
    cell: str, answer: str, rule: str
) -> None:
    gold = read_gold(cell)
    assert (gold.answer, gold.rule) == (answer, rule)


def test_gold_prose_is_not_taken_whole() -> None:
    gold = extract_gold("The total is 42 dollars.")
    assert check_answers([(gold, "3"), (gold, "42")]) == ["wrong", "correct"]


@pytest.mark.parametrize("cell", ["In 2020 he had 42 dollars.", "all real numbers",
                                  "Он купил 3 яблока и 4 груши."])
def test_gold_prose_with_no_or_several_numbers_is_refused_naming_file_line_field(
    tmp_path: Path, cell: str
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"question": "q1", "answer": "1"}) + "\n"
                    + json.dumps({"question": "q2", "answer": cell}) + "\n", encoding="utf-8")
    with pytest.raises(InputError) as error:
        load_problems(path)
    assert (error.value.file, error.value.line, error.value.field) == (str(path), 2, "answer")
    assert "answer_format: raw" in error.value.message


def test_golds_read_from_one_number_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [{"question": "a", "answer": "The total is 42 dollars."},
            {"question": "b", "answer": "7"}, {"question": "c", "answer": "x\n#### 3"},
            {"question": "d", "answer": "It weighs 5 kg."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = LoadStats()
    problems = load_problems(path, stats=stats)
    assert [p.gold_answer for p in problems] == ["42", "7", "3", "5"]
    assert stats.golds_from_single_number == 2
    assert stats.golds_by_rule == {"single_number": 2, "bare": 1, "hashes": 1}


# --- item 10 ----------------------------------------------------------------------------------
def _write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        import csv

        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", ["p.csv", "p.jsonl", "p.json", "p.parquet"])
def test_empty_cells_fall_through_to_the_next_candidate_field(tmp_path: Path, name: str) -> None:
    rows = [{"question": "", "problem": "What is 6*7?", "answer": "", "solution": "\\boxed{42}"},
            {"question": "Q2", "problem": "", "answer": " ", "solution": "#### 5"}]
    problems = load_problems(_write(tmp_path / name, rows))
    assert [(p.question, p.gold_answer) for p in problems] == [("What is 6*7?", "42"),
                                                               ("Q2", "5")]


# --- item 11 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "p.parquet"])
def test_numeric_golds_are_plain_decimals(tmp_path: Path, name: str) -> None:
    rows = [{"question": f"q{i}", "answer": value}
            for i, value in enumerate([5e-05, 2e16, 0.1, 3.0, 12.25, -1.5e-7])]
    problems = load_problems(_write(tmp_path / name, rows))
    assert [p.gold_answer for p in problems] == [
        "0.00005", "20000000000000000", "0.1", "3.0", "12.25", "-0.00000015"]


@pytest.mark.parametrize("name", ["p.jsonl", "p.parquet"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinite_golds_are_refused_naming_file_line_field(
    tmp_path: Path, name: str, value: float
) -> None:
    rows = [{"question": "a", "answer": 1.0}, {"question": "b", "answer": value}]
    with pytest.raises(InputError) as error:
        load_problems(_write(tmp_path / name, rows))
    assert (error.value.line, error.value.field) == (2, "answer")
    assert str(error.value).startswith(f"{tmp_path / name}:2, field 'answer'")


# --- item 14 ----------------------------------------------------------------------------------
def test_majority_groups_answers_by_math_equivalence() -> None:
    # Three spellings of one half outvote two votes for 3; by string key 3 would win.
    answers = ["3", "0.5", "3", "1/2", "\\frac{1}{2}", None]
    correct = [False, True, False, True, True, False]
    groups = group_equivalent(answers)
    assert groups == [[0, 2], [1, 3, 4]]
    assert majority_correct(answers, correct, groups=groups) is True
    vote = majority_vote(groups, correct)
    assert (vote.votes, vote.tied, vote.winner) == (3, False, (1, 3, 4))


def test_majority_tie_goes_to_the_group_answered_first_and_is_reported() -> None:
    answers = ["8", "7", "7.0", "\\frac{16}{2}"]
    groups = group_equivalent(answers)
    assert groups == [[0, 3], [1, 2]]
    vote = majority_vote(groups, [False, True, True, False])
    assert (vote.correct, vote.tied, vote.winner) == (False, True, (0, 3))
    # The rule looks at the first answer of each group, not the order the groups were given in.
    assert majority_vote([[1, 2], [0, 3]], [False, True, True, False]).winner == (0, 3)


def test_grouping_many_problems_batches_and_keeps_none_out() -> None:
    got = group_equivalent_many([["1", "2", "1"], [None, "x+1", "1+x"], []])
    assert got == [[[0, 2], [1]], [[1, 2]], []]


# --- math-verify's own extraction, where this project keeps its own code ------------------------
MATH_VERIFY_WRONG = [
    # (text, what answers.py reads; math-verify's `parse` reads something else)
    ("\\boxed{\\frac{1}{2}", None),  # it reads the cut box as 1/2
    ("Final answer: x = 2 or x = 3", "\\{2, 3\\}"),  # it reads 3
    ("Hmm, the answer is wrong. Let me redo: 3+4=7", "7"),  # it reads 3
    ("The answer is 1\u2009234 people.", "1234"),  # it reads 1
]


@pytest.mark.parametrize(("text", "ours"), MATH_VERIFY_WRONG)
def test_math_verify_extraction_is_wrong_where_answers_keeps_its_own(
    text: str, ours: str | None
) -> None:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    theirs = parse(text, extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                   parsing_timeout=None)
    assert extract_answer(text) == ours
    if ours is None:
        assert theirs  # math-verify found an answer in a cut box
    else:
        assert not theirs or not verify(parse(f"${ours}$", parsing_timeout=None), theirs,
                                         timeout_seconds=None)


# --- docs/answers.md --------------------------------------------------------------------------
_ROW = re.compile(r"^\| (extract_answer(?: \(no fallback\))?|extract_gold) \| `(.+)` \| "
                  r"(?:`(.+)`|(none|refused)) \|$")


def _doc_rows() -> list[tuple[str, str, str | None, str | None]]:
    rows = [m.groups() for line in DOCS.read_text(encoding="utf-8").splitlines()
            if (m := _ROW.match(line))]
    table = [line for line in DOCS.read_text(encoding="utf-8").splitlines()
             if line.startswith("| extract")]
    assert len(rows) == len(table) > 20, "a table row does not have the checked form"
    return rows  # type: ignore[return-value]


@pytest.mark.parametrize(("function", "text", "answer", "word"), _doc_rows())
def test_docs_table_matches_the_code(
    function: str, text: str, answer: str | None, word: str | None
) -> None:
    if function == "extract_gold":
        if word == "refused":
            with pytest.raises(GoldError):
                extract_gold(text.replace(" #### ", "\n#### "))
            return
        assert extract_gold(text.replace(" #### ", "\n#### ")) == answer
        return
    fallback = function == "extract_answer"
    assert extract_answer(text, fallback_last_number=fallback) == answer
