"""The safe arithmetic evaluator: exact values, and everything that is not arithmetic refused."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cotdistill.synthesize.arithmetic import EquationError, evaluate


@pytest.mark.parametrize(("text", "value"), [
    ("48/2", Fraction(24)),
    ("48+24", Fraction(72)),
    ("100-50-30-15", Fraction(5)),
    ("0.1+0.2", Fraction(3, 10)),  # exact, not 0.30000000000000004
    ("(12.5 - 2) * 3", Fraction(63, 2)),
    ("-3 + +4", Fraction(1)),
    ("2**10", Fraction(1024)),
    ("2**-1", Fraction(1, 2)),
    ("10/3", Fraction(10, 3)),
    ("12x3", Fraction(36)),  # GSM8K writes x for times
    (".5*8", Fraction(4)),
])
def test_values(text: str, value: Fraction) -> None:
    assert evaluate(text) == value


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')",
    "open('f')",
    "a + 1",  # a name with no value
    "1 if 1 else 2",
    "[1, 2]",
    "'3' * 2",
    "1 // 2",
    "7 % 2",
    "9**9**9",  # the exponent 9**9 is not small: refused, not computed
    "1/0",
    "0**-1",
    "1,000 + 1",
    "True + 1",
    "1 +",
    "1" * 600,
])
def test_refused(text: str) -> None:
    with pytest.raises(EquationError):
        evaluate(text)
