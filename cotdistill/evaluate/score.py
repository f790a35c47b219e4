"""The core of evaluate: problems and a backend in, scored samples out (no files)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from math import exp
from typing import Any

from cotdistill.answers.extract import extract_answer
from cotdistill.backends import Backend
from cotdistill.config import SamplingConfig
from cotdistill.evaluate.config import EvalSample, Verifier
from cotdistill.prompts import PromptTemplate
from cotdistill.reasoning import (
    DEFAULT_MARKERS,
    Markers,
    reasoning_fields,
)
from cotdistill.records import Problem, logprob_stats

# --- the core: records in, records out -------------------------------------------------------


def default_verifier(timeout_s: float) -> Verifier:
    def check(pairs: Sequence[tuple[str | None, str | None]]) -> list[str]:
        from cotdistill.answers.workers import check_answers

        return list(check_answers(pairs, timeout_s=timeout_s))

    return check


def evaluate_model(
    name: str,
    problems: Sequence[Problem],
    template: PromptTemplate,
    backend: Backend,
    sampling: SamplingConfig,
    verify: Verifier,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
    fallback_last_number: bool = True,
) -> tuple[list[EvalSample], float]:
    """Sample `sampling.n` answers per problem and check them; returns (samples, seconds spent
    generating). Answers are checked after generation so verification never counts as latency.
    A reasoning model's answer is read from what follows its thinking (`markers`; `opened`:
    its chat template opens the thinking in the prompt).
    """
    rows: list[tuple[Problem, int, Any]] = []
    seconds = 0.0
    max_tokens = sampling.max_tokens
    for start in range(0, len(problems), batch_size):
        batch = problems[start : start + batch_size]
        reported = 0

        def relay(count: int) -> None:
            nonlocal reported
            reported += count
            if progress is not None:
                progress(count)

        tick = time.perf_counter()
        results = backend.generate(
            [template.render(p.question) for p in batch], sampling, progress=relay
        )
        seconds += time.perf_counter() - tick
        for problem, completions in zip(batch, results, strict=True):
            if len(completions) != sampling.n:
                raise RuntimeError(
                    f"{name}: backend returned {len(completions)} samples for {problem.id}, "
                    f"expected {sampling.n}"
                )
            rows.extend((problem, i, c) for i, c in enumerate(completions))
        if progress is not None and reported < len(batch) * sampling.n:
            progress(len(batch) * sampling.n - reported)  # a backend that reports nothing
    thinking = [
        reasoning_fields(c.text, c.num_tokens, markers, opened, c.reasoning is not None,
                         c.reasoning_tokens)
        for _, _, c in rows
    ]
    cut = [completion_truncated(c.finish_reason, c.num_tokens, max_tokens) for _, _, c in rows]
    predictions = [
        # A cut output's last number is wherever the cut fell ("6*7 = 42 hmm, but maybe"), not
        # an answer: only a box or marker it closed before the cut counts.
        extract_answer(t.get("answer_text", c.text), fallback_last_number and not truncated)
        for (_, _, c), t, truncated in zip(rows, thinking, cut, strict=True)
    ]
    verdicts = score_predictions(
        [p.gold_answer for p, _, _ in rows], predictions, verify
    )
    samples = []
    for (problem, index, completion), predicted, verdict, think, truncated in zip(
        rows, predictions, verdicts, thinking, cut, strict=True
    ):
        mean_logprob, _ = logprob_stats(completion.token_logprobs)
        samples.append(
            EvalSample(
                model=name,
                problem_id=problem.id,
                sample_index=index,
                question=problem.question,
                gold_answer=problem.gold_answer,
                completion=completion.text,
                predicted_answer=predicted,
                verdict=verdict,
                correct=verdict == "correct",
                num_tokens=completion.num_tokens,
                finish_reason=completion.finish_reason,
                mean_logprob=mean_logprob,
                category=problem.category,
                reasoning_tokens=think.get("reasoning_tokens"),
                answer_tokens=think.get("answer_tokens"),
                finished_thinking=think.get("finished_thinking"),
                truncated=truncated,
            )
        )
    return samples, seconds


def completion_truncated(finish_reason: str | None, num_tokens: int | None,
                         max_tokens: int) -> bool:
    """Cut by the token limit: the engine says so (`length`), or, where it gives no reason,
    the output used every token it was allowed."""
    if finish_reason is not None:
        return finish_reason == "length"
    return num_tokens is not None and num_tokens >= max_tokens


# Verdicts where the checker, not the model, failed: neither right nor wrong, counted apart.
UNSCORED = ("unverifiable", "timeout")


def score_predictions(
    golds: Sequence[str | None], predictions: Sequence[str | None], verify: Verifier
) -> list[str]:
    """One verdict per prediction. A sample with no answer is the model's failure
    (`no_answer`, wrong); only answers go to the checker, so its `unverifiable` / `timeout`
    mean the checker could not decide, which the summary counts apart from wrong."""
    answered = [i for i, pred in enumerate(predictions) if pred is not None]
    checked = verify([(golds[i], predictions[i]) for i in answered]) if answered else []
    verdicts = ["no_answer"] * len(predictions)
    for i, verdict in zip(answered, checked, strict=True):
        verdicts[i] = verdict
    return verdicts


def sample_confidence(sample: EvalSample) -> float | None:
    """exp(mean token logprob): the model's geometric-mean probability of its own answer."""
    return None if sample.mean_logprob is None else exp(sample.mean_logprob)
