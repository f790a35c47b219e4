"""Settings of the filter stage: which checks run, with which thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from cotdistill.answers.extract import FALLBACK_LAST_NUMBER
from cotdistill.config import StrictModel, ThinkConfig
from cotdistill.problems import AnswerFormat
from cotdistill.reasoning import (
    Markers,
)
from cotdistill.traces import TraceFields

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


ORDER = {name: i for i, name in enumerate(CHECKS)}


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
