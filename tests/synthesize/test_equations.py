"""Equations of a seed as a program over its question's numbers, replayed with new numbers."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cotdistill.synthesize.arithmetic import EquationError
from cotdistill.synthesize.equations import compile_program, same_kind, seed_equations
from cotdistill.synthesize.numbers import spans

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
           "clips in May. How many clips did Natalia sell altogether in April and May?")
NATALIA_SOLUTION = ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
                    "<<48+24=72>>72 clips altogether in April and May.\n#### 72")


def test_gsm8k_annotations_replayed() -> None:
    equations = seed_equations({"answer": NATALIA_SOLUTION}, ("answer",))
    assert equations == ["48/2=24", "48+24=72"]
    program = compile_program(equations, spans(NATALIA), "72")
    # 48 is the question's; 2 ("half") a constant; 24 the first step's result
    assert program.run({Fraction(48): Fraction(30)}) == [Fraction(15), Fraction(45)]
    assert program.answer_step == 1


def test_equation_field() -> None:
    question = "Tom has 5 apples and buys 3 bags of 2 apples each. How many apples now?"
    equations = seed_equations({"Equation": "x = 5 + 3 * 2"}, ("answer",))
    program = compile_program(equations, spans(question), "11")
    assert program.run({Fraction(5): Fraction(7), Fraction(3): Fraction(4)})[-1] == 15


@pytest.mark.parametrize(("equations", "gold", "why"), [
    ([], "3", "no equations"),
    (["2+2=5"], "5", "computes 4"),
    (["48/2=24"], "72", "no equation gives the gold"),
    (["import os=1"], "1", "not arithmetic"),
])
def test_unusable_equations_say_why(equations: list[str], gold: str, why: str) -> None:
    with pytest.raises(EquationError, match=why):
        compile_program(equations, spans(NATALIA), gold)


@pytest.mark.parametrize(("old", "new", "why"), [
    (Fraction(24), Fraction(15), None),
    (Fraction(24), Fraction(31, 2), "not whole"),
    (Fraction(5), Fraction(-1), "negative"),
    (Fraction(1, 5), Fraction(1, 3), "too many decimals"),
    (Fraction(1, 5), Fraction(1, 4), None),
])
def test_same_kind(old: Fraction, new: Fraction, why: str | None) -> None:
    assert same_kind(old, new) == why


def test_prose_steps_beside_annotations() -> None:
    # GSM8K annotates only some steps; the prose ones are read too, each step once
    solution = ("Carlos memorized 24/6=<<24/6=4>>4 digits of pi.\nSam memorized 4+6=10 digits "
                "of pi.\nIn all 2,000 + 1,000 = 3,000 and 23 meters - 13 meters = 10.\n#### 10")
    assert seed_equations({"answer": solution}, ("answer",)) == [
        "24/6=4", "4+6=10", "2000 + 1000=3000"]
    question = ("Sam memorized six more digits of pi than Carlos memorized. Mina memorized six "
                "times as many digits of pi as Carlos memorized. If Mina memorized 24 digits "
                "of pi, how many digits did Sam memorize?")
    program = compile_program(["24/6=4", "4+6=10"], spans(question), "10")
    assert program.run({Fraction(24): Fraction(36)})[-1] == 12  # 36/6 + 6


def test_a_number_that_is_also_an_earlier_result_is_refused() -> None:
    # 4 is in the question and the first step's result: the second step's 4 is ambiguous
    question = "Ann has 8 cakes and cuts each in 2. She gives away 4 pieces. How many are left?"
    with pytest.raises(EquationError, match="both a number of the question"):
        compile_program(["8/2=4", "4*4-4=12"], spans(question), "12")
