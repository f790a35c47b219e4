"""Final-answer extraction from solutions and model outputs.

Gold answers: GSM8K style (`#### 42`), MATH style (last `\\boxed{...}`) or taken as they are.
Predictions: last `\\boxed{}`, then `#### x`, then `The answer is x`, then (optionally) the last
number in the text. The patterns follow the GSM8K reference (`#### `) and the MATH / lighteval
convention of the last boxed expression.

    extract_gold("... #### 1,234")          -> "1234"
    extract_answer("so \\boxed{\\frac{1}{2}}.") -> "\\frac{1}{2}"
"""

from __future__ import annotations

import re

# Thousands-separated numbers first, so "1,234" is one number, not "1" and "234".
_NUMBER = re.compile(
    r"[-\u2212]?\$?(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\d,]*\d)"
)
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer)\s*\**\s*(?:is|:|=)\s*\**\s*:?\s*(.+?)(?:\.\s|\.?$|\n)",
    re.IGNORECASE | re.MULTILINE,
)
_FRACTION = re.compile(r"^[-\u2212]?\d+\s*/\s*\d+$")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), with nested braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        # `\boxed 5` form
        match = re.match(r"\\(?:boxed|fbox)\s+([^\s$]+)", text[start:])
        return match.group(1) if match else None
    depth = 0
    for pos in range(brace, len(text)):
        if text[pos] == "{":
            depth += 1
        elif text[pos] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : pos].strip()
    return None


def clean_number(text: str) -> str:
    """Drop thousands separators, dollar signs, markdown emphasis and trailing dots."""
    text = text.strip().strip("*").strip()
    text = text.replace("\\$", "").replace("$", "").replace("\u2212", "-")
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?\.?", text):
        text = text.replace(",", "")
    return text.rstrip(".").strip()


def _math_part(text: str) -> str | None:
    """A LaTeX or fraction answer said in words (`The answer is $\\frac{1}{2}$.`), else None."""
    text = text.strip().strip("*").strip()
    inline = re.findall(r"\$+([^$]+)\$+|\\\((.+?)\\\)", text)
    if inline:
        first, second = inline[-1]
        candidate = (first or second).strip()
    elif "\\" in text:
        candidate = text
    else:
        candidate = text.rstrip(".")
        return candidate if _FRACTION.match(candidate) else None
    return candidate if re.search(r"[\\^/]", candidate) else None


def extract_gold(solution: str, answer_format: str = "auto") -> str:
    """The gold answer from a reference solution."""
    solution = solution.strip()
    if answer_format in ("gsm8k", "auto") and "####" in solution:
        return clean_number(solution.rsplit("####", 1)[1])
    if answer_format in ("boxed", "auto"):
        boxed = last_boxed(solution)
        if boxed is not None:
            return boxed
    return solution


def last_number(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return clean_number(numbers[-1]) if numbers else None


def _from_phrase(value: str) -> str | None:
    """The answer inside `#### ...` or `The answer is ...`: LaTeX kept whole, else its number."""
    value = value.strip()
    math = _math_part(value)
    if math is not None:
        return math
    number = last_number(value)
    if number is not None:
        return number
    value = clean_number(value)
    return value or None


def extract_answer(text: str, fallback_last_number: bool = True) -> str | None:
    """The model's final answer, or None when nothing answer-like is found.

    Order: the last non-empty `\\boxed{}`, the last `#### x`, the last `The answer is x` /
    `Final answer: x`, then (if allowed) the last number anywhere in the text.
    """
    boxed = last_boxed(text)
    if boxed:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        found = _from_phrase(hashes[-1])
        if found:
            return found
    said = _ANSWER_IS.findall(text)
    if said:
        found = _from_phrase(said[-1])
        if found:
            return found
    if fallback_last_number:
        return last_number(text)
    return None
