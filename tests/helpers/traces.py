"""Traces for filter tests: one trace record, a traces file, the reasons a filter gave."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import filter_traces
from cotdistill.records import Message, Sampling, Trace


def trace(
    pid: str = "p1",
    index: int = 0,
    completion: str = "Adding gives 5. The answer is \\boxed{5}.",
    gold: str | None = "5",
    *,
    question: str | None = None,
    finish: str = "stop",
    tokens: int | None = None,
    logprobs: list[float] | None = None,
    teacher: str = "teacher-a",
) -> Trace:
    question = question or f"Problem {pid}: what is the number?"
    logprobs = [-0.1, -0.3] if logprobs is None else logprobs
    return Trace(
        problem_id=pid,
        sample_index=index,
        question=question,
        gold_answer=gold,
        messages=[Message(role="user", content=question)],
        completion=completion,
        finish_reason=finish,
        num_tokens=tokens if tokens is not None else len(completion.split()),
        mean_logprob=sum(logprobs) / len(logprobs) if logprobs else None,
        min_logprob=min(logprobs) if logprobs else None,
        token_logprobs=logprobs or None,
        teacher=teacher,
        prompt_template="math_cot",
        prompt_hash="h",
        sampling=Sampling(temperature=0.7, top_p=1.0, max_tokens=64, n=1),
    )


def reasons_of(traces: list[Trace], eval_questions: tuple[str, ...] = (), **config: Any):
    """{(problem_id, sample_index): reasons} after filtering."""
    kept, rejected, _ = filter_traces(traces, FilterConfig(**config), eval_questions)
    return {(r["problem_id"], r["sample_index"]): r["reasons"] for r in kept + rejected}


# ---------------------------------------------------------------------------------------------
# Files, CLI


def write_traces(path: Path, traces: list[Trace], extra_lines: dict[int, str] | None = None):
    lines = [t.model_dump_json() for t in traces]
    for at, text in sorted((extra_lines or {}).items()):
        lines.insert(at, text)
    path.write_text("\n".join(lines) + "\n")
    return path
