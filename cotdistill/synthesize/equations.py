"""Equations a seed problem ships, turned into a small program over its question's numbers.

GSM8K annotates each step of its solution as `<<48/2=24>>`; other sets give one `equation`
(or `Equation`) field (`x = (5 + 3) * 2`, `( 12.0 - 5.0 )`) whose value is the answer. Each
operand is read as, in this order: a number of the question (by value; equal numbers of the
question are tied to one another), the result of an earlier equation, else a constant that
stays (the `2` of "half as many", the `60` minutes of an hour). Replaying the program with new
question numbers gives the new results exactly (cotdistill/synthesize/arithmetic.py).

    program = compile_program(["48/2=24", "48+24=72"], spans(question), gold="72")
    program.run({Fraction(48): Fraction(30)}) -> [Fraction(15), Fraction(45)]
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from cotdistill.synthesize.arithmetic import EquationError, parse, value_of
from cotdistill.synthesize.numbers import NumberSpan, decimal_places

_ANNOTATION = re.compile(r"<<([^<>]*?)=([^<>=]*)>>")
# A worked step in the solution's prose, `4+6=10`, `2/3 x 75 = 50`, `$12 * 2 = $24`.
_PROSE = re.compile(
    r"(?<![\w.])([\d$.(][\d$.,()+\-*/x×÷ ]*?)\s*=\s*\$?(\d[\d,]*(?:\.\d+)?)(?![\w.]\d)"
)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_EQUATION_FIELDS = ("equation", "Equation", "equations", "Equations")


def solution_equations(text: str) -> list[str]:
    """The worked steps of a GSM8K solution, in order: its `<<a*b=c>>` annotations and the
    steps written in prose without one (GSM8K annotates some steps only: "Sam memorized
    4+6=10 digits"). A prose step that repeats the annotation beside it is read once; one
    with words in it is not read (`23 total meters - 13 meters = 10`)."""
    found: list[tuple[int, str]] = []
    spans_taken = []
    for match in _ANNOTATION.finditer(text):
        found.append((match.start(), f"{match.group(1)}={match.group(2)}"))
        spans_taken.append((match.start(), match.end()))
    blank = _ANNOTATION.sub(lambda m: " " * len(m.group(0)), text)
    for match in _PROSE.finditer(blank):
        if any(match.start() <= a < match.end() for a, _ in spans_taken):
            continue  # `48/2 = <<48/2=24>>24`: the annotation already says it
        expr = _THOUSANDS.sub("", match.group(1)).replace("$", "").strip()
        if not re.search(r"\d\s*[-+*/x×÷]\s*[\d.(]", expr):
            continue  # `that is 5 = 5`: no operation
        found.append((match.start(), f"{expr}={_THOUSANDS.sub('', match.group(2))}"))
    return [equation for _, equation in sorted(found)]


def seed_equations(row: dict[str, Any], answer_fields: tuple[str, ...]) -> list[str]:
    """The seed's equations as `expression=result` strings: GSM8K annotations (and worked
    steps) in its solution, else its equation field(s) (`expression` alone, the result is
    the gold)."""
    for name in answer_fields:
        text = row.get(name)
        if isinstance(text, str) and "<<" in text:
            return solution_equations(text)
    for name in _EQUATION_FIELDS:
        value = row.get(name)
        items = value if isinstance(value, list) else [value]
        found = []
        for item in items:
            if isinstance(item, str) and item.strip():
                # `x = (5 + 3)` or `X=(5+3)`: the expression is right of the unknown
                expr = re.sub(r"^\s*[a-zA-Z]\s*=\s*", "", item.strip())
                found.append(expr)
        if found:
            return found
    return []


@dataclass(frozen=True)
class Step:
    tree: ast.expr  # operands replaced by names q<value-index>, r<step>
    written: Fraction | None  # the result the seed wrote, if any


@dataclass(frozen=True)
class Program:
    """Equations over the question's distinct values (`values`, indexed by q0, q1, ...)."""

    values: tuple[Fraction, ...]
    steps: tuple[Step, ...]
    answer_step: int
    used: frozenset[int]  # indices of the values some equation reads

    def run(self, new: dict[Fraction, Fraction]) -> list[Fraction]:
        """Every step's result with the question's values replaced as `new` says."""
        names = {f"q{i}": new.get(v, v) for i, v in enumerate(self.values)}
        results = []
        for index, step in enumerate(self.steps):
            result = value_of(step.tree, names)
            names[f"r{index}"] = result
            results.append(result)
        return results


class _Rename(ast.NodeTransformer):
    def __init__(self, values: list[Fraction], results: list[Fraction]) -> None:
        self.values, self.results = values, results
        self.used: set[int] = set()  # question values read
        self.reads: set[int] = set()  # earlier steps read
        self.constants: list[Fraction] = []

    def visit_Constant(self, node: ast.Constant) -> ast.expr:
        value = value_of(node)
        if value in self.values and value in self.results:
            raise EquationError(f"{value} is both a number of the question and an earlier "
                                "step's result: which one the step reads is not known")
        if value in self.values and value != 0:
            self.used.add(self.values.index(value))
            return ast.Name(id=f"q{self.values.index(value)}", ctx=ast.Load())
        if value in self.results:
            self.reads.add(self.results.index(value))
            return ast.Name(id=f"r{self.results.index(value)}", ctx=ast.Load())
        self.constants.append(value)
        return node


def _hidden_step(constant: Fraction, values: list[Fraction]) -> bool:
    """Is `constant` one operation away from two numbers of the question (`53` beside 79 and
    26)? Then it is likely a step the solution wrote without a readable equation
    (`79 - B - 26 = 8`), and it would not follow new numbers."""
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            if i != j and constant in (a + b, a - b, a * b, a / b if b else None):
                return True
    return False


def compile_program(equations: list[str], numbers: list[NumberSpan], gold: str | None) -> Program:
    """A program whose answer step reproduces the seed's gold; EquationError says why not
    (no equations, an unreadable one, a written result the expression does not give, no
    step whose result is the gold, an answer that depends on no question number, a constant
    that looks like a hidden step)."""
    if not equations:
        raise EquationError("no equations")
    if gold is None:
        raise EquationError("the seed has no gold answer")
    try:
        gold_value = Fraction(gold.replace(",", ""))
    except ValueError as exc:
        raise EquationError(f"gold {gold!r} is not a number") from exc
    values = list(dict.fromkeys(span.value for span in numbers))
    steps, results, depends = [], [], []  # depends: question values each step reads, at all
    for equation in equations:
        expr, _, written_text = equation.partition("=")
        tree = parse(expr)
        value = value_of(tree)
        written = None
        if written_text.strip():
            written = Fraction(value_of(parse(written_text.replace(",", ""))))
            if written != value:
                raise EquationError(f"{equation!r} computes {value}, not {written}")
        rename = _Rename(values, results)
        steps.append(Step(rename.visit(tree), written))
        depends.append(rename.used.union(*(depends[r] for r in rename.reads)))
        results.append(value)
        hidden = next((c for c in rename.constants if _hidden_step(c, values)), None)
        if hidden is not None:
            raise EquationError(f"{equation!r} reads {hidden}, which two numbers of the "
                                "question make in a step with no readable equation")
    if len(equations) == 1 and steps[0].written is None and results[0] != gold_value:
        raise EquationError(f"the equation gives {results[0]}, the gold is {gold}")
    answer = max((i for i, r in enumerate(results) if r == gold_value), default=None)
    if answer is None:
        raise EquationError(f"no equation gives the gold {gold}")
    if not depends[answer]:
        raise EquationError("the answer depends on no number of the question")
    # Only the numbers the answer depends on change: another may be used in prose that the
    # equations do not show.
    return Program(tuple(values), tuple(steps), answer, frozenset(depends[answer]))


def same_kind(old: Fraction, new: Fraction) -> str | None:
    """Why the new result of a step is not like the seed's (None: it is). Whole results stay
    whole, non-negative ones non-negative, and decimals terminate within two places more."""
    if old >= 0 > new:
        return "negative"
    if old != 0 and new == 0:
        return "zero"
    if old.denominator == 1 and new.denominator != 1:
        return "not whole"
    places_old = decimal_places(old) or 0
    places_new = decimal_places(new)
    if places_new is None or places_new > max(2, places_old):
        return "too many decimals"
    return None
