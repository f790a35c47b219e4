"""Settings of the evaluate stage, its records and the names of the files it writes."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from cotdistill.answers.extract import FALLBACK_LAST_NUMBER
from cotdistill.backends import Backend
from cotdistill.config import EngineConfig, SamplingConfig, ThinkConfig
from cotdistill.generate.config import GenerateConfig
from cotdistill.problems import AnswerFormat
from cotdistill.records import Record

RESULTS = "results.jsonl"


SUMMARY = "summary.json"


REPORT = "report.md"


PER_MODEL = "models"  # per-model samples, reused while model, problems and settings match


NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+$")


# Checks (gold, prediction) pairs; returns "correct" / "wrong" / "timeout" / "unverifiable".
Verifier = Callable[[Sequence[tuple[str | None, str | None]]], list[str]]


BackendFactory = Callable[[str], Backend]


_generate = GenerateConfig.model_fields


class EvaluateConfig(SamplingConfig, EngineConfig):
    problems: Path | None = Field(None, description="Problems with gold answers to score on.")
    model: list[str] = Field(
        default_factory=list,
        description="NAME=MODEL, repeatable (teacher=..., student=..., base=...). MODEL is a "
        "folder, a hub id, `embedded`, or a LoRA adapter folder (merged into its base first).",
    )
    out: Path | None = Field(None, description="Output directory.")
    reference: str = Field(
        "teacher", description="Model name that retention (student / reference accuracy) uses."
    )
    prompt_template: str = _generate["prompt_template"]
    limit: int | None = _generate["limit"]
    batch_size: int = _generate["batch_size"]
    question_field: list[str] = _generate["question_field"]
    answer_field: list[str] = _generate["answer_field"]
    id_field: str = _generate["id_field"]
    question_template: str | None = _generate["question_template"]
    category_field: str | None = _generate["category_field"]
    answer_format: AnswerFormat = _generate["answer_format"]
    bootstrap_resamples: int = Field(
        1000, gt=0, description="Bootstrap resamples over problems for the intervals."
    )
    bootstrap_seed: int = Field(0, description="Seed of the bootstrap, so intervals repeat.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of the intervals.")
    calibration_bins: int = Field(
        10, gt=0, description="Equal-width confidence bins for the calibration error."
    )
    verify_timeout_s: float = Field(5.0, gt=0, description="math-verify seconds per answer.")
    fallback_last_number: bool = FALLBACK_LAST_NUMBER
    think_start: str = ThinkConfig.model_fields["think_start"]
    think_end: str = ThinkConfig.model_fields["think_end"]
    collapse_below: float = Field(
        0.8, gt=0, description="A category whose whole retention interval lies below this is "
        "reported as a collapsed capability; one too small to show that at `confidence` "
        "(z^2 / problems >= this) is reported as too small to tell, never collapsed.",
    )
    failure_examples: int = Field(
        3, ge=0, description="Examples per failure mode and student in the report."
    )
    contrasts: list[str] = Field(
        default_factory=list, description="MODEL:OTHER pairs whose paired accuracy difference "
        "the report gives beside every model minus the reference (run adds "
        "student:control).",
    )
    share_engine: bool = Field(
        True, description="Models of one architecture (same config, tokenizer and generation "
        "config) run on one vLLM engine, their weights reloaded in place and the prefix cache "
        "emptied between them; false: a fresh engine per model.",
    )
    latency_prompts: int = Field(
        8, ge=0, description="Evaluation prompts sent one at a time (batch 1) per model for "
        "the deployment table's latency, each opened by a fresh tag so no prefix cache holds "
        "it (after an untimed warm-up); 0 disables.",
    )


class EvalSample(Record):
    """One sample of one model on one problem, as written to `results.jsonl`."""

    model: str
    problem_id: str
    sample_index: int
    question: str
    gold_answer: str | None
    completion: str
    predicted_answer: str | None
    verdict: str
    correct: bool
    # None when the backend could not count them (a server that sends no logprobs, n > 1).
    num_tokens: int | None
    finish_reason: str | None
    mean_logprob: float | None
    category: str | None = None
    # Cut at the token limit: its answer is read from a marker closed before the cut only.
    truncated: bool | None = None
    # Reasoning models (cotdistill/reasoning.py); None for samples without thinking.
    reasoning_tokens: int | None = None
    answer_tokens: int | None = None
    finished_thinking: bool | None = None


@dataclass
class ModelRun:
    """What running one model cost: timings and memory, beside its samples."""

    samples: list[EvalSample]
    generation_s: float
    load_s: float = 0.0
    peak_memory_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
