"""The core of generate: problems in, sampled traces out (no files)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from cotdistill.backends import Backend, Completion, Progress
from cotdistill.config import SamplingConfig
from cotdistill.prompts import PromptTemplate
from cotdistill.reasoning import DEFAULT_MARKERS, Markers, reasoning_fields
from cotdistill.records import Problem, Sampling, Trace, logprob_stats


def make_trace(
    problem: Problem,
    index: int,
    completion: Completion,
    messages: list[Any],
    teacher: str,
    template: PromptTemplate,
    sampling: Sampling,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
) -> Trace:
    """One Trace; a reasoning teacher's thinking is split from its answer (`opened`: the
    prompt already opened the thinking)."""
    mean, low = logprob_stats(completion.token_logprobs)
    thinking = reasoning_fields(
        completion.text, completion.num_tokens, markers, opened,
        returned_apart=completion.reasoning is not None,
        exact_reasoning_tokens=completion.reasoning_tokens,
    )
    return Trace(
        problem_id=problem.id,
        sample_index=index,
        question=problem.question,
        gold_answer=problem.gold_answer,
        messages=messages,
        completion=completion.text,
        finish_reason=completion.finish_reason,
        num_tokens=completion.num_tokens,
        mean_logprob=mean,
        min_logprob=low,
        token_logprobs=completion.token_logprobs,
        teacher=teacher,
        prompt_template=template.name,
        prompt_hash=template.hash,
        sampling=sampling,
        category=problem.category,
        **thinking,
    )


def sampling_record(config: SamplingConfig, seed: int | None) -> Sampling:
    return Sampling(
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        n=config.n,
        stop=config.stop,
        seed=seed,
    )


def batched(items: Sequence[Problem], size: int) -> Iterator[list[Problem]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def sample_traces(
    problems: Sequence[Problem],
    template: PromptTemplate,
    backend: Backend,
    sampling: SamplingConfig,
    teacher: str,
    batch_size: int = 256,
    seed: int | None = None,
    progress: Progress | None = None,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
    on_completions: Callable[[list[Trace], list[Completion]], None] | None = None,
    offsets: Mapping[str, int] | None = None,
    record: Sampling | None = None,
) -> Iterator[list[Trace]]:
    """Yield the traces of each batch of problems (n per problem, in problem order).

    `progress(k)` is called as samples finish inside a batch, for a live progress bar.
    `markers` / `opened`: how a reasoning teacher's thinking is delimited (see make_trace).
    `on_completions(traces, completions)` sees each batch's engine output before the batch
    is yielded (top-k capture).
    `offsets`: a problem's first sample index (a later wave of `--until-correct` numbers its
    samples on from the ones before); `record`: the sampling written on each trace (the run's,
    when a wave asks for fewer than its n).
    """
    record = record if record is not None else sampling_record(sampling, seed)
    offsets = offsets or {}
    for batch in batched(problems, batch_size):
        conversations = [template.render(p.question) for p in batch]
        if progress is None:
            results = backend.generate(conversations, sampling)
        else:
            results = backend.generate(conversations, sampling, progress=progress)
        traces = []
        for problem, messages, completions in zip(batch, conversations, results, strict=True):
            if len(completions) != sampling.n:
                raise RuntimeError(
                    f"backend returned {len(completions)} samples for {problem.id}, "
                    f"expected {sampling.n}"
                )
            traces.extend(
                make_trace(problem, i, c, messages, teacher, template, record, markers, opened)
                for i, c in enumerate(completions, start=offsets.get(problem.id, 0))
            )
        if on_completions is not None:
            on_completions(traces, [c for completions in results for c in completions])
        yield traces
