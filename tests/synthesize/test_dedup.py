"""Made problems that copy a seed, each other or an evaluation problem are not kept: exact,
n-gram and near-duplicate, in English and in scripts other than Latin."""

from __future__ import annotations

import pytest

from cotdistill.synthesize.dedup import Novelty, jaccard, masked_words, shingles

EVAL_EN = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
           "clips in May. How many clips did Natalia sell altogether in April and May?")
EVAL_RU = ("Наталья продала заколки 48 своим подругам в апреле, а в мае она продала вдвое "
           "меньше заколок. Сколько всего заколок Наталья продала в апреле и мае?")
EVAL_ZH = "小明有48个苹果，他吃掉了一半。然后妈妈又给了他15个苹果。小明现在有多少个苹果？"


def novelty() -> Novelty:
    return Novelty(seeds=["Tom has 3 pens. How many pens?"],
                   evaluation=[EVAL_EN, EVAL_RU, EVAL_ZH], ngram=10, near_duplicate=0.3)


@pytest.mark.parametrize(("question", "why"), [
    # other numbers, same words: what the numbers strategy makes of an evaluation problem
    (EVAL_EN.replace("48", "30"), "exact duplicate of an evaluation problem"),
    (EVAL_RU.replace("48", "17"), "exact duplicate of an evaluation problem"),
    (EVAL_ZH.replace("48", "20").replace("15", "3"), "exact duplicate of an evaluation problem"),
    # one clause copied into another story
    ("Sam has a red bike. Natalia sold clips to 12 of her friends in April, and then she sold "
     "a few more.", "shares a 10-word n-gram"),
    ("Кот спит. Наталья продала заколки 9 своим подругам в апреле, а в мае она продала много.",
     "shares a 10-word n-gram"),
    ("Tom has 3 pens. How many pens?", "duplicate of a seed problem"),
])
def test_copies_are_refused(question: str, why: str) -> None:
    reason = novelty().why_not(question)
    assert reason is not None and reason.startswith(why), reason


# Every few words changed: most word 3-grams shared. The n-gram check may catch them first;
# with it out of the way (n = 40) the near-duplicate check must.
NEAR = [
    ("Natalia sold pins to 48 of her friends in March, and then she sold half as many clips "
     "in June. How many pins did Natalia sell altogether in March and June?"),
    ("Наталья продала заколки 48 своим сестрам в апреле, а в мае она продала вдвое "
     "меньше заколок. Сколько всего заколок Наталья продала за апрель и май?"),
    "小明有30个苹果，他吃掉了一半。后来爸爸又给了他5个苹果。小明现在有几个苹果？",
]


@pytest.mark.parametrize("question", NEAR)
def test_near_duplicates_are_refused(question: str) -> None:
    assert novelty().why_not(question) is not None
    alone = Novelty([], [EVAL_EN, EVAL_RU, EVAL_ZH], ngram=40, near_duplicate=0.3)
    reason = alone.why_not(question)
    assert reason is not None and reason.startswith("near-duplicate"), reason


def test_new_problems_pass_and_then_block_copies_of_themselves() -> None:
    index = novelty()
    fresh = "A baker makes 12 loaves a day for 5 days and sells 40. How many are left?"
    assert index.why_not(fresh) is None
    index.add(fresh, "made problem p~numbers-0")
    assert index.why_not(fresh) == "duplicate of made problem p~numbers-0"
    # with other numbers it is another problem (among made problems, numbers count)
    assert index.why_not(fresh.replace("12", "13")) is None
    # an unrelated Chinese problem is new
    assert index.why_not("一辆公交车上有20个人，到站下去了7个人，车上还有几个人？") is None


def test_similarity_is_number_blind_and_bounded() -> None:
    a = shingles(masked_words(EVAL_EN))
    assert jaccard(a, shingles(masked_words(EVAL_EN.replace("48", "7")))) == 1.0
    assert 0 <= jaccard(a, shingles(masked_words(EVAL_RU))) < 0.1
