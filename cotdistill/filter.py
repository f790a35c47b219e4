"""Stage 2: decide, for every teacher trace, whether the student should learn from it, and why.

Checks, in funnel order (each one configurable, each a reason code when it rejects):
`invalid_record`, `contaminated`, `unfinished_thinking`, `truncated`, `no_final_answer`,
`no_answer`, `too_short`, `too_long`, `reasoning_too_long`, `answer_too_long`, `repetition`,
`no_label` / `unverifiable` / `verify_timeout` / `wrong`, `low_mean_logprob`, `low_token_logprob`,
`low_agreement`, then among the traces that passed everything: `duplicate` and `over_limit`
(at most K per problem in `selection_order`). A reasoning teacher's answer is read from the
text after its thinking (cotdistill/reasoning.py).

The core works on records without files: `summarize` (one trace -> a small `Summary`),
`decide` (all summaries -> reasons per trace) and `annotate` (trace + decision -> output row);
`filter_traces` chains them in memory. `run_filter` streams: pass 1 keeps only summaries,
pass 2 re-reads the files and writes every trace to exactly one of kept / rejected, so memory
does not grow with the size of the traces.

    cotdistill filter --traces runs/gen/traces.jsonl --out runs/filter --max-per-problem 2
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import sys
import time
import zlib
from array import array
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from cotdistill.answers import FALLBACK_LAST_NUMBER, extract_answer
from cotdistill.config import StrictModel, ThinkConfig
from cotdistill.errors import InputError
from cotdistill.executors.slurm import resolve_shard
from cotdistill.locking import locks_output
from cotdistill.problems import AnswerFormat, in_shard, parse_shard
from cotdistill.progress import progress_bar
from cotdistill.reasoning import (
    Markers,
    join_reasoning,
    sft_reasoning,
    template_opening,
    thinking_evidence,
    trace_reasoning,
)
from cotdistill.records import Trace, dump_line, sha256_file, write_manifest
from cotdistill.textstats import ngrams, repeat_share, units, words
from cotdistill.traces_in import (
    ReadStats,
    TraceFields,
    TraceLine,
    checks_not_run,
    read_traces,
)
from cotdistill.verify import Verdict, VerifyStats, answer_key, check_answers

# Funnel order: a rejected trace is counted at the first of these it fails.
CHECKS: tuple[str, ...] = (
    "invalid_record",
    "contaminated",
    "unfinished_thinking",
    "truncated",
    "no_final_answer",
    "no_answer",
    "too_short",
    "too_long",
    "reasoning_too_long",
    "answer_too_long",
    "repetition",
    "no_label",
    "unverifiable",
    "verify_timeout",
    "wrong",
    "low_mean_logprob",
    "low_token_logprob",
    "low_agreement",
    "duplicate",
    "over_limit",
)
_ORDER = {name: i for i, name in enumerate(CHECKS)}
GOLD_KEY = "\x00gold"  # the answer key of every answer verified equal to the gold answer

SelectionKey = Literal["mean_logprob", "min_logprob", "shortest", "longest", "input_order"]
# answer_from_reasoning reads the answer from this many final characters of the thinking.
REASONING_TAIL = 1000
SKETCH_SIZE = 32  # hashes kept per trace for near-duplicate detection (bottom-k MinHash)


class FilterConfig(StrictModel):
    traces: list[Path] = Field(
        default_factory=list,
        description="Traces files: written by `cotdistill generate`, or by other tools (a "
        "question and a completion or `generations` list per line, or a `messages` "
        "conversation ending with the assistant's turn).",
    )
    question_field: list[str] = Field(
        default_factory=lambda: list(TraceFields.question),
        description="Other tools' traces: candidate fields for the question, first present wins.",
    )
    completion_field: list[str] = Field(
        default_factory=lambda: list(TraceFields.completion),
        description="Other tools' traces: candidate fields for the completion (a text, or a "
        "list of texts: one trace each).",
    )
    answer_field: list[str] = Field(
        default_factory=lambda: list(TraceFields.answer),
        description="Other tools' traces: candidate fields for the gold answer or solution.",
    )
    id_field: list[str] = Field(
        default_factory=lambda: list(TraceFields.id),
        description="Other tools' traces: candidate fields for the problem id; none present: "
        "an id from the question text.",
    )
    answer_format: AnswerFormat = Field(
        "auto",
        description="Other tools' traces: how to read the gold answer (`#### x`, last "
        "\\boxed{x}, as it is, or auto).",
    )
    qualify_ids: bool = Field(
        False,
        description="Prefix ids taken from a field with their file's name, so files that "
        "number their problems the same way are never merged (default: such a collision is "
        "an error naming both files).",
    )
    out: Path | None = Field(None, description="Output directory.")
    decontaminate: list[Path] = Field(
        default_factory=list,
        description="Evaluation problem files; training problems sharing a long word n-gram "
        "with any of their questions are dropped.",
    )
    decontaminate_ngram: int = Field(
        13,
        ge=3,
        description="Words in a shared n-gram that counts as contamination (characters in "
        "scripts written without spaces: Chinese, Japanese, Thai...); an evaluation question "
        "shorter than this must appear whole.",
    )
    fallback_last_number: bool = FALLBACK_LAST_NUMBER
    require_correct: bool = Field(
        True, description="Keep only traces whose answer matches the label (gold or majority)."
    )
    use_majority_when_no_gold: bool = Field(
        True,
        description="For problems without gold, use the most common answer as the label when "
        "at least 2 samples give it, they are at least half of the samples, and no other "
        "answer is given as often (one vote or a tie labels nothing: no_label); "
        "min_agreement still applies (low_agreement).",
    )
    min_agreement: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Reject traces of problems with several samples whose agreement (share of "
        "samples giving the most common answer) is below this; equal passes.",
    )
    min_mean_logprob: float | None = Field(
        None, le=0.0, description="Reject traces whose mean token logprob is below this."
    )
    min_token_logprob: float | None = Field(
        None, le=0.0, description="Reject traces with any token logprob below this."
    )
    drop_truncated: bool = Field(True, description="Reject traces cut off by the token limit.")
    require_answer: bool = Field(True, description="Reject traces with no extractable answer.")
    max_repeat_ngram_share: float | None = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Reject traces whose share of repeated word n-grams exceeds this "
        "(degenerate loops); null disables.",
    )
    repeat_ngram: int = Field(4, ge=1, description="n for the repeated n-gram share.")
    min_tokens: int = Field(0, ge=0, description="Reject traces with fewer completion tokens.")
    max_tokens: int | None = Field(
        None, gt=0, description="Reject traces with more completion tokens."
    )
    think_start: str = ThinkConfig.model_fields["think_start"]
    think_end: str = ThinkConfig.model_fields["think_end"]
    drop_unfinished_thinking: bool = Field(
        True, description="Reject traces that stopped inside the thinking (reasoning teachers)."
    )
    think_in_prompt: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="Did the prompt open the thinking (R1-distill templates end it with the "
        "start marker)? Then a trace with no end marker stopped inside its thinking and is "
        "rejected as unfinished_thinking. For traces that do not store their split (other "
        "tools', older ones). auto: render think_template's chat template (or the traces' "
        "teacher when it is a local model folder); else read it from the teacher's other "
        "traces (one that closes a thinking it never opened); the report says when nothing "
        "tells.",
    )
    think_template: str | None = Field(
        None,
        description="Model folder or already downloaded hub id whose chat template rendered "
        "the traces' prompts (for think_in_prompt auto).",
    )
    require_final_answer: bool = Field(
        True, description="Reject traces whose thinking finished with nothing after it."
    )
    answer_from_reasoning: bool = Field(
        False,
        description="When the text after the thinking has no answer, read one from the end of "
        "the thinking (off: an answer tried inside the thinking never counts).",
    )
    max_reasoning_tokens: int | None = Field(
        None, gt=0, description="Reject traces with more thinking tokens."
    )
    max_answer_tokens: int | None = Field(
        None, gt=0, description="Reject traces with more tokens after the thinking."
    )
    dedup: Literal["off", "exact", "near"] = Field(
        "near",
        description="Collapse identical (exact) or also near-identical (near) traces of the "
        "same problem to one.",
    )
    dedup_threshold: float = Field(
        0.9, gt=0.0, le=1.0, description="near: word 3-gram Jaccard similarity that is a duplicate."
    )
    max_per_problem: int | None = Field(
        None, gt=0, description="Keep at most this many traces per problem."
    )
    selection_order: list[SelectionKey] = Field(
        default_factory=lambda: ["mean_logprob", "shortest"],
        description="Which traces win dedup and max_per_problem: highest mean_logprob / "
        "min_logprob, shortest / longest, input_order; ties go to input order.",
    )
    verify_timeout_s: float = Field(
        5.0, gt=0.0, description="Seconds math-verify may spend on one answer."
    )
    verify_processes: int | None = Field(
        None, gt=0, description="math-verify worker processes (default: CPU count)."
    )
    verify_fast_path: bool = Field(
        True,
        description="Decide plain-number answers exactly without math-verify (off: every "
        "answer goes through math-verify).",
    )
    skip_invalid: bool = Field(
        False, description="Put malformed lines in rejected.jsonl instead of stopping."
    )
    dry_run: bool = Field(False, description="Print the funnel without writing anything.")
    shard: str | None = Field(
        None, pattern=r"^(\d+/\d+|auto)$",
        description="I/N: filter only the problems of shard I of N (the same split as "
        "`generate --shard`), so shards filter apart with the same decontamination set; auto: "
        "this Slurm array task's shard. Combine the outputs with --merge.",
    )
    merge: list[Path] = Field(
        default_factory=list,
        description="Filter output folders (of --shard runs) to combine into --out: kept, "
        "rejected and sft concatenated, reports added up; no traces are read or re-checked.",
    )


# ---------------------------------------------------------------------------------------------
# Pure checks


# Decontamination matches words of any script (cotdistill/textstats.py), not just ASCII.
words_of = words


def text_sketch(text: str, size: int = SKETCH_SIZE) -> bytes:
    """Bottom-k MinHash of the 3-grams of `units` (words; characters in scripts without
    spaces, so two Chinese traces are compared by their text, not as one giant word each):
    a few hundred bytes, whatever the text length."""
    pieces = units(text.casefold())
    # crc32, not hash(): str hashes change between processes, and runs must be reproducible.
    grams = {zlib.crc32(" ".join(g).encode()) for g in ngrams(pieces, 3)}
    grams = grams or {zlib.crc32(" ".join(pieces).encode())}
    return array("q", sorted(heapq.nsmallest(size, grams))).tobytes()


def similarity(a: bytes, b: bytes, size: int = SKETCH_SIZE) -> float:
    """Estimated Jaccard similarity of two sketches (exact when both texts are short)."""
    first, second = set(array("q", a)), set(array("q", b))
    union = heapq.nsmallest(size, first | second)
    if not union:
        return 1.0
    return sum(1 for h in union if h in first and h in second) / len(union)


class Contamination:
    """Word n-gram index of evaluation questions: `index(question)` is True on a leak.

    Words of any script (`textstats.words`); in Chinese, Japanese, Thai... a "word" is one
    character, so a question copied verbatim shares its character n-grams."""

    def __init__(self, questions: Iterable[str], n: int) -> None:
        self.grams: dict[int, set[tuple[str, ...]]] = defaultdict(set)
        for question in questions:
            words = words_of(question)
            size = min(n, len(words))
            if size:
                self.grams[size].update(ngrams(words, size))

    def __call__(self, question: str) -> bool:
        words = words_of(question)
        return any(
            gram in grams for size, grams in self.grams.items() for gram in ngrams(words, size)
        )


@dataclass
class PromptOpening:
    """Whether the prompt opened the thinking, per teacher, for traces that do not store their
    split (other tools' traces, older ones); cotdistill's own traces say it themselves.

    It matters only for a trace with no markers at all: with an opened prompt it was cut
    inside its thinking (unfinished_thinking), otherwise it has no thinking. auto decides from
    the chat template when one can be rendered, else from the teacher's other traces: a
    trace that closes a thinking it never opened means the prompt opened it.
    """

    setting: Literal["auto", "yes", "no"] = "auto"
    markers: Markers = field(default_factory=Markers)
    template: bool | None = None  # what think_template's chat template says
    # Per teacher: traces that opened their thinking themselves ("text") or did not ("prompt").
    evidence: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    # Per teacher: traces without markers read while nothing told (read as without thinking).
    unsure: Counter[str] = field(default_factory=Counter)
    frozen: bool = False  # evidence complete (a second reading must not count it again)
    notes: list[str] = field(default_factory=list)
    _folders: dict[str, bool | None] = field(default_factory=dict)

    @classmethod
    def of(cls, config: FilterConfig) -> PromptOpening:
        markers = Markers(config.think_start, config.think_end)
        opening = cls(config.think_in_prompt, markers)
        if config.think_in_prompt == "auto" and config.think_template:
            opening.template = _render_template(config.think_template, markers)
            if opening.template is None:
                opening.notes.append(
                    f"think_template {config.think_template!r} could not be rendered (not a "
                    "model folder or cached hub id with a chat template): whether the prompt "
                    "opened the thinking is read from the traces instead")
        return opening

    def observe(self, trace: Trace) -> None:
        """Count what this trace says about its teacher's prompt."""
        if self.setting != "auto" or self.frozen or _self_described(trace):
            return
        seen = thinking_evidence(trace.completion, self.markers)
        if seen is not None:
            self.evidence[_group(trace)][seen] += 1

    def opened(self, trace: Trace) -> bool:
        """`opened` for `trace_reasoning` of this trace."""
        if _self_described(trace):
            return False
        if self.setting != "auto":
            return self.setting == "yes"
        if thinking_evidence(trace.completion, self.markers) is not None:
            return False  # its own markers say where the thinking is
        group = _group(trace)
        decision = self.decide(group)
        if decision is None:
            self.unsure[group] += 1
        return bool(decision)

    def decide(self, group: str) -> bool | None:
        if self.template is not None:
            return self.template
        if group not in self._folders:  # once per teacher, not once per trace
            # A teacher named by a local model folder: its own template tells.
            self._folders[group] = (_render_template(group, self.markers)
                                    if Path(group).is_dir() else None)
        if self._folders[group] is not None:
            return self._folders[group]
        seen = self.evidence.get(group, Counter())
        if seen["prompt"] and not seen["text"]:
            return True
        if seen["text"] and not seen["prompt"]:
            return False
        return None  # no marker anywhere, or both kinds: cannot tell

    def stale(self) -> bool:
        """Some traces were read as without thinking before their teacher's other traces
        showed that the prompt opened it: they must be read again."""
        return any(self.decide(group) for group in self.unsure)

    def restart(self) -> None:
        self.frozen = True
        self.unsure.clear()

    def report(self) -> dict[str, Any]:
        groups = sorted(set(self.evidence) | set(self.unsure))
        return {"setting": self.setting, "template": self.template,
                "by_teacher": {g: self.decide(g) for g in groups} if self.setting == "auto"
                else {}}

    def cannot_tell(self) -> list[str]:
        """One sentence per teacher whose traces without markers could be either."""
        notes = list(self.notes)
        for group, count in sorted(self.unsure.items()):
            if self.decide(group) is None:
                notes.append(
                    f"{count} traces of {group} have no thinking markers and nothing tells "
                    "whether their prompt opened the thinking (no think_template, and its "
                    "traces do not show it): they were read as having no thinking; if their "
                    "chat template opened it (R1 distills), set think_in_prompt: yes and "
                    "those cut inside it are rejected as unfinished_thinking (no: silences "
                    "this)")
        return notes


def _self_described(trace: Trace) -> bool:
    """cotdistill's generate decided with the template in hand: it stored the split of a
    reasoning trace, and its prompt hash marks a trace it wrote (no split: no thinking)."""
    return trace.answer_text is not None or trace.prompt_hash is not None


def _group(trace: Trace) -> str:
    """Traces that share a prompt format: one teacher's, else one file's."""
    source = getattr(trace, "source", None)
    file = source.rsplit(":", 1)[0] if isinstance(source, str) and source else "unknown"
    return trace.teacher or file


def _render_template(model: str, markers: Markers) -> bool | None:
    return template_opening(model, [{"role": "user", "content": "1 + 1"}], markers,
                            local_only=True)


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
        s.reasons = tuple(sorted(set(reasons), key=_ORDER.__getitem__))

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


# ---------------------------------------------------------------------------------------------
# Funnel and report


def funnel(summaries: Sequence[Summary]) -> dict[str, Any]:
    """Traces in and out of each check (at their first failing check), and totals per reason."""
    first = Counter(s.reasons[0] if s.reasons else None for s in summaries)
    every = Counter(r for s in summaries for r in s.reasons)
    remaining = len(summaries)
    steps = []
    for name in CHECKS:
        dropped = first.get(name, 0)
        steps.append({"check": name, "in": remaining, "rejected": dropped,
                      "out": remaining - dropped})
        remaining -= dropped
    return {
        "traces_in": len(summaries),
        "kept": first.get(None, 0),
        "rejected": len(summaries) - first.get(None, 0),
        "steps": steps,
        "reasons_any": dict(sorted(every.items(), key=lambda kv: _ORDER[kv[0]])),
    }


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values = sorted(values)

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 4)

    return {"count": len(values), "mean": round(sum(values) / len(values), 4),
            "min": round(values[0], 4), "p10": q(0.1), "p50": q(0.5), "p90": q(0.9),
            "max": round(values[-1], 4)}


def build_report(summaries: Sequence[Summary], stats: VerifyStats | None = None) -> dict[str, Any]:
    valid = [s for s in summaries if s.problem_id is not None]
    problems = {s.problem_id for s in valid}
    covered = {s.problem_id for s in valid if not s.reasons}
    with_gold = {s.problem_id for s in valid if s.gold is not None}
    teachers: dict[str, Counter[str]] = defaultdict(Counter)
    for s in valid:
        if s.gold is None:
            continue
        outcome = "no_answer" if s.predicted is None else (s.verdict or "unverifiable")
        teachers[s.teacher][outcome] += 1
    accuracy = {}
    for teacher, counts in teachers.items():
        total = sum(counts.values())
        accuracy[teacher] = {
            "traces_with_gold": total,
            **{k: counts.get(k, 0) for k in ("correct", "wrong", "unverifiable", "timeout",
                                              "no_answer")},
            "accuracy": round(counts["correct"] / total, 4) if total else None,
            "problems_with_a_correct_trace": len(
                {s.problem_id for s in valid if s.teacher == teacher and s.verdict == "correct"
                 and s.label == "gold"}
            ),
        }
    conf: dict[str, Any] = {}
    for name, flag in (("correct", True), ("wrong", False)):
        logps = [s.mean_logprob for s in valid if s.correct is flag and s.mean_logprob is not None]
        mins = [s.min_logprob for s in valid if s.correct is flag and s.min_logprob is not None]
        conf[name] = {
            "mean_logprob": _quantiles(logps),
            "mean_prob": _quantiles([math.exp(v) for v in logps]),
            "min_logprob": _quantiles(mins),
        }
    kept_per_problem = Counter(
        Counter(s.problem_id for s in valid if not s.reasons).values()
    )
    return {
        "majority_votes": majority_votes(valid),
        "funnel": funnel(summaries),
        "problems": len(problems),
        "problems_with_gold": len(with_gold),
        "majority_labelled_traces": sum(1 for s in valid if s.label == "majority"),
        "coverage": {
            "problems_with_kept_trace": len(covered),
            "share": round(len(covered) / len(problems), 4) if problems else None,
        },
        "teacher_accuracy": accuracy,
        "confidence": conf,
        "kept_per_problem": {str(k): v for k, v in sorted(kept_per_problem.items())},
        "reasoning": reasoning_report(valid),
        "verification": None if stats is None else {
            "pairs": stats.pairs, "fast_path": stats.fast_path,
            "unique_checked_with_math_verify": stats.unique_checked,
            "missing_side": stats.unverifiable_missing, "timeouts": stats.timeouts,
            "workers_killed": stats.workers_killed, "seconds": round(stats.seconds, 3),
        },
    }


def majority_votes(summaries: Sequence[Summary]) -> dict[str, Any]:
    """How many votes each majority label had ("votes/voters": problems), and how many traces
    of problems without gold did not vote (set aside by an early check)."""
    labels: dict[str, str] = {}
    not_voting = 0
    for s in summaries:
        if s.gold is None and s.early:
            not_voting += 1
        if s.votes is not None and s.problem_id is not None:
            labels[s.problem_id] = f"{s.votes}/{s.voters}"
    counts = Counter(labels.values())
    return {"problems": len(labels),
            "votes": dict(sorted(counts.items(), key=lambda kv: tuple(
                int(x) for x in kv[0].split("/")))),
            "traces_not_voting": not_voting}


def reasoning_report(summaries: Sequence[Summary]) -> dict[str, Any] | None:
    """Thinking lengths of correct vs wrong traces (long wrong traces: overthinking); None
    when no trace has thinking."""
    thinking = [s for s in summaries if s.finished_thinking is not None]
    if not thinking:
        return None
    lengths: dict[str, Any] = {}
    for name, flag in (("correct", True), ("wrong", False)):
        group = [s for s in thinking if s.correct is flag]
        lengths[name] = {
            "reasoning_tokens": _quantiles(
                [s.reasoning_tokens for s in group if s.reasoning_tokens is not None]),
            "answer_tokens": _quantiles(
                [s.answer_tokens for s in group if s.answer_tokens is not None]),
        }
    return {
        "traces_with_thinking": len(thinking),
        "unfinished_thinking": sum(1 for s in thinking if s.finished_thinking is False),
        **lengths,
    }


def plot_reasoning_lengths(summaries: Sequence[Summary], path: Path) -> bool:
    """Histogram of thinking tokens, correct vs wrong traces; False when there is nothing."""
    return _plot_correct_vs_wrong(
        summaries, "reasoning_tokens", path, xlabel="thinking tokens",
        title="Thinking length: correct vs wrong traces",
        bounds=lambda low, high: (0, high + 1))


def _plot_correct_vs_wrong(
    summaries: Sequence[Summary], attribute: str, path: Path, xlabel: str, title: str,
    bounds: Callable[[float, float], tuple[float, float]],
) -> bool:
    """Overlaid histograms of one per-trace figure for correct and wrong traces (the filter's
    report plots); `bounds` maps the data's (min, max) to the histogram's range. False when
    no trace has the figure."""
    def values_of(flag: bool) -> list[float]:
        return [getattr(s, attribute) for s in summaries
                if s.correct is flag and getattr(s, attribute) is not None]

    correct, wrong = values_of(True), values_of(False)
    if not correct and not wrong:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    span = bounds(min(correct + wrong), max(correct + wrong))
    for label, data in (("correct", correct), ("wrong", wrong)):
        if data:
            ax.hist(data, bins=30, range=span, alpha=0.6, label=f"{label} ({len(data)})")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("traces")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _reasoning_markdown(report: dict[str, Any], plot: str | None) -> list[str]:
    r = report.get("reasoning")
    if not r:
        return []
    parts = [
        "",
        "## Thinking length (tokens) of correct vs wrong traces",
        "",
        f"{r['traces_with_thinking']} traces have thinking; {r['unfinished_thinking']} stopped "
        "inside it. Long wrong traces are the usual overthinking signature.",
        "",
        "| traces | part | count | mean | p10 | p50 | p90 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("correct", "wrong"):
        for part in ("reasoning_tokens", "answer_tokens"):
            q = r[name][part]
            label = part.removesuffix("_tokens")
            if q:
                parts.append(f"| {name} | {label} | {q['count']} | {q['mean']} | {q['p10']} | "
                             f"{q['p50']} | {q['p90']} | {q['max']} |")
            else:
                parts.append(f"| {name} | {label} | 0 | | | | | |")
    if plot:
        parts += ["", f"![thinking length]({plot})"]
    return parts


def funnel_table(report: dict[str, Any]) -> str:
    lines = ["| check | in | rejected | out |", "|---|---:|---:|---:|"]
    for step in report["funnel"]["steps"]:
        lines.append(f"| {step['check']} | {step['in']} | {step['rejected']} | {step['out']} |")
    return "\n".join(lines)


def report_markdown(
    report: dict[str, Any], plot: str | None, reasoning_plot: str | None = None
) -> str:
    f = report["funnel"]
    parts = [
        "# Filter report",
        "",
        f"{f['traces_in']} traces in, {f['kept']} kept, {f['rejected']} rejected; "
        f"{report['coverage']['problems_with_kept_trace']} of {report['problems']} problems "
        f"have a kept trace (coverage {report['coverage']['share']}).",
        "",
        "## Funnel (each rejected trace counted at its first failing check)",
        "",
        funnel_table(report),
        "",
        *(["## Checks that could not run", "",
           *(f"- {note}" for note in report.get("checks_not_run", [])), ""]
          if report.get("checks_not_run") else []),
        "## Reasons (a trace can have several)",
        "",
        "| reason | traces |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in f["reasons_any"].items()),
        "",
        "## Teacher accuracy on problems with gold",
        "",
        "| teacher | traces | correct | wrong | unverifiable | timeout | no answer | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {t} | {a['traces_with_gold']} | {a['correct']} | {a['wrong']} | "
            f"{a['unverifiable']} | {a['timeout']} | {a['no_answer']} | {a['accuracy']} |"
            for t, a in report["teacher_accuracy"].items()
        ),
        "",
        "## Confidence (mean token logprob) of correct vs wrong traces",
        "",
        "| traces | count | mean | p10 | p50 | p90 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("correct", "wrong"):
        q = report["confidence"][name]["mean_logprob"]
        if q:
            parts.append(f"| {name} | {q['count']} | {q['mean']} | {q['p10']} | {q['p50']} | "
                         f"{q['p90']} |")
        else:
            parts.append(f"| {name} | 0 | | | | |")
    if plot:
        parts += ["", f"![confidence]({plot})"]
    parts += _votes_markdown(report)
    parts += _reasoning_markdown(report, reasoning_plot)
    return "\n".join(parts) + "\n"


def _votes_markdown(report: dict[str, Any]) -> list[str]:
    v = report.get("majority_votes")
    if not v or not v["problems"]:
        return []
    return ["", "## Majority labels (problems without gold)", "",
            f"{v['problems']} problems labelled by majority vote; "
            f"{v['traces_not_voting']} traces did not vote (rejected by an early check).", "",
            "| votes for the label / traces voting | problems |", "|---|---:|",
            *(f"| {k} | {n} |" for k, n in v["votes"].items())]


def plot_confidence(summaries: Sequence[Summary], path: Path) -> bool:
    """Histogram of mean logprob, correct vs wrong traces; False when there is nothing to plot."""
    def bounds(low: float, high: float) -> tuple[float, float]:
        if high - low < 1e-6:  # one value only: give the single bar some width
            return low - 0.05, high + 0.05
        return low, high

    return _plot_correct_vs_wrong(
        summaries, "mean_logprob", path, xlabel="mean token logprob",
        title="Teacher confidence: correct vs wrong traces", bounds=bounds)


# ---------------------------------------------------------------------------------------------
# In memory (tests, notebooks)


def filter_traces(
    traces: Iterable[Trace], config: FilterConfig, eval_questions: Iterable[str] = ()
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(kept rows, rejected rows, report) for records in memory; same rules as `run_filter`."""
    questions = list(eval_questions)
    index = Contamination(questions, config.decontaminate_ngram) if questions else None
    traces = list(traces)
    opening = PromptOpening.of(config)
    for t in traces:
        opening.observe(t)
    opening.restart()
    summaries = [summarize(t, config, index, opening.opened(t)) for t in traces]
    for s in summaries:
        check_logprobs_present(s, config)
    stats = VerifyStats()
    decide(summaries, config, stats)
    kept, rejected = [], []
    for trace, s in zip(traces, summaries, strict=True):
        row = annotate(trace.model_dump(mode="json"), s)
        (rejected if s.reasons else kept).append(row)
    report = build_report(summaries, stats)
    report["thinking_opened_in_prompt"] = opening.report()
    report["checks_not_run"] = opening.cannot_tell()
    return kept, rejected, report


# ---------------------------------------------------------------------------------------------
# Files


def trace_fields(config: FilterConfig) -> TraceFields:
    return TraceFields(
        question=tuple(config.question_field),
        completion=tuple(config.completion_field),
        answer=tuple(config.answer_field),
        id=tuple(config.id_field),
        answer_format=config.answer_format,
        qualify_ids=config.qualify_ids,
        markers=Markers(config.think_start, config.think_end),
    )


def _lines(
    paths: Sequence[Path], fields: TraceFields | None = None
) -> Iterator[tuple[Path, int, str]]:
    """(file, line number, text) of every trace, in the same order on every pass.

    The text is the line as written for cotdistill's own traces; a foreign record becomes one
    normalised trace line per completion (see `traces_in`).
    """
    for item in read_traces(paths, fields or TraceFields(), validate=False):
        yield item.path, item.line, item.text


def _check_inputs(config: FilterConfig) -> None:
    if not config.traces:
        raise InputError("filter needs --traces FILE [FILE ...]", field="traces")
    if config.out is None and not config.dry_run:
        raise InputError("filter needs --out DIR (or --dry-run)", field="out")
    for path in [*config.traces, *config.decontaminate]:
        if not Path(path).is_file():
            raise InputError("file not found", file=path)


def load_contamination(config: FilterConfig) -> Contamination | None:
    from cotdistill.problems import load_problems

    if not config.decontaminate:
        return None
    questions = [p.question for path in config.decontaminate for p in load_problems(Path(path))]
    return Contamination(questions, config.decontaminate_ngram)


def check_lengths_present(
    trace: Trace, config: FilterConfig, file: Path | str | None = None, line: int | None = None
) -> None:
    """A length threshold on traces without `num_tokens` is a configuration error."""
    asked = config.min_tokens > 0 or config.max_tokens is not None
    if asked and trace.num_tokens is None:
        raise InputError(
            "min_tokens / max_tokens is set but this trace has no num_tokens (drop the "
            "threshold for traces from other tools)",
            file=file, line=line, field="num_tokens",
        )


def first_pass(
    config: FilterConfig, index: Contamination | None, stats: ReadStats | None = None,
    opening: PromptOpening | None = None,
) -> list[Summary]:
    """Read every trace once, keeping only its summary; bad input stops here, before writing.

    `stats` (if given) counts the traces that lack what some checks need; `opening` learns
    from the traces whether their prompt opened the thinking (see `PromptOpening`).
    """
    opening = PromptOpening.of(config) if opening is None else opening
    summaries: list[Summary] = []
    contaminated: dict[str, bool] = {}

    def leak(question: str) -> bool:
        if question not in contaminated:
            contaminated[question] = index(question)  # type: ignore[misc]
        return contaminated[question]

    total = sum(Path(p).stat().st_size for p in config.traces)
    bar = progress_bar(total, "filter: read", unit="B", scale=True, leave=False)
    try:
        for item in shard_traces(config, stats=stats):
            bar.update(item.size)  # characters: close enough to bytes
            if item.trace is None:
                if not config.skip_invalid:
                    raise item.error  # type: ignore[misc]
                summaries.append(invalid_summary(str(item.error)))
                continue
            opening.observe(item.trace)
            summary = summarize(item.trace, config, leak if index is not None else None,
                                opening.opened(item.trace))
            check_logprobs_present(summary, config, item.path, item.line)
            check_lengths_present(item.trace, config, item.path, item.line)
            summaries.append(summary)
    finally:
        bar.close()
    if not summaries:
        raise InputError("no traces found", file=config.traces[0])
    return summaries


def _write_outputs(config: FilterConfig, summaries: list[Summary], out: Path) -> dict[str, int]:
    names = ("kept.jsonl", "rejected.jsonl", "sft.jsonl")
    tmp = {name: out / (name + ".tmp") for name in names}
    counts = dict.fromkeys(names, 0)
    handles = {name: open(tmp[name], "w", encoding="utf-8") for name in names}  # noqa: SIM115
    bar = progress_bar(len(summaries), "filter: write", unit="trace", leave=False)
    changed = "traces files changed while filtering; run again"
    complete = False
    try:
        for position, (path, lineno, line) in enumerate(
            (item.path, item.line, item.text) for item in shard_traces(config, validate=False)
        ):
            if position >= len(summaries):  # a shard still being written grew since pass 1
                raise InputError(changed, file=path, line=lineno)
            s = summaries[position]
            if s.problem_id is None:
                row = {"source": f"{path}:{lineno}", "raw": line.rstrip("\n"),
                       "error": s.error, "reasons": list(s.reasons)}
                handles["rejected.jsonl"].write(dump_line(row))
                counts["rejected.jsonl"] += 1
            else:
                data = json.loads(line)
                target = "rejected.jsonl" if s.reasons else "kept.jsonl"
                handles[target].write(dump_line(annotate(data, s)))
                counts[target] += 1
                if not s.reasons:
                    handles["sft.jsonl"].write(dump_line(sft_row(data)))
                    counts["sft.jsonl"] += 1
            if position % 512 == 0:
                bar.update(min(512, len(summaries) - bar.n))
        bar.update(len(summaries) - bar.n)
        if sum(counts[n] for n in ("kept.jsonl", "rejected.jsonl")) != len(summaries):
            raise InputError(changed, file=config.traces[-1])
        complete = True
    finally:
        bar.close()
        for fh in handles.values():
            fh.close()
        if not complete:  # no half-written outputs left beside the old ones
            for path in tmp.values():
                path.unlink(missing_ok=True)
    for name in names:
        os.replace(tmp[name], out / name)
    return counts


@locks_output("filter")
def run_filter(config: FilterConfig) -> dict[str, Any]:
    """Filter `config.traces` into `config.out`; returns the manifest (the report on dry runs)."""
    started = time.time()
    if config.merge:
        return merge_filtered(config)
    if config.shard == "auto":  # a Slurm array task: which shard it is comes from Slurm
        config = config.model_copy(update={"shard": resolve_shard(config.shard)})
    _check_inputs(config)
    index = load_contamination(config)
    read_stats = ReadStats()
    opening = PromptOpening.of(config)
    summaries = first_pass(config, index, read_stats, opening)
    if opening.stale():
        # Traces without markers came before the ones showing that their prompt opened the
        # thinking: read once more, now knowing (rare: one extra pass over R1-style traces).
        opening.restart()
        read_stats = ReadStats()
        summaries = first_pass(config, index, read_stats, opening)
    stats = VerifyStats()
    need = sum(1 for s in summaries if s.gold is not None and s.predicted is not None)
    bar = progress_bar(need, "filter: verify", unit="trace", leave=False)
    try:
        decide(summaries, config, stats, on_verified=bar.update)
    finally:
        bar.close()
    report = build_report(summaries, stats)
    # Traces from other tools lack some fields: say once which checks could not run.
    report["checks_not_run"] = checks_not_run(read_stats) + opening.cannot_tell()
    report["thinking_opened_in_prompt"] = opening.report()
    report["traces_from_other_tools"] = read_stats.foreign
    for note in report["checks_not_run"]:
        print(f"filter: {note}")
    if config.dry_run:
        f = report["funnel"]
        print(funnel_table(report))
        print(f"filter (dry run): {f['traces_in']} traces, {f['kept']} would be kept, "
              f"{f['rejected']} rejected; nothing written")
        return {"dry_run": True, **report}

    out = Path(config.out)  # type: ignore[arg-type]
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until this run finishes
    counts = _write_outputs(config, summaries, out)
    plot = "confidence.png" if plot_confidence(summaries, out / "confidence.png") else None
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    lengths_plot = out / "reasoning_lengths.png"
    lengths = lengths_plot.name if plot_reasoning_lengths(summaries, lengths_plot) else None
    (out / "report.md").write_text(report_markdown(report, plot, lengths))
    inputs = {str(p): sha256_file(Path(p)) for p in [*config.traces, *config.decontaminate]}
    f = report["funnel"]
    manifest = write_manifest(
        out,
        stage="filter",
        config=config,
        inputs=inputs,
        counts={"traces_in": f["traces_in"], "kept": f["kept"], "rejected": f["rejected"],
                "sft": counts["sft.jsonl"], "problems": report["problems"],
                "problems_covered": report["coverage"]["problems_with_kept_trace"]},
        started=started,
        extra={"funnel": f["steps"]},
    )
    print(f"filter: {f['traces_in']} traces, {f['kept']} kept, {f['rejected']} rejected, "
          f"coverage {report['coverage']['share']} -> {out}")
    return manifest


# ---------------------------------------------------------------------------------------------
# Shards: filter one shard of the traces, then merge the shards' outputs


def _shard_key(item: TraceLine) -> str:
    """What decides a line's shard: its problem id (as generate splits), else its place.

    The same on both passes: a line that cannot be read as a trace still goes to exactly one
    shard (by file and line), so every line is counted once over all shards.
    """
    if item.trace is not None:
        return item.trace.problem_id
    try:
        data = json.loads(item.text)
    except json.JSONDecodeError:
        data = None
    pid = data.get("problem_id") if isinstance(data, dict) else None
    return pid if isinstance(pid, str) else f"{item.path}:{item.line}"


def shard_traces(
    config: FilterConfig, validate: bool = True, stats: ReadStats | None = None
) -> Iterator[TraceLine]:
    """`read_traces` over config.traces, keeping only `config.shard`'s lines when it is set."""
    if config.shard is None:
        yield from read_traces(config.traces, trace_fields(config), validate=validate,
                               stats=stats)
        return
    index, count = parse_shard(config.shard)
    # The reader counts each line before yielding it; only this shard's counts are passed on.
    seen = ReadStats()
    before = (0, 0, Counter())
    for item in read_traces(config.traces, trace_fields(config), validate=validate, stats=seen):
        mine = in_shard(_shard_key(item), index, count)
        if mine and stats is not None:
            stats.traces += seen.traces - before[0]
            stats.foreign += seen.foreign - before[1]
            stats.missing.update(seen.missing - before[2])
        before = (seen.traces, seen.foreign, Counter(seen.missing))
        if mine:
            yield item


OUTPUTS = ("kept.jsonl", "rejected.jsonl", "sft.jsonl")
# Keys that may differ between the shards of one filter run; any other is an error to merge.
PER_SHARD_KEYS = {"traces", "out", "shard", "merge", "dry_run", "verify_processes"}


def _read_shard(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, report) of one finished filter output folder."""
    from cotdistill.records import read_manifest

    manifest = read_manifest(folder)
    if manifest is None or manifest.get("stage") != "filter":
        raise InputError("not a finished filter output (no filter manifest.json)", file=folder)
    missing = [n for n in (*OUTPUTS, "report.json") if not (folder / n).is_file()]
    if missing:
        raise InputError(f"missing {', '.join(missing)}", file=folder)
    return manifest, json.loads((folder / "report.json").read_text())


def check_shard_set(folders: Sequence[Path], manifests: Sequence[dict[str, Any]]) -> None:
    """The folders are the shards of one filter run: same settings, each shard once, none
    missing (folders filtered without --shard are merged as they are)."""
    first = manifests[0]["config"]
    for folder, manifest in zip(folders, manifests, strict=True):
        for key in sorted(set(first) | set(manifest["config"])):
            if key not in PER_SHARD_KEYS and manifest["config"].get(key) != first.get(key):
                raise InputError(
                    f"filtered with {key}={manifest['config'].get(key)!r}, but {folders[0]} "
                    f"with {first.get(key)!r}: shards of one dataset must share their settings",
                    file=folder, field=key)
    specs = [m["config"].get("shard") for m in manifests]
    if not any(specs):
        return
    if not all(specs):
        raise InputError("some folders were filtered with --shard and some without",
                         file=folders[specs.index(None)], field="shard")
    parsed = [parse_shard(s) for s in specs]
    counts = {n for _, n in parsed}
    if len(counts) > 1:
        raise InputError(f"shards of different splits: {', '.join(specs)}", field="shard")
    count = counts.pop()
    indices = [i for i, _ in parsed]
    twice = sorted({i for i in indices if indices.count(i) > 1})
    if twice:
        raise InputError(f"shard {twice[0]}/{count} is given twice", field="shard")
    absent = sorted(set(range(count)) - set(indices))
    if absent:
        raise InputError(f"shards {', '.join(f'{i}/{count}' for i in absent)} are missing "
                         "(merge all N shards, or filter the missing ones first)", field="shard")


def _concatenate(folders: Sequence[Path], out: Path) -> tuple[dict[str, int], list[dict]]:
    """Write the shards' outputs one after another into `out`; a problem found in two shards
    stops the merge before anything replaces the old outputs. Returns line counts and, for the
    report, each trace row's confidence fields."""
    owner: dict[str, Path] = {}
    counts = dict.fromkeys(OUTPUTS, 0)
    rows: list[dict[str, Any]] = []
    tmp = {name: out / (name + ".tmp") for name in OUTPUTS}
    complete = False
    handles = {name: open(tmp[name], "w", encoding="utf-8") for name in OUTPUTS}  # noqa: SIM115
    try:
        for folder in folders:
            mine: set[str] = set()
            for name in OUTPUTS:
                with open(folder / name, encoding="utf-8") as fh:
                    for lineno, line in enumerate(fh, start=1):
                        handles[name].write(line)
                        counts[name] += 1
                        if name == "sft.jsonl":
                            continue
                        row = json.loads(line)
                        pid = row.get("problem_id")
                        if pid is None:  # an unreadable input line, set aside with its error
                            continue
                        if owner.get(pid, folder) != folder:
                            raise InputError(f"problem {pid!r} is in two shards ({owner[pid]} "
                                             f"and {folder})", file=folder / name,
                                             line=lineno, field="problem_id")
                        mine.add(pid)
                        rows.append({k: row.get(k) for k in (
                            "correct", "mean_logprob", "min_logprob", "problem_id", "reasons",
                            "reasoning_tokens", "answer_tokens", "finished_thinking")})
            owner.update(dict.fromkeys(mine, folder))
        complete = True
    finally:
        for fh in handles.values():
            fh.close()
        if not complete:
            for path in tmp.values():
                path.unlink(missing_ok=True)
    for name in OUTPUTS:
        os.replace(tmp[name], out / name)
    return counts, rows


def _add(a: Any, b: Any) -> Any:
    """Add two reports' numbers key by key (lists of funnel steps by their check name)."""
    if isinstance(a, bool) or a is None or b is None:
        return a if b is None else b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a.get(k), b.get(k)) for k in {**a, **b}}
    return a


def _merge_votes(parts: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    merged: dict[str, Any] = {"problems": 0, "votes": {}, "traces_not_voting": 0}
    for part in parts:
        if part:  # reports of older shards have none
            merged = _add(merged, part)
    return merged


def merge_reports(reports: Sequence[dict[str, Any]], rows: Sequence[dict]) -> dict[str, Any]:
    """One report for the union of disjoint shards: counts added up, shares and quantiles
    computed again over all traces."""
    steps: dict[str, dict[str, int]] = {}
    for report in reports:
        for step in report["funnel"]["steps"]:
            prev = steps.get(step["check"], {"in": 0, "rejected": 0, "out": 0})
            steps[step["check"]] = {k: prev[k] + step[k] for k in ("in", "rejected", "out")}
    funnel_total = {
        key: sum(r["funnel"][key] for r in reports) for key in ("traces_in", "kept", "rejected")
    }
    reasons: Counter[str] = Counter()
    for report in reports:
        reasons.update(report["funnel"].get("reasons_any", {}))
    problems = sum(r["problems"] for r in reports)
    covered = sum(r["coverage"]["problems_with_kept_trace"] for r in reports)
    accuracy: dict[str, dict[str, Any]] = {}
    for report in reports:
        for teacher, acc in report["teacher_accuracy"].items():
            accuracy[teacher] = _add(accuracy.get(teacher, {}), acc)
    for acc in accuracy.values():
        acc["accuracy"] = (round(acc["correct"] / acc["traces_with_gold"], 4)
                           if acc.get("traces_with_gold") else None)
    conf: dict[str, Any] = {}
    for name, flag in (("correct", True), ("wrong", False)):
        logps = [r["mean_logprob"] for r in rows
                 if r["correct"] is flag and r["mean_logprob"] is not None]
        mins = [r["min_logprob"] for r in rows
                if r["correct"] is flag and r["min_logprob"] is not None]
        conf[name] = {"mean_logprob": _quantiles(logps),
                      "mean_prob": _quantiles([math.exp(v) for v in logps]),
                      "min_logprob": _quantiles(mins)}
    thinking = None
    if any(r.get("reasoning") for r in reports):
        thinking = reasoning_report([
            Summary(problem_id=r["problem_id"], correct=r["correct"],
                    reasons=tuple(r["reasons"] or ()), reasoning_tokens=r["reasoning_tokens"],
                    answer_tokens=r["answer_tokens"], finished_thinking=r["finished_thinking"])
            for r in rows])
    verification = [r["verification"] for r in reports if r.get("verification")]
    merged_verification: Any = None
    for v in verification:
        merged_verification = _add(merged_verification or {}, v)
    kept_per_problem: dict[str, int] = {}
    for report in reports:
        kept_per_problem = _add(kept_per_problem, report.get("kept_per_problem", {}))
    return {
        "funnel": {**funnel_total,
                   "steps": [{"check": c, **counts} for c, counts in steps.items()],
                   "reasons_any": dict(sorted(reasons.items(),
                                              key=lambda kv: _ORDER.get(kv[0], len(_ORDER))))},
        "problems": problems,
        "problems_with_gold": sum(r["problems_with_gold"] for r in reports),
        "majority_labelled_traces": sum(r["majority_labelled_traces"] for r in reports),
        "majority_votes": _merge_votes([r.get("majority_votes") for r in reports]),
        "coverage": {"problems_with_kept_trace": covered,
                     "share": round(covered / problems, 4) if problems else None},
        "teacher_accuracy": accuracy,
        "confidence": conf,
        "kept_per_problem": dict(sorted(kept_per_problem.items(), key=lambda kv: int(kv[0]))),
        "reasoning": thinking,
        "verification": merged_verification,
        "checks_not_run": sorted({n for r in reports for n in r.get("checks_not_run", [])}),
        "traces_from_other_tools": sum(r.get("traces_from_other_tools") or 0 for r in reports),
    }


def merge_filtered(config: FilterConfig) -> dict[str, Any]:
    """`filter --merge DIR... --out OUT`: the shards' outputs as one filter output."""
    started = time.time()
    if config.out is None:
        raise InputError("filter --merge needs --out DIR", field="out")
    if config.traces:
        raise InputError("--merge combines filtered folders; give --traces or --merge, not both",
                         field="merge")
    folders = [Path(f) for f in config.merge]
    out = Path(config.out)
    if out.resolve() in {f.resolve() for f in folders}:
        raise InputError("--out must not be one of the merged folders", field="out")
    read = [_read_shard(f) for f in folders]
    manifests = [m for m, _ in read]
    check_shard_set(folders, manifests)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # incomplete until this merge finishes
    counts, rows = _concatenate(folders, out)
    report = merge_reports([r for _, r in read], rows)
    report["shards"] = [
        {"folder": str(f), "shard": m["config"].get("shard"), "funnel": r["funnel"]["traces_in"],
         "kept": r["funnel"]["kept"]} for f, (m, r) in zip(folders, read, strict=True)]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(report_markdown(report, None, None))
    f = report["funnel"]
    manifest = write_manifest(
        out, stage="filter", config=config,
        inputs={str(folder / n): sha256_file(folder / n) for folder in folders for n in OUTPUTS},
        counts={"traces_in": f["traces_in"], "kept": f["kept"], "rejected": f["rejected"],
                "sft": counts["sft.jsonl"], "problems": report["problems"],
                "problems_covered": report["coverage"]["problems_with_kept_trace"]},
        started=started,
        extra={"funnel": f["steps"], "merged_from": [str(f) for f in folders]},
    )
    print(f"filter: merged {len(folders)} folders: {f['traces_in']} traces, {f['kept']} kept, "
          f"{f['rejected']} rejected, coverage {report['coverage']['share']} -> {out}")
    return manifest
