"""Answer extraction and equivalence: tables of cases, including the known traps."""

from __future__ import annotations

import signal
import time

import pytest

from cotdistill.answers.equivalence import VerifyStats, answer_key, fast_verdict
from cotdistill.answers.extract import extract_answer
from cotdistill.answers.gold import extract_gold
from cotdistill.answers.workers import _verify_in_workers, check_answers

EXTRACT = [
    # (text, expected answer)
    ("so the total is \\boxed{42}.", "42"),
    ("first \\boxed{3}, then corrected: \\boxed{5}", "5"),  # repeated boxed: the last one
    ("\\boxed{5} ... so again \\boxed{5}", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
    ("\\boxed{\\frac{\\sqrt{3}}{2}} is it", "\\frac{\\sqrt{3}}{2}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("Step 1: 6*7 = 42\n#### 42", "42"),
    ("#### 1,234\n\nI hope this helps with your 3 questions!", "1234"),  # text after the answer
    ("#### $18", "18"),
    ("The answer is **73**.", "73"),  # markdown emphasis
    ("**Final Answer:** 19", "19"),
    ("Final answer: -7", "-7"),
    ("The answer is 12. Let me know if you have 3 more questions.", "12"),
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("The answer is 3/4.", "3/4"),
    ("The answer is: Sam has 12 apples.", "12"),
    ("He paid $1,234.50 in total.", "1234.50"),  # thousands separator and dollar sign
    ("It is 18 cm long.", "18"),  # units
    ("The temperature fell to -5 degrees.", "-5"),  # negative
    ("The answer is \u22124", "-4"),  # unicode minus
    ("Sam has 8 apples and gets 4 more, so Sam has 12 apples now.", "12"),  # last number
    ("there is no number here", None),
]


@pytest.mark.parametrize(("text", "expected"), EXTRACT)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


# The traps of issue 14 and their relatives: each line failed (or would fail) a rule that takes
# the last number of the "answer" clause, stops at a thin space, or keeps the words after LaTeX.
TRAPS = [
    # --- the measured traps
    ("The answer is 7, since 3+4.", "7"),
    ("The answer is 5 apples, which is 2 more than 3.", "5"),
    ("Hmm, the answer is wrong. Let me redo: 3+4=7", "7"),
    ("So the answer is x = -3/4.", "-3/4"),
    ("The answer is 1 000", "1000"),
    # --- signs, fractions, decimals
    ("The answer is -5.", "-5"),
    ("The answer is \u22124", "-4"),
    ("The answer is +3.", "3"),
    ("The answer is 3/4.", "3/4"),
    ("The answer is 3.5 kg.", "3.5"),
    ("The answer is .5", ".5"),
    ("The answer is 3 + 4 = 7.", "7"),
    ("The answer is 12 / 3 = 4 boxes.", "4"),
    # --- thousands separators
    ("The answer is 1,234.", "1234"),
    ("The answer is 1\u2009234 people.", "1234"),
    ("The answer is 1\u202f234.", "1234"),
    ("The answer is 1,234,567.89.", "1234567.89"),
    ("The answer is $1\\,000$.", "1000"),
    ("He earns 2 500 dollars a month.", "2500"),
    # --- units, money, percent
    ("The answer is $18.00", "18.00"),
    ("The answer is \\$18.", "18"),
    ("The answer is 50%.", "50%"),
    ("The answer is 50 percent of the cake.", "50%"),
    ("The answer is 18 cm long.", "18"),
    ("It costs $5 and $6 more, so $11 in all.", "11"),
    # --- phrase forms
    ("The answer is: Sam has 12 apples.", "12"),
    ("The answer is:\n\n42", "42"),
    ("**Final Answer:** 19", "19"),
    ("Answer: 8", "8"),
    ("The answer is **73**.", "73"),
    ("The answer is 12. Let me know if you have 3 more questions.", "12"),
    ("Final Answer: The final answer is $18$. I hope it is correct.", "18"),
    ("Final Answer: The final answer is $x$. I hope it is correct.", "x"),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "\\frac{3}{4}"),
    ("The answer is 6. I hope this answer is helpful for your 2 exams.", "6"),
    ("First the answer is 5. Wait, the answer is 6.", "6"),
    # --- LaTeX answers kept whole
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("The answer is \\frac{3}{4}, which is 0.75.", "\\frac{3}{4}"),
    ("The answer is \\sqrt{2}.", "\\sqrt{2}"),
    ("The answer is 2\\sqrt{3} units.", "2\\sqrt{3}"),
    ("The answer is -\\frac{1}{3}.", "-\\frac{1}{3}"),
    ("The answer is $x = \\frac{\\pi}{2}$.", "\\frac{\\pi}{2}"),
    ("The answer is (1, 2).", "(1, 2)"),
    ("The answer is $(-\\infty, 3]$.", "(-\\infty, 3]"),
    ("The answer is [0, 1).", "[0, 1)"),
    # --- boxed and ####
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("The answer is \\boxed{5} apples, not 6.", "5"),
    ("#### 1,234", "1234"),
    ("Step 1: 6*7 = 42\n#### 42", "42"),
    ("#### Step 2: check\nThe answer is 7.", "7"),
    ("#### $18", "18"),
    ("#### -5", "-5"),
    # --- the last-number fallback
    ("Sam has 8 apples and gets 4 more, so Sam has 12 apples now.", "12"),
    ("The pages are 10-12.", "12"),
    ("It is 100m2 in area.", "100"),
    ("The temperature fell to -5 degrees.", "-5"),
    ("Version 1.2 is out, and 3.14 is pi.", "3.14"),
    ("there is no number here", None),
    ("The answer is unknown.", None),
]


@pytest.mark.parametrize(("text", "expected"), TRAPS)
def test_extraction_traps(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_a_capture_with_no_answer_falls_through() -> None:
    text = "Hmm, the answer is wrong. Let me redo: 3+4=7"
    assert extract_answer(text, fallback_last_number=True) == "7"
    assert extract_answer(text, fallback_last_number=False) is None
    # A markdown heading after the answer line is not a `####` answer.
    assert extract_answer("#### 42\n\n#### Notes", fallback_last_number=False) == "42"
    assert extract_answer("#### Step 2: add", fallback_last_number=False) is None


def test_fallback_last_number_can_be_switched_off() -> None:
    text = "Sam has 12 apples now."
    assert extract_answer(text, fallback_last_number=True) == "12"
    assert extract_answer(text, fallback_last_number=False) is None
    # explicit answers do not depend on the fallback
    assert extract_answer("The answer is 12.", fallback_last_number=False) == "12"


@pytest.mark.parametrize(
    ("solution", "fmt", "expected"),
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "auto", "7"),
        ("#### 1,000", "gsm8k", "1000"),
        ("So $x = \\boxed{\\frac{3}{4}}$.", "auto", "\\frac{3}{4}"),
        ("42", "raw", "42"),
        # Competition-math answers stay whole LaTeX, whatever sits around them.
        ("so $(r, \\theta) = \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.", "auto",
         "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("#### Step 1\nSquare both sides: \\boxed{10\\sqrt{2}}", "auto", "10\\sqrt{2}"),
        ("\\frac{1}{2}", "auto", "\\frac{1}{2}"),
        ("(-\\infty, 3] \\cup [5, \\infty)", "auto", "(-\\infty, 3] \\cup [5, \\infty)"),
        ("#### $\\frac{1}{2}$", "gsm8k", "\\frac{1}{2}"),
        ("#### 1 000", "gsm8k", "1000"),
        ("#### -3/4", "gsm8k", "-3/4"),
    ],
)
def test_extract_gold(solution: str, fmt: str, expected: str) -> None:
    assert extract_gold(solution, fmt) == expected


EQUIVALENT = [
    # (gold, predicted, verdict) -- gold first
    ("0.5", "\\frac{1}{2}", "correct"),
    ("\\frac{1}{2}", "0.5", "correct"),
    ("1/2", "\\frac12", "correct"),
    ("1234", "1,234", "correct"),
    ("18", "\\$18", "correct"),
    ("18", "18 \\text{ cm}", "correct"),
    ("-5", "\u22125", "correct"),
    ("5", "5.0", "correct"),
    ("\\{1,2\\}", "\\{2,1\\}", "correct"),  # sets
    ("x^2+1", "1+x^2", "correct"),  # expressions
    ("\\sqrt{2}", "2^{1/2}", "correct"),
    ("3", "4", "wrong"),
    ("-5", "5", "wrong"),
    ("3", "3.0001", "wrong"),
    ("0.333", "\\frac{1}{3}", "wrong"),
    (None, "5", "unverifiable"),
    ("5", None, "unverifiable"),
]


def test_equivalence_table() -> None:
    pairs = [(g, p) for g, p, _ in EQUIVALENT]
    got = check_answers(pairs, timeout_s=5)
    assert got == [v for _, _, v in EQUIVALENT]


def test_math_verify_decides_without_the_fast_path() -> None:
    # The same table through math-verify alone: the fast path must not change a verdict.
    rows = [r for r in EQUIVALENT if r[0] is not None and r[1] is not None]
    stats = VerifyStats()
    got = check_answers([(g, p) for g, p, _ in rows], fast_path=False, stats=stats)
    assert got == [v for _, _, v in rows]
    assert stats.fast_path == 0 and stats.unique_checked == len(rows)


def test_fast_path_is_exact_and_counted() -> None:
    assert fast_verdict("1,234", "1234.0") == "correct"
    assert fast_verdict("12", "13") == "wrong"
    assert fast_verdict("0.333", "0.3333") is None  # decimals: math-verify decides
    assert fast_verdict("\\frac{1}{2}", "0.5") is None
    assert answer_key("3.0") == answer_key("3") == answer_key("$3$")
    assert answer_key("10") == "10"
    stats = VerifyStats()
    assert check_answers([("7", "7"), ("7", "8"), ("7", "7")], stats=stats) == [
        "correct", "wrong", "correct"]
    assert stats.fast_path == 3 and stats.unique_checked == 0


def test_identical_pairs_are_checked_once() -> None:
    stats = VerifyStats()
    got = check_answers([("\\frac{1}{2}", "0.5")] * 5, stats=stats)
    assert got == ["correct"] * 5
    assert stats.unique_checked == 1


def test_power_tower_is_cut_off() -> None:
    start = time.monotonic()
    got = check_answers(
        [("2^{2^{2^{2^{2^{100}}}}}", "5"), ("7", "\\frac{14}{2}")], timeout_s=1.0
    )
    assert got == ["timeout", "correct"]
    assert time.monotonic() - start < 30


def _stuck_worker(conn, timeout_s):  # noqa: ANN001 - runs in a worker process
    """A worker that ignores its alarm and never answers item 0 (a C-level hang)."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    chunk = conn.recv()
    for index, _, _ in chunk:
        if index == 0:
            time.sleep(3600)
        conn.send((index, "correct"))
    while (chunk := conn.recv()) is not None:
        for index, _, _ in chunk:
            conn.send((index, "correct"))


def test_parent_kills_a_worker_past_the_hard_limit() -> None:
    stats = VerifyStats()
    items = [(0, "a", "b"), (1, "c", "d"), (2, "e", "f")]
    start = time.monotonic()
    got = _verify_in_workers(items, 0.5, 1, stats, None, worker=_stuck_worker)
    assert got == {0: "timeout", 1: "correct", 2: "correct"}
    assert stats.workers_killed == 1
    assert time.monotonic() - start < 20
