"""Sampling until correct (`generate --until-correct K --max-samples M`).

Problems with a gold answer are sampled in waves of n until they hold K verified-correct
finished traces or M samples ("sample until solved", as NeMo-Skills / OpenMathInstruct do),
instead of n for everyone: the teacher's budget goes to the problems it has not solved yet.
Problems without gold get the plain n (their label comes from the filter's vote). A trace
counts as correct when it finished (not cut at max_tokens, thinking closed) and its answer
passes the filter's own check: `extract_answer` (last-number fallback on, the filter's
default) and `check_answers` against the gold.

The state of a problem is only what its traces say (samples, tokens, correct ones), so a
killed run resumes from the traces file and pays for no finished problem again.

    ledger = Ledger.of(problems, existing_rows, markers, opened)
    for traces in sample_until_correct(problems, template, backend, config, "teacher", ledger):
        write(traces)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cotdistill.answers import FALLBACK_LAST_NUMBER, check_answers, extract_answer
from cotdistill.backends import Backend, Progress
from cotdistill.generate.config import GenerateConfig
from cotdistill.generate.sample import sample_traces, sampling_record
from cotdistill.prompts import PromptTemplate
from cotdistill.reasoning import DEFAULT_MARKERS, Markers, trace_reasoning
from cotdistill.records import Problem, Trace

Status = Literal["solved", "budget", "no_gold", "open"]


@dataclass
class Cost:
    """What one problem has cost so far, and what it bought."""

    samples: int = 0
    tokens: int = 0
    correct: int = 0
    # sample index of each correct trace, in order: solved@k reads the first one
    correct_at: list[int] = field(default_factory=list)


def verified_correct(
    traces: Sequence[Trace], markers: Markers = DEFAULT_MARKERS, opened: bool = False
) -> list[bool]:
    """Whether each trace is a finished, verified-correct answer to its problem's gold."""
    pairs: list[tuple[str | None, str | None]] = []
    for trace in traces:
        view = trace_reasoning(trace, markers, opened)
        finished = trace.finish_reason != "length" and view.finished_thinking is not False
        predicted = extract_answer(view.answer_text, FALLBACK_LAST_NUMBER) if finished else None
        pairs.append((trace.gold_answer, predicted))
    # One process: a wave's answers are few, and nearly all take the fast path.
    verdicts = check_answers(pairs, processes=1) if pairs else []
    return [v == "correct" for v in verdicts]


@dataclass
class Ledger:
    """Each problem's cost, by id; filled from the traces already on disk, then per wave."""

    costs: dict[str, Cost] = field(default_factory=dict)

    @classmethod
    def of(
        cls, problems: Iterable[Problem], existing: Mapping[str, list[dict[str, Any]]],
        markers: Markers = DEFAULT_MARKERS, opened: bool = False,
    ) -> Ledger:
        ledger = cls({p.id: Cost() for p in problems})
        rows = [Trace.model_validate(r) for pid in ledger.costs for r in existing.get(pid, [])]
        ledger.add(rows, verified_correct(rows, markers, opened))
        return ledger

    def add(self, traces: Sequence[Trace], correct: Sequence[bool]) -> None:
        for trace, ok in zip(traces, correct, strict=True):
            cost = self.costs.setdefault(trace.problem_id, Cost())
            cost.samples += 1
            cost.tokens += trace.num_tokens or 0
            if ok:
                cost.correct += 1
                cost.correct_at.append(trace.sample_index)

    def status(self, problem: Problem, config: GenerateConfig) -> Status:
        cost = self.costs[problem.id]
        if problem.gold_answer is None:
            return "no_gold" if cost.samples >= config.n else "open"
        if cost.correct >= (config.until_correct or 1):
            return "solved"
        if cost.samples >= (config.max_samples or config.n):
            return "budget"
        return "open"

    def next_wave(self, problem: Problem, config: GenerateConfig) -> int:
        """How many samples this problem asks for in the next wave (0: it is done)."""
        if self.status(problem, config) != "open":
            return 0
        done = self.costs[problem.id].samples
        cap = config.n if problem.gold_answer is None else (config.max_samples or config.n)
        return min(config.n, cap - done)

    def worst_case(self, problems: Iterable[Problem], config: GenerateConfig) -> int:
        """Samples still to pay if no open problem is solved (the progress bar's total)."""
        total = 0
        for p in problems:
            if self.status(p, config) == "open":
                cap = config.n if p.gold_answer is None else (config.max_samples or config.n)
                total += cap - self.costs[p.id].samples
        return total

    def summary(self, problems: Sequence[Problem], config: GenerateConfig) -> dict[str, Any]:
        """For the manifest: the settings, problems by outcome, and each problem's cost."""
        statuses = {p.id: self.status(p, config) for p in problems}
        outcome = {name: sum(1 for s in statuses.values() if s == name)
                   for name in ("solved", "budget", "no_gold", "open")}
        part = {
            "until_correct": config.until_correct,
            "max_samples": config.max_samples,
            "wave": config.n,
            "problems": outcome,
            "samples": sum(self.costs[p.id].samples for p in problems),
            "output_tokens": sum(self.costs[p.id].tokens for p in problems),
            "correct_traces": sum(self.costs[p.id].correct for p in problems),
            "costs": {
                p.id: {"samples": self.costs[p.id].samples, "tokens": self.costs[p.id].tokens,
                       "correct": self.costs[p.id].correct, "status": statuses[p.id],
                       "first_correct_sample": (self.costs[p.id].correct_at or [None])[0]}
                for p in problems
            },
        }
        return merge_summaries([part])


def solved_at_k(first_correct: Sequence[int | None], top: int) -> list[float]:
    """Share of problems whose first correct sample is among their first k, k = 1..top."""
    if not first_correct:
        return []
    return [round(sum(1 for f in first_correct if f is not None and f < k) / len(first_correct),
                  4) for k in range(1, top + 1)]


def merge_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One `Ledger.summary` from the shards' (sharded generate's manifest)."""
    first = summaries[0]  # settings and outcome names: the same in every shard
    costs = {pid: c for s in summaries for pid, c in s["costs"].items()}
    samples = sum(s["samples"] for s in summaries)
    tokens = sum(s["output_tokens"] for s in summaries)
    correct = sum(s["correct_traces"] for s in summaries)
    return {
        **{k: first[k] for k in ("until_correct", "max_samples", "wave")},
        "problems": {k: sum(s["problems"][k] for s in summaries) for k in first["problems"]},
        "samples": samples, "output_tokens": tokens, "correct_traces": correct,
        "correct_per_1k_tokens": round(1000 * correct / tokens, 3) if tokens else None,
        "correct_per_sample": round(correct / samples, 4) if samples else None,
        "solved_at_k": solved_at_k([c["first_correct_sample"] for c in costs.values()
                                    if c["status"] != "no_gold"], first["max_samples"]),
        "costs": costs,
    }


def sample_until_correct(
    problems: Sequence[Problem],
    template: PromptTemplate,
    backend: Backend,
    config: GenerateConfig,
    teacher: str,
    ledger: Ledger,
    progress: Progress | None = None,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
    on_completions: Callable[[list[Trace], list[Any]], None] | None = None,
) -> Iterator[list[Trace]]:
    """Yield each batch of each wave's traces, after verifying them into `ledger`.

    A wave asks every open problem for min(n, what its budget has left); problems asking for
    the same count share engine calls of `config.batch_size` problems. Samples are numbered on
    from the problem's earlier ones; every trace records the run's sampling (its n too).
    `on_completions(traces, completions)` sees each batch's engine output (top-k capture).
    """
    record = sampling_record(config, config.seed)
    while True:
        wave = [(p, need) for p in problems if (need := ledger.next_wave(p, config)) > 0]
        if not wave:
            return
        for need in sorted({need for _, need in wave}, reverse=True):
            group = [p for p, k in wave if k == need]
            offsets = {p.id: ledger.costs[p.id].samples for p in group}
            for traces in sample_traces(
                group, template, backend, config.model_copy(update={"n": need}), teacher,
                config.batch_size, config.seed, progress=progress, markers=markers,
                opened=opened, offsets=offsets, record=record, on_completions=on_completions,
            ):
                ledger.add(traces, verified_correct(traces, markers, opened))
                yield traces
