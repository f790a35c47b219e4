"""Settings of the synthesize stage, and the records it writes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from cotdistill.config import EngineConfig, SamplingConfig, ThinkConfig
from cotdistill.records import Record

Strategy = Literal["numbers", "rephrase", "similar", "backward"]
STRATEGIES: tuple[str, ...] = ("numbers", "rephrase", "similar", "backward")
# Strategies whose problems the teacher writes (prompts/synth_<strategy>.yaml).
WRITTEN = ("rephrase", "similar", "backward")

PROBLEMS, REJECTED, TRACES, WRITTEN_FILE = (
    "problems.jsonl", "rejected.jsonl", "traces.jsonl", "written.jsonl")


class SynthesizeConfig(SamplingConfig, EngineConfig, ThinkConfig):
    problems: Path | None = Field(None, description="Seed problems file (as for generate).")
    out: Path | None = Field(None, description="Output directory.")
    teacher: str | None = Field(
        None, description="Model folder or hub id that votes (and writes problems for "
        "rephrase, similar, backward); default: the embedded SmolLM2-135M-Instruct."
    )
    strategy: list[Strategy] = Field(
        default_factory=lambda: ["numbers"],
        description="How new problems are made: numbers (new numbers; exact gold where the "
        "seed has equations), rephrase, similar, backward (FOBAR; the teacher writes these). "
        "Several: numbers,rephrase.",
    )
    count: int = Field(
        1, gt=0, description="New problems made from each seed with each strategy."
    )
    n: int = Field(8, gt=0, description="Teacher samples per problem labelled by votes.")
    temperature: float = Field(0.7, ge=0.0, description="Sampling temperature of the votes.")
    min_votes: int = Field(
        4, gt=0, description="Samples that must agree (by math equivalence) for a vote label."
    )
    min_margin: int = Field(
        2, ge=0, description="Votes by which the majority answer must beat the runner-up."
    )
    vote_all: bool = Field(
        False, description="Also vote on problems with an exact (equation) label, to measure "
        "the votes' precision against it (manifest: vote_precision); the exact label stays."
    )
    decontaminate: list[Path] = Field(
        default_factory=list, description="Evaluation / validation problem files no made "
        "problem may copy: exact, n-gram or near-duplicate (numbers masked)."
    )
    decontaminate_ngram: int = Field(
        10, ge=3, description="Words in a shared n-gram (numbers masked) that count as a copy "
        "of an evaluation problem."
    )
    near_duplicate: float = Field(
        0.3, gt=0, le=1, description="Jaccard similarity of word 3-gram sets (numbers masked) "
        "at or above which a made problem is a near-duplicate of an evaluation problem. GSM8K "
        "train vs test: 99 % of problems below 0.17; one changed word scores 0.68 or more."
    )
    question_field: list[str] = Field(
        default_factory=lambda: ["question", "problem"],
        description="Candidate field names for the question, first present wins.",
    )
    answer_field: list[str] = Field(
        default_factory=lambda: ["answer", "solution"],
        description="Candidate field names for the gold answer or solution (GSM8K "
        "<<a*b=c>> annotations in it are read as equations).",
    )
    id_field: str = Field("id", description="Field holding a problem id; else a question hash.")
    prompt_template: str = Field(
        "plain", description="Template the votes are sampled with (prompts/)."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first K seeds.")
    batch_size: int = Field(64, gt=0, description="Problems per engine call; each batch is "
                            "written when done.")
    synth_seed: int = Field(0, description="Seed of the new numbers (same seed, same problems).")
    dry_run: bool = Field(False, description="Make and check the problems, print a few, and "
                          "stop before any model is loaded.")

    @field_validator("strategy", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        if isinstance(value, list) and any(isinstance(v, str) and "," in v for v in value):
            return [s.strip() for v in value for s in str(v).split(",") if s.strip()]
        return value


class SyntheticProblem(Record):
    """One line of problems.jsonl: a generate-ready problem with its provenance."""

    id: str
    question: str
    answer: str
    synthetic_from: str
    strategy: str
    label_source: Literal["equation", "votes"]
    votes: int | None = None
    margin: int | None = None
    samples: int | None = None
    # vote_all: the vote beside an exact label, to measure how often votes are right
    vote_label: str | None = None
    vote_passes: bool | None = Field(None, description="min_votes and min_margin are met.")
    vote_agrees: bool | None = Field(None, description="The vote's top answer is the exact one.")


class Rejected(Record):
    """One line of rejected.jsonl: a made problem set aside, and why."""

    id: str
    question: str
    synthetic_from: str
    strategy: str
    reason: str
    votes: int | None = None
    margin: int | None = None
