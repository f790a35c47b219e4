"""Whether two answers are the same: plain numbers first, then math-verify."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

Verdict = Literal["correct", "wrong", "timeout", "unverifiable"]


_THOUSANDS = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


_PLAIN = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")


@dataclass
class VerifyStats:
    """How the verdicts were reached, so benchmarks can count the fast path honestly."""

    pairs: int = 0
    unverifiable_missing: int = 0
    fast_path: int = 0
    unique_checked: int = 0
    timeouts: int = 0
    workers_killed: int = 0
    seconds: float = 0.0
    by_verdict: dict[str, int] = field(default_factory=dict)


def plain_number(text: str) -> Decimal | None:
    """The value of a plain decimal number (`-1,234.50`, `$7`, `3.`), else None."""
    text = text.strip().replace("\u2212", "-").strip("$").strip()
    text = text.replace("\\$", "").replace("\\,", "").replace("\\!", "")
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if not _PLAIN.match(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def answer_key(answer: str) -> str:
    """A canonical form for grouping equal answers (majority vote, agreement).

    Plain numbers compare by value (`"3.0"` and `"3"` share a key); anything else by its text
    with whitespace, `$` and `\\left`/`\\right` removed.
    """
    value = plain_number(answer)
    if value is not None:
        if value == 0:
            return "0"
        return format(value.normalize(), "f")
    text = answer.replace("\\left", "").replace("\\right", "").replace("\\!", "")
    return re.sub(r"\s+|\$", "", text).rstrip(".")


def fast_verdict(gold: str, predicted: str) -> Verdict | None:
    """Decide without math-verify where that is exact, else None.

    Equal plain numbers are correct; two different integers are wrong. Different decimals go
    to math-verify (it has its own rounding rules), as does anything that is not a number.
    """
    g, p = plain_number(gold), plain_number(predicted)
    if g is not None and p is not None:
        if g == p:
            return "correct"
        if g == g.to_integral_value() and p == p.to_integral_value():
            return "wrong"
        return None
    if answer_key(gold) == answer_key(predicted):
        return "correct"
    return None


class _ItemTimeout(BaseException):
    """The worker's alarm; a BaseException so math-verify's `except Exception` misses it."""


def _parse(text: str) -> list[Any]:
    """math-verify's own reading of an answer text already extracted by `answers.py`.

    The rule set is split at one line: `answers.extract_answer` / `read_gold` find which part
    of a text is the answer (where tests/test_answer_rules.py shows math-verify's extraction
    wrong: an unclosed box, roots in prose, "the answer is wrong", thin-space thousands), and
    math-verify's `LatexExtractionConfig` / `ExprExtractionConfig` turn that part into math
    (sets, intervals, `\\frac`, `\\sqrt`, units in `\\text{}`) and decide equality.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    # Bare expressions (`x^2+1`) need math delimiters to be read as LaTeX; numbers work either way.
    delimited = "$" in text.replace("\\$", "") or "\\(" in text or "\\[" in text
    if not delimited:
        parsed = parse(f"${text}$", extraction_config=configs, parsing_timeout=None,
                       fallback_mode="no_fallback")
        if parsed:
            return parsed
    return parse(text, extraction_config=configs, parsing_timeout=None,
                 fallback_mode="no_fallback")


def verify_one(gold: str, predicted: str, timeout_s: float | None = None) -> Verdict:
    """math-verify on one pair, gold first; with a timeout, call only from a main thread."""
    from math_verify import verify

    def on_alarm(signum: int, frame: Any) -> None:
        raise _ItemTimeout

    previous = None
    if timeout_s:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        gold_parsed = _parse(gold)
        pred_parsed = _parse(predicted)
        if not gold_parsed or not pred_parsed:
            return "unverifiable"
        return "correct" if verify(gold_parsed, pred_parsed, timeout_seconds=None) else "wrong"
    except _ItemTimeout:
        return "timeout"
    finally:
        if timeout_s:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
