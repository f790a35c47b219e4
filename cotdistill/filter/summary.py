"""Per-trace measures the checks read: confidence, lengths, repetition."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cotdistill.answers.equivalence import Verdict, answer_key
from cotdistill.answers.extract import extract_answer
from cotdistill.errors import InputError
from cotdistill.filter.config import REASONING_TAIL, FilterConfig
from cotdistill.filter.contamination import text_sketch
from cotdistill.reasoning import (
    Markers,
    trace_reasoning,
)
from cotdistill.records import Trace
from cotdistill.textstats import repeat_share


@dataclass(slots=True)
class Summary:
    """What the decision needs to know about one trace (kept in memory between the passes)."""

    problem_id: str | None
    teacher: str = ""
    gold: str | None = None
    predicted: str | None = None
    key: str | None = None
    mean_logprob: float | None = None
    min_logprob: float | None = None
    num_tokens: int = 0
    text_hash: int = 0
    sketch: bytes = b""
    early: tuple[str, ...] = ()
    verdict: Verdict | None = None
    label: Literal["gold", "majority"] | None = None
    correct: bool | None = None
    agreement: float | None = None
    reasons: tuple[str, ...] = ()
    error: str | None = field(default=None)
    # Reasoning teachers only (None otherwise): see cotdistill/reasoning.py.
    reasoning_tokens: int | None = None
    answer_tokens: int | None = None
    finished_thinking: bool | None = None
    # Problems labelled by majority: votes for the label, and traces that voted.
    votes: int | None = None
    voters: int | None = None
    # The yield report (filter/yield_report.py): which sample it was, how it ended, its limit.
    sample_index: int = 0
    finish_reason: str | None = None
    max_tokens: int | None = None


def confidence(trace: Trace) -> tuple[float | None, float | None]:
    """(mean, min) token logprob, from the stored fields or the token list."""
    if trace.mean_logprob is not None and trace.min_logprob is not None:
        return trace.mean_logprob, trace.min_logprob
    if trace.token_logprobs:
        values = trace.token_logprobs
        return sum(values) / len(values), min(values)
    return trace.mean_logprob, trace.min_logprob


def summarize(
    trace: Trace, config: FilterConfig, contaminated: Callable[[str], bool] | None = None,
    opened: bool = False,
) -> Summary:
    """Extract the answer and run the checks that need only this trace.

    A reasoning teacher's answer is read from what follows its thinking only (an answer tried
    and abandoned inside the thinking is not one), unless `answer_from_reasoning`. `opened`:
    the prompt opened the thinking (`PromptOpening`), for traces that do not store their split.
    """
    mean, low = confidence(trace)
    view = trace_reasoning(trace, Markers(config.think_start, config.think_end), opened)
    predicted = extract_answer(view.answer_text, config.fallback_last_number)
    if predicted is None and config.answer_from_reasoning and view.reasoning:
        predicted = extract_answer(view.reasoning[-REASONING_TAIL:], config.fallback_last_number)
    early: list[str] = []
    if contaminated is not None and contaminated(trace.question):
        early.append("contaminated")
    if config.drop_unfinished_thinking and view.finished_thinking is False:
        early.append("unfinished_thinking")
    if config.drop_truncated and trace.finish_reason == "length":
        early.append("truncated")
    if config.require_final_answer and view.finished_thinking and not view.answer_text.strip():
        early.append("no_final_answer")
    if config.require_answer and predicted is None:
        early.append("no_answer")
    if trace.num_tokens is not None and trace.num_tokens < config.min_tokens:
        early.append("too_short")
    if (config.max_tokens is not None and trace.num_tokens is not None
            and trace.num_tokens > config.max_tokens):
        early.append("too_long")
    if _over(view.reasoning_tokens, config.max_reasoning_tokens):
        early.append("reasoning_too_long")
    if view.reasoning is not None and _over(view.answer_tokens, config.max_answer_tokens):
        early.append("answer_too_long")
    if (
        config.max_repeat_ngram_share is not None
        and repeat_share(trace.completion, config.repeat_ngram) > config.max_repeat_ngram_share
    ):
        early.append("repetition")
    normalized = " ".join(trace.completion.split())
    key = None if predicted is None else answer_key(predicted)
    if key == predicted:
        key = predicted  # one string object, not two: summaries stay small
    return Summary(
        problem_id=sys.intern(trace.problem_id),
        teacher=sys.intern(trace.teacher or "unknown"),
        gold=trace.gold_answer,
        predicted=predicted,
        key=key,
        mean_logprob=mean,
        min_logprob=low,
        num_tokens=trace.num_tokens or 0,
        text_hash=int.from_bytes(hashlib.blake2b(normalized.encode(), digest_size=8).digest()),
        sketch=text_sketch(normalized) if config.dedup == "near" else b"",
        early=tuple(early),
        reasoning_tokens=view.reasoning_tokens,
        answer_tokens=view.answer_tokens if view.reasoning is not None else None,
        finished_thinking=view.finished_thinking,
        sample_index=trace.sample_index,
        finish_reason=None if trace.finish_reason is None else sys.intern(trace.finish_reason),
        max_tokens=None if trace.sampling is None else trace.sampling.max_tokens,
    )


def _over(value: int | None, limit: int | None) -> bool:
    return limit is not None and value is not None and value > limit


def invalid_summary(error: str) -> Summary:
    return Summary(problem_id=None, early=("invalid_record",), reasons=("invalid_record",),
                   error=error)


def check_logprobs_present(
    summary: Summary, config: FilterConfig, file: Path | str | None = None,
    line: int | None = None,
) -> None:
    """A confidence threshold on traces without logprobs is a configuration error, not a reject."""
    for name, value, field_name in (
        ("min_mean_logprob", summary.mean_logprob, "mean_logprob"),
        ("min_token_logprob", summary.min_logprob, "min_logprob"),
    ):
        if getattr(config, name) is not None and value is None:
            raise InputError(
                f"{name} is set but this trace has no token logprobs (generate with "
                "--logprobs, or drop the threshold)",
                file=file, line=line, field=field_name,
            )
