"""Labelling made problems by the teacher's votes, and the traces that agree (no files).

    for rows, traces in label_by_votes(candidates, backend, config, teacher):
        ...  # rows: SyntheticProblem or Rejected per candidate; traces: the agreeing samples
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

from cotdistill.answers import check_answers, extract_answer, group_equivalent_many
from cotdistill.backends import Backend, Completion
from cotdistill.prompts import PromptTemplate
from cotdistill.reasoning import Markers, reasoning_fields, split_reasoning
from cotdistill.records import Message, Sampling, Trace, logprob_stats
from cotdistill.synthesize.config import Rejected, SynthesizeConfig, SyntheticProblem
from cotdistill.synthesize.variants import Candidate
from cotdistill.synthesize.votes import Vote, vote


def sampling_record(config: SynthesizeConfig) -> Sampling:
    return Sampling(temperature=config.temperature, top_p=config.top_p,
                    max_tokens=config.max_tokens, n=config.n, stop=config.stop, seed=config.seed)


def make_trace(candidate: Candidate, index: int, completion: Completion, messages: list[Message],
               label: str, teacher: str, template: PromptTemplate, config: SynthesizeConfig
               ) -> Trace:
    """A Trace as generate writes it, so the filter reads these as any other traces."""
    mean, low = logprob_stats(completion.token_logprobs)
    return Trace(
        problem_id=candidate.id, sample_index=index, question=candidate.question,
        gold_answer=label, messages=messages, completion=completion.text,
        finish_reason=completion.finish_reason, num_tokens=completion.num_tokens,
        mean_logprob=mean, min_logprob=low, token_logprobs=completion.token_logprobs,
        teacher=teacher, prompt_template=template.name, prompt_hash=template.hash,
        sampling=sampling_record(config),
        **reasoning_fields(completion.text, completion.num_tokens,
                           Markers(config.think_start, config.think_end),
                           returned_apart=completion.reasoning is not None,
                           exact_reasoning_tokens=completion.reasoning_tokens),
    )


def answer_of(completion: Completion, markers: Markers) -> str | None:
    # A reasoning teacher's answer is what follows its thinking; a cut-off sample has none.
    if completion.finish_reason == "length":
        return None
    return extract_answer(split_reasoning(completion.text, markers).answer_text)


def _row(candidate: Candidate, result: Vote, top: str | None, agrees: bool | None,
         samples: int) -> SyntheticProblem | Rejected:
    provenance: dict[str, Any] = {"synthetic_from": candidate.synthetic_from,
                                  "strategy": candidate.strategy}
    if candidate.note:  # why the seed's equations gave no exact label
        provenance["equation_note"] = candidate.note
    if candidate.answer is not None:  # the equation's label stays; the vote measures itself
        return SyntheticProblem(
            id=candidate.id, question=candidate.question, answer=candidate.answer,
            label_source="equation", votes=result.votes, margin=result.margin, samples=samples,
            vote_label=top, vote_passes=result.label is not None, vote_agrees=agrees,
            **provenance,
        )
    if result.label is None:
        return Rejected(id=candidate.id, question=candidate.question, reason=str(result.reason),
                        votes=result.votes, margin=result.margin, **provenance)
    return SyntheticProblem(id=candidate.id, question=candidate.question, answer=result.label,
                            label_source="votes", votes=result.votes, margin=result.margin,
                            samples=samples, **provenance)


def label_by_votes(
    candidates: Sequence[Candidate],
    backend: Backend,
    template: PromptTemplate,
    config: SynthesizeConfig,
    teacher: str,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[list[SyntheticProblem | Rejected], list[Trace]]]:
    """Per batch: one row per candidate and the traces whose answer is the label."""
    markers = Markers(config.think_start, config.think_end)
    iterator = iter(candidates)
    while batch := list(islice(iterator, config.batch_size)):
        conversations = [template.render(c.question) for c in batch]
        results = backend.generate(conversations, config, progress=progress)
        answers = [[answer_of(c, markers) for c in completions] for completions in results]
        groups = group_equivalent_many(answers)
        votes = [vote(a, g, config.min_votes, config.min_margin)
                 for a, g in zip(answers, groups, strict=True)]
        # The top answer of each problem; where an exact label exists, is it the same?
        tops = [answers[i][v.members[0]] if v.members else None for i, v in enumerate(votes)]
        pairs = [(c.answer, t) for c, t in zip(batch, tops, strict=True)
                 if c.answer is not None and t is not None]
        verdicts = iter(check_answers(pairs) if pairs else [])
        rows, traces = [], []
        for index, candidate in enumerate(batch):
            result, top = votes[index], tops[index]
            agrees = None
            if candidate.answer is not None and top is not None:
                agrees = next(verdicts) == "correct"
            row = _row(candidate, result, top, agrees, len(results[index]))
            rows.append(row)
            if isinstance(row, SyntheticProblem):
                # the samples that agree with the kept label: the vote's, or the exact one's
                members = result.members if candidate.answer is None or agrees else []
                traces += [make_trace(candidate, i, results[index][i], conversations[index],
                                      row.answer, teacher, template, config) for i in members]
        yield rows, traces
