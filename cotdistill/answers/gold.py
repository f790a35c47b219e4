"""Reading a problem's gold answer: marked, bare, or exactly one number; anything else is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from cotdistill.answers.extract import (
    MATH,
    NUMBER,
    PHRASE,
    alternatives,
    final_box,
    first_answer,
    first_sentence,
    from_math,
    has_words,
    math_content,
    number_text,
    with_roots,
)

# --- gold answers ---------------------------------------------------------------------------------
GoldRule = Literal["boxed", "hashes", "bare", "phrase", "single_number", "raw"]


class GoldError(ValueError):
    """A reference solution that holds no single answer; the caller names file, line, field."""


@dataclass(frozen=True)
class Gold:
    """A gold answer and the rule that read it (reports count the `single_number` ones)."""

    answer: str
    rule: GoldRule


def is_bare_answer(text: str) -> bool:
    """A number, fraction, expression or LaTeX with no sentence words, or one word (`Paris`)."""
    text = text.strip()
    return bool(text) and (not has_words(text) or re.fullmatch(r"[^\W\d_]+", text) is not None)


def _bare(text: str) -> str:
    """A bare answer's text: numbers normalised (`1,000` -> `1000`), math delimiters dropped."""
    text = text.strip()
    number = NUMBER.fullmatch(text.rstrip("."))
    if number is not None:
        return number_text(number)
    math = MATH.fullmatch(text.rstrip("."))
    if math is not None:
        return from_math(math_content(math)) or text
    return with_roots(text)


def _gold_from_text(text: str, marked: GoldRule | None) -> Gold:
    """A gold written without a box: bare, after "the answer is", or the one number it holds."""
    if is_bare_answer(text):
        return Gold(_bare(text), marked or "bare")
    roots = alternatives(text)
    if roots is not None and roots[1]:
        return Gold(roots[0], marked or "bare")
    if marked is not None:  # `#### 42 dollars`: marked, so read as a prediction's answer would be
        found = first_answer(text, at_start=True)
        if found:
            return Gold(found, marked)
    phrases = list(PHRASE.finditer(text))
    if phrases:
        sentence = first_sentence(text[phrases[-1].end() :].lstrip())
        roots = alternatives(sentence)
        found = roots[0] if roots is not None else first_answer(sentence)
        if found:
            return Gold(found, "phrase")
    numbers = list(NUMBER.finditer(text))
    if len(numbers) == 1:
        return Gold(number_text(numbers[0]), "single_number")
    raise GoldError(
        f"gold answer {_preview(text)} is text holding {len(numbers)} numbers, not one answer: "
        "mark it (\\boxed{...}, '#### ...', 'The answer is ...'), or set answer_format: raw"
    )


def _preview(text: str, width: int = 60) -> str:
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def read_gold(solution: str, answer_format: str = "auto") -> Gold:
    """The gold answer of a reference solution and the rule that found it (rules: module doc).

    Raises GoldError for a solution that holds no single answer: an unclosed `\\boxed{`, or text
    with no marker that is not a bare answer and holds no number or several.
    """
    solution = solution.strip()
    if answer_format == "raw":
        return Gold(solution, "raw")
    if answer_format in ("boxed", "auto"):
        box = final_box(solution)
        if box is not None and not box.closed:
            raise GoldError(f"gold answer {_preview(solution)} opens a \\boxed{{ that never closes")
        if box is not None:
            return Gold(with_roots(box.content), "boxed")
    if answer_format in ("gsm8k", "auto") and "####" in solution:
        value = solution.rsplit("####", 1)[1].strip().strip("*").strip()
        return _gold_from_text(value, "hashes")
    return _gold_from_text(solution, None)


def extract_gold(solution: str, answer_format: str = "auto") -> str:
    """The gold answer from a reference solution; LaTeX answers are kept whole (GoldError if
    none: see `read_gold`)."""
    return read_gold(solution, answer_format).answer
