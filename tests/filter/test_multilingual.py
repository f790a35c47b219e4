"""Text that is not English: decontamination, near-duplicates and the repetition check read
words of every script (`textstats.words` / `units`), with one unit per character in scripts
written without spaces (issue 19, item 20)."""

from __future__ import annotations

import unicodedata

import pytest

from cotdistill.filter.contamination import Contamination, similarity, text_sketch
from cotdistill.textstats import repeat_share, units, words
from tests.helpers.traces import reasons_of, trace

# (language, evaluation question, a training question that copies it inside other text)
COPIED = [
    ("chinese", "小明有三个苹果，又买了两个，现在一共有几个苹果？",
     "请回答下面的问题。小明有三个苹果，又买了两个，现在一共有几个苹果？请写出步骤。"),
    ("russian", "У Маши было три яблока, она купила ещё два. Сколько яблок у Маши теперь, "
     "если она ничего не съела по дороге домой?",
     "Задача: у Маши было три яблока, она купила ещё два. Сколько яблок у Маши теперь, если "
     "она ничего не съела по дороге домой? Объясните."),
    ("arabic", "كان لدى أحمد ثلاث تفاحات ثم اشترى تفاحتين أخريين من السوق القريب من بيته "
     "فكم تفاحة لديه الآن في المجموع؟",
     "أجب عن السؤال: كان لدى أحمد ثلاث تفاحات ثم اشترى تفاحتين أخريين من السوق القريب من "
     "بيته فكم تفاحة لديه الآن في المجموع؟"),
    ("accented latin", "Élodie a trois pommes et en achète deux autres au marché près de "
     "l'école; combien de pommes a-t-elle maintenant après être rentrée à la maison?",
     "Question : ÉLODIE a trois pommes et en achète deux autres au marché près de l'école; "
     "combien de pommes a-t-elle maintenant après être rentrée à la maison? Réponds."),
]


@pytest.mark.parametrize(("language", "evaluation", "training"), COPIED,
                         ids=[c[0] for c in COPIED])
def test_eval_question_copied_verbatim_into_training_is_contaminated(
    language: str, evaluation: str, training: str
) -> None:
    leaked = trace("p1", question=training)
    clean = trace("p2", question="Tom has 3 coins and buys 2 more. How many coins now?")
    got = reasons_of([leaked, clean], (evaluation,), decontaminate_ngram=13)
    assert got[("p1", 0)] == ["contaminated"], language
    assert got[("p2", 0)] == []


# (language, short evaluation question, an unrelated training question with the same numbers)
UNRELATED = [
    ("russian", "Сколько будет 2 + 3?", "Вася прошёл 2 км, потом 3 км. Какое расстояние?"),
    ("arabic", "كم يساوي 2 + 3؟", "مشى علي 2 كم ثم 3 كم. ما المسافة؟"),
    ("chinese", "二加三等于多少？2 + 3", "小红走了2公里，又走了3公里。"),
]


@pytest.mark.parametrize(("language", "evaluation", "training"), UNRELATED,
                         ids=[c[0] for c in UNRELATED])
def test_non_latin_eval_question_does_not_shrink_to_its_digits(
    language: str, evaluation: str, training: str
) -> None:
    # `[a-z0-9]+` read the evaluation question as "2 3": every question with 2 then 3 leaked.
    index = Contamination([evaluation], n=13)
    assert not index(training), language
    assert index(f"Вопрос: {evaluation} Ответ?")  # the question itself, whole, still is caught


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Сколько будет 2 + 3?", ["сколько", "будет", "2", "3"]),
        ("小明有3个苹果。", ["小", "明", "有", "3", "个", "苹", "果"]),
        ("مَرْحَبًا بالعالم", ["مَرْحَبًا", "بالعالم"]),  # harakat stay inside the word
        ("हिन्दी में", ["हिन्दी", "में"]),  # vowel signs do not split the word
        ("CAFÉ Straße", ["café", "strasse"]),  # casefold
        ("ภาษาไทย", list("ภาษาไทย")),  # Thai: no spaces, one unit per character
    ],
)
def test_words_of_every_script(text: str, expected: list[str]) -> None:
    assert words(text) == expected


def test_decomposed_and_composed_accents_are_the_same_word() -> None:
    composed = "café crème"
    assert words(unicodedata.normalize("NFD", composed)) == words(composed)


def test_chinese_answer_loop_is_repetition() -> None:
    loop = "所以答案是五。" * 200
    assert repeat_share(loop, 4) > 0.9
    varied = "".join(chr(0x4E00 + i) for i in range(400))  # 400 different characters
    assert repeat_share(varied, 4) == 0.0
    assert reasons_of([trace(completion=loop + "\\boxed{5}")]) == {("p1", 0): ["repetition"]}
    # Spaced text keeps its units (symbols included), so the existing cut-offs hold.
    assert units("a b a b \\boxed{5}") == ["a", "b", "a", "b", "\\boxed{5}"]


def test_near_duplicate_chinese_traces_collapse() -> None:
    body = "".join(chr(0x4E00 + i) for i in range(300))
    near = body[:150] + "零" + body[151:]
    assert similarity(text_sketch(body), text_sketch(near)) > 0.8
    got = reasons_of([trace("p1", 0, body + "\\boxed{5}"), trace("p1", 1, near + "\\boxed{5}")],
                     dedup="near", selection_order=["input_order"])
    assert got == {("p1", 0): [], ("p1", 1): ["duplicate"]}
