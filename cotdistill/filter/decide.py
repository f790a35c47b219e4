"""The filter's decision per trace: early checks, majority labels among the traces that pass them,
selection.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from cotdistill.answers.equivalence import VerifyStats
from cotdistill.answers.workers import check_answers
from cotdistill.filter.config import GOLD_KEY, ORDER, FilterConfig, SelectionKey
from cotdistill.filter.contamination import similarity
from cotdistill.filter.summary import Summary
from cotdistill.reasoning import (
    join_reasoning,
    sft_reasoning,
)


def _majority(keys: list[str | None]) -> tuple[str | None, float]:
    """(majority answer key, agreement) over the samples of one problem.

    `keys` are the answers of the samples that passed the early checks (the caller leaves out
    truncated, looping, contaminated... samples: their last number is no answer).
    Agreement is the share of samples that give the most common answer (samples with no answer
    count in the denominator, not as votes). The majority answer is None unless at least 2
    samples give it, at least half of all samples give it, and no other answer is given as
    often: one vote, a plurality of a scattered set, or a tie labels nothing.
    """
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return None, 0.0
    ranked = counts.most_common(2)
    top = ranked[0][1]
    tied = len(ranked) > 1 and ranked[1][1] == top
    best = None if top < 2 or tied or 2 * top < len(keys) else ranked[0][0]
    return best, top / len(keys)


def _sort_key(order: Sequence[SelectionKey]) -> Callable[[tuple[int, Summary]], tuple]:
    def key(item: tuple[int, Summary]) -> tuple:
        index, s = item
        parts: list[float] = []
        for name in order:
            if name == "mean_logprob":
                parts.append(-(s.mean_logprob if s.mean_logprob is not None else -math.inf))
            elif name == "min_logprob":
                parts.append(-(s.min_logprob if s.min_logprob is not None else -math.inf))
            elif name == "shortest":
                parts.append(s.num_tokens)
            elif name == "longest":
                parts.append(-s.num_tokens)
            else:
                parts.append(index)
        return (*parts, index)

    return key


def decide(
    summaries: list[Summary],
    config: FilterConfig,
    stats: VerifyStats | None = None,
    on_verified: Callable[[int], None] | None = None,
) -> None:
    """Fill in labels, correctness, agreement and final reasons of every summary, in place."""
    by_problem: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(summaries):
        if s.problem_id is not None:
            by_problem[s.problem_id].append(i)

    # Correctness: against gold with math-verify, against a majority label by answer key.
    gold_idx = [
        i for i, s in enumerate(summaries)
        if s.problem_id is not None and s.gold is not None and s.predicted is not None
    ]
    verdicts = check_answers(
        [(summaries[i].gold, summaries[i].predicted) for i in gold_idx],
        timeout_s=config.verify_timeout_s,
        processes=config.verify_processes,
        fast_path=config.verify_fast_path,
        stats=stats,
        on_result=on_verified,
    )
    for i, verdict in zip(gold_idx, verdicts, strict=True):
        s = summaries[i]
        s.verdict = verdict
        s.correct = {"correct": True, "wrong": False}.get(verdict)

    # Self-consistency, and majority labels for problems without gold.
    majority_key: dict[str, str | None] = {}
    for problem, members in by_problem.items():
        # Only traces that passed the early checks vote: three truncated traces ending
        # `12 12 12` must not outvote the one that finished with \boxed{7}.
        voters = [i for i in members if not summaries[i].early]
        # Answers math-verify found equal to the gold form one group, whatever their spelling.
        keys = [GOLD_KEY if summaries[i].verdict == "correct" else summaries[i].key
                for i in voters]
        best, agreement = _majority(keys)
        several = len(voters) >= 2
        for i in members:
            summaries[i].agreement = agreement if several else None
        gold = summaries[members[0]].gold
        # min_agreement does not gate the label: a labelled problem whose agreement is too low
        # is rejected below as low_agreement, which says more than no_label would.
        if gold is None and config.use_majority_when_no_gold and best is not None:
            majority_key[problem] = best
            for i in members:
                summaries[i].votes, summaries[i].voters = keys.count(best), len(voters)

    for s in summaries:
        if s.problem_id is None:
            continue
        if s.gold is not None:
            s.label = "gold"
        elif s.problem_id in majority_key:
            s.label = "majority"
            if s.key is not None:
                s.correct = s.key == majority_key[s.problem_id]
                s.verdict = "correct" if s.correct else "wrong"

    # Per-trace reasons, then dedup and selection among the traces that passed everything.
    for s in summaries:
        if s.problem_id is None:
            continue
        reasons = list(s.early)
        if config.require_correct:
            if s.predicted is None:
                if "no_answer" not in reasons:
                    reasons.append("unverifiable")  # nothing to compare with the label
            elif s.label is None:
                reasons.append("no_label")
            elif s.verdict == "timeout":
                reasons.append("verify_timeout")
            elif s.verdict == "unverifiable":
                reasons.append("unverifiable")
            elif s.correct is False:
                reasons.append("wrong")
        if config.min_mean_logprob is not None and (
            s.mean_logprob is None or s.mean_logprob < config.min_mean_logprob
        ):
            reasons.append("low_mean_logprob")
        if config.min_token_logprob is not None and (
            s.min_logprob is None or s.min_logprob < config.min_token_logprob
        ):
            reasons.append("low_token_logprob")
        if s.agreement is not None and s.agreement < config.min_agreement:
            reasons.append("low_agreement")
        s.reasons = tuple(sorted(set(reasons), key=ORDER.__getitem__))

    order = _sort_key(config.selection_order)
    for members in by_problem.values():
        survivors = sorted(((i, summaries[i]) for i in members if not summaries[i].reasons),
                           key=order)
        chosen: list[Summary] = []
        for _, s in survivors:
            if config.dedup != "off" and any(_same(s, c, config) for c in chosen):
                s.reasons = ("duplicate",)
            elif config.max_per_problem is not None and len(chosen) >= config.max_per_problem:
                s.reasons = ("over_limit",)
            else:
                chosen.append(s)


def _same(a: Summary, b: Summary, config: FilterConfig) -> bool:
    if a.text_hash == b.text_hash:
        return True
    return config.dedup == "near" and similarity(a.sketch, b.sketch) >= config.dedup_threshold


def _prob(logprob: float | None) -> float | None:
    return None if logprob is None else math.exp(logprob)


def annotate(data: dict[str, Any], s: Summary) -> dict[str, Any]:
    """The output row: the input trace plus what the filter found."""
    return {
        **data,
        "predicted_answer": s.predicted,
        "correct": s.correct,
        "label": s.label,
        "mean_logprob": s.mean_logprob,
        "min_logprob": s.min_logprob,
        "mean_prob": _prob(s.mean_logprob),
        "min_prob": _prob(s.min_logprob),
        "agreement": s.agreement,
        # A majority label: how many votes it had among the traces that voted.
        "label_votes": s.votes,
        "voters": s.voters,
        "reasons": list(s.reasons),
    }


def sft_row(data: dict[str, Any]) -> dict[str, Any]:
    """TRL conversational format: the prompt messages as generated plus the completion.

    Traces from other tools may have no prompt messages: the question is then the user turn.
    A reasoning teacher's thinking goes back in the assistant turn inside `<think>` markers,
    and the record keeps `reasoning` / `answer_text` so training can format it otherwise.
    """
    prompt = data.get("messages") or [{"role": "user", "content": data["question"]}]
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    thinking = sft_reasoning(data)
    content = data["completion"] if not thinking else join_reasoning(
        thinking["reasoning"], thinking["answer_text"], finished=thinking["finished_thinking"]
    )
    return {
        "messages": [*messages, {"role": "assistant", "content": content}],
        "problem_id": data["problem_id"],
        # With problem_id, the key of the teacher's stored top-k logprobs (cotdistill/topk.py).
        "sample_index": data.get("sample_index"),
        "teacher": data.get("teacher"),
        **thinking,
    }
