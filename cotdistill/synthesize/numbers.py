"""The numbers written in a problem's text, their kinds, and new values of the same kind.

A number is a run of digits (thousands commas between groups of three, one decimal part)
that is not glued to a letter, a colon or a slash (`3rd`, `5:30`, `1/2` stay as they are:
ordinals, times and fractions are not quantities to change). Its kind decides what may
replace it:

- `integer`: a whole number (`48`, `1,200`); the new one is whole and positive if it was;
- `money`: written after `$` or with exactly two decimals (`$12`, `7.50`); the new one keeps
  its cents (two decimals if the seed had them, whole dollars if not);
- `decimal`: other decimals keep their number of places;
- `percent`: followed by `%`; a whole percent in 1..100.

    spans("She buys 3 pens at $1.25 each, 20% off.")
      -> [NumberSpan(3, integer), NumberSpan(1.25, money), NumberSpan(20, percent)]
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Literal

Kind = Literal["integer", "money", "decimal", "percent"]

_NUMBER = re.compile(r"(?<![\w.:/,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w:/]|[.,]\d)")


@dataclass(frozen=True)
class NumberSpan:
    start: int
    end: int
    value: Fraction
    kind: Kind
    places: int  # decimal places as written
    commas: bool  # written with thousands commas


def spans(text: str) -> list[NumberSpan]:
    """The changeable numbers of `text`, in order."""
    found = []
    for match in _NUMBER.finditer(text):
        whole, fraction = match.group(1), match.group(2) or ""
        places = len(fraction) - 1 if fraction else 0
        value = Fraction(Decimal(whole.replace(",", "") + fraction))
        before = text[max(0, match.start() - 1) : match.start()]
        after = text[match.end() : match.end() + 1]
        kind: Kind
        if after == "%":
            kind = "percent"
        elif before == "$" or places == 2:
            kind = "money"
        elif places:
            kind = "decimal"
        else:
            kind = "integer"
        found.append(NumberSpan(match.start(), match.end(), value, kind, places, "," in whole))
    return found


def write_number(value: Fraction, span: NumberSpan) -> str:
    """`value` written as the seed wrote `span` (places, thousands commas)."""
    places = span.places
    text = f"{Decimal(value.numerator) / Decimal(value.denominator):.{places}f}"
    if span.commas:
        whole, _, cents = text.partition(".")
        text = f"{int(whole):,}" + (f".{cents}" if cents else "")
    return text


def draw(span: NumberSpan, rng: random.Random) -> Fraction:
    """A new value of the span's kind, near the old one (between half and twice it, and at
    least 1..10 for small numbers), never equal to it when another is possible."""
    old = span.value
    step = Fraction(1, 10 ** span.places)
    if span.kind == "percent":
        low, high = Fraction(1), Fraction(100) if old <= 100 else old * 2
        step = Fraction(1) if old.denominator == 1 else step
    else:
        low = max(step, old / 2)
        high = max(old * 2, Fraction(10) if old.denominator == 1 else old * 2)
    if old == 0:
        return Fraction(0)  # a zero is a fact of the story ("0 left"), not a quantity
    # round bounds onto the grid of the number as written
    first, last = int(low / step) or 1, max(int(high / step), 1)
    if last <= first:
        return old
    for _ in range(20):
        new = rng.randint(first, last) * step
        if new != old:
            return new
    return old


def format_answer(value: Fraction) -> str:
    """A gold answer as text: whole numbers without a decimal point, others as decimals
    (exact: the caller only keeps results whose decimals terminate)."""
    if value.denominator == 1:
        return str(value.numerator)
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".")


def decimal_places(value: Fraction, limit: int = 6) -> int | None:
    """How many decimal places `value` needs, None if more than `limit` (1/3)."""
    for places in range(limit + 1):
        if (value * 10**places).denominator == 1:
            return places
    return None
