"""Numbers in a question: which are found, their kinds, and new values that keep the kinds."""

from __future__ import annotations

from fractions import Fraction

import pytest

from cotdistill.synthesize.numbers import draw, format_answer, spans, write_number
from cotdistill.synthesize.variants import rng_for


def test_kinds_and_what_is_left_alone() -> None:
    text = ("On the 3rd day at 5:30 she buys 3 pens at $1.25, 1,200 beads for $12, "
            "2.5 kg of flour, 1/2 cup of milk and gets 20% off.")
    found = [(text[s.start:s.end], s.kind) for s in spans(text)]
    assert found == [("3", "integer"), ("1.25", "money"), ("1,200", "integer"),
                     ("12", "money"), ("2.5", "decimal"), ("20", "percent")]


@pytest.mark.parametrize("written", ["48", "$12", "$7.50", "2.5", "1,200", "35%", "1"])
def test_draws_keep_the_kind(written: str) -> None:
    span = spans(f"She has {written} of them.")[0]
    changed = 0
    for k in range(200):
        new = draw(span, rng_for("t", written, k))
        text = write_number(new, span)
        again = spans(f"She has {written[0] if written[0] == '$' else ''}{text} x.")
        assert new > 0
        if span.kind in ("integer", "percent") or span.places == 0:
            assert new.denominator == 1
        assert (text.count(".") and len(text.split(".")[1])) == span.places or span.places == 0
        assert again and again[0].kind in (span.kind, "integer")
        if span.kind == "percent":
            assert new <= 100
        changed += new != span.value
    assert changed >= 190


def test_write_and_format() -> None:
    span = spans("It costs $1,234.50 now.")[0]
    assert write_number(Fraction(250001, 100), span) == "2,500.01"
    assert format_answer(Fraction(72)) == "72"
    assert format_answer(Fraction(5, 2)) == "2.5"
