"""The numbers strategy: new numbers, the exact gold recomputed, the same problems on a rerun."""

from __future__ import annotations

import re
from fractions import Fraction

from cotdistill.synthesize.equations import seed_equations
from cotdistill.synthesize.variants import Seed, number_variants

RECORDS = Seed(
    "records",
    "There are 60 ridges on a vinyl record. Jerry has 4 cases, each with 3 shelves that can "
    "hold 20 records each. If his shelves are 60% full, how many ridges are there on all his "
    "records?",
    "8640",
    seed_equations({"answer": "<<4*3*20=240>>240 records\n<<240*60*.01=144>>144\n"
                              "<<144*60=8640>>8640\n#### 8640"}, ("answer",)),
)
ALISON = Seed(  # the answer step (`<<5=5>>`) reads no number of the question
    "alison", "She bought 3 large ones and 6 small ones, for $48 total. If the large tubs cost "
    "$6, how much do the small ones cost?", "5",
    seed_equations({"answer": "3*6+6*t=48\n6*t=48-18=30\nt=<<5=5>>5\n#### 5"}, ("answer",)),
)


def test_exact_gold_follows_the_new_numbers() -> None:
    made = number_variants(RECORDS, count=20)
    assert all(m.label_source == "equation" and m.reject is None for m in made)
    assert len({m.question for m in made}) == 20  # all different
    for m in made:
        ridges, cases, shelves, records, percent = map(int, re.findall(r"\d+", m.question))
        assert ridges == percent <= 100  # one value written twice: tied, and a percent
        assert Fraction(m.answer) == (Fraction(cases * shelves * records * percent, 100)
                                      * ridges)


def test_same_seed_same_problems_and_votes_when_no_exact_label() -> None:
    assert [m.question for m in number_variants(RECORDS, 3)] == [
        m.question for m in number_variants(RECORDS, 3)]
    assert number_variants(RECORDS, 3, rng_seed=1)[0].question != number_variants(
        RECORDS, 3)[0].question
    (alison,) = number_variants(ALISON, 1)
    assert alison.answer is None and alison.label_source is None
    assert alison.note is not None and alison.question != ALISON.question
    (bare,) = number_variants(Seed("x", "How many legs does a spider have?", "8"), 1)
    assert bare.reject == "no numbers in the question"
