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

_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?|-?\$?\.\d+")
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_ANSWER_IS = re.compile(
    r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+?)(?:\.\s|\.?$|\n)",
    re.IGNORECASE | re.MULTILINE,
)


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
    text = text.replace("$", "").replace(",", "").rstrip(".").strip()
    return text


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


def extract_answer(text: str, fallback_last_number: bool = True) -> str | None:
    """The model's final answer, or None when nothing answer-like is found."""
    boxed = last_boxed(text)
    if boxed is not None and boxed:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        value = hashes[-1].strip()
        number = last_number(value) if not value.startswith("\\") else None
        return number or value
    said = _ANSWER_IS.findall(text)
    if said:
        value = said[-1].strip()
        number = last_number(value)
        return number or clean_number(value)
    if fallback_last_number:
        return last_number(text)
    return None
