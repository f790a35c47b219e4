"""Problems the teacher writes: the shipped prompts load and render, and replies are read."""

from __future__ import annotations

import pytest

from cotdistill.synthesize.config import WRITTEN
from cotdistill.synthesize.variants import Seed
from cotdistill.synthesize.writer import read_written, writing_prompts

SEED = Seed("s", "Ann has 3 pens and gets 4 more. How many pens does she have?", "7")


@pytest.mark.parametrize("strategy", WRITTEN)
def test_every_prompt_loads_and_shows_the_seed(strategy: str) -> None:
    ((candidate, messages),) = writing_prompts([SEED], strategy, 1)
    assert candidate.id == f"s~{strategy}-0" and candidate.reject is None
    assert messages is not None and SEED.question in messages[-1].content
    assert ("Answer: 7" in messages[-1].content) == (strategy == "backward")


def test_backward_needs_a_gold() -> None:
    ((candidate, messages),) = writing_prompts([Seed("g", SEED.question, None)], "backward", 1)
    assert messages is None and "gold" in (candidate.reject or "")


@pytest.mark.parametrize(("reply", "question", "reason"), [
    ("New problem: Tom has 5 cats and buys 2 more. How many cats?\n\nSolution: 5 + 2 = 7",
     "Tom has 5 cats and buys 2 more. How many cats?", None),
    ("Sure! Here it is.\nNew Problem: Mia reads 12 pages a day for 3 days. How many pages?\n"
     "Answer: 36", "Mia reads 12 pages a day for 3 days. How many pages?", None),
    ("A farmer owns 8 cows and sells 3. How many cows are left?", "A farmer owns 8 cows and "
     "sells 3. How many cows are left?", None),
    ("New problem:", "", "the teacher wrote no problem"),
    ("New problem: A farmer owns some cows and sells a few. How many are left?", None,
     "the written problem has no number"),
    ("New problem: A farmer owns 8 cows and sells 3 of them at the market.", None,
     "the written problem asks no question"),
])
def test_read_written(reply: str, question: str | None, reason: str | None) -> None:
    got, why = read_written(reply)
    if question is not None:
        assert got == question
    assert (why or "").startswith(reason or "") and (why is None) == (reason is None)
