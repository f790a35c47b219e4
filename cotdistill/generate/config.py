"""Settings of the generate stage, and which problems it samples."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
)

from cotdistill.config import EngineConfig, SamplingConfig, ThinkConfig
from cotdistill.errors import InputError
from cotdistill.problems import ProblemFields, in_shard, parse_shard
from cotdistill.records import Problem


class GenerateConfig(SamplingConfig, EngineConfig, ThinkConfig):
    problems: Path | None = Field(None, description="Problems file or `datasets` folder.")
    out: Path | None = Field(None, description="Output directory.")
    teacher: str | None = Field(
        None, description="Model folder or hub id; default: the embedded SmolLM2-135M-Instruct."
    )
    question_field: list[str] = Field(
        default_factory=lambda: ["question", "problem"],
        description="Candidate field names for the question, first present wins.",
    )
    answer_field: list[str] = Field(
        default_factory=lambda: ["answer", "solution"],
        description="Candidate field names for the gold answer or solution.",
    )
    id_field: str = Field("id", description="Field holding a problem id; else a question hash.")
    question_template: str | None = Field(
        None,
        description="Build the question from several fields with a format string over the "
        "row, e.g. \"{Body} {Question}\"; replaces question_field.",
    )
    category_field: str | None = Field(
        None,
        description="Field holding a category (subject, level, type), kept as `category` on "
        "every problem, trace and evaluation row.",
    )
    answer_format: Literal["auto", "gsm8k", "boxed", "raw"] = Field(
        "auto",
        description="How to read the gold answer: `#### x`, last \\boxed{x}, as it is, or auto.",
    )
    prompt_template: str = Field(
        "math_cot", description="Template name in prompts/ or a path to a template file."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first K problems.")
    shard: str | None = Field(
        None, pattern=r"^(\d+/\d+|auto)$", description="I/N: run only shard I (0-based) of N; "
        "auto: this Slurm array task's (SLURM_ARRAY_TASK_ID minus SLURM_ARRAY_TASK_MIN of "
        "SLURM_ARRAY_TASK_COUNT)."
    )
    executor: Literal["local", "ray"] = Field(
        "local", description="local: this process; ray: run `shards` shards as Ray tasks, each "
        "with its own engine, into <out>/shard-I-of-N/, then merge (cotdistill/executors/)."
    )
    ray_address: str | None = Field(
        None, description="executor ray: the cluster to join (ray://HOST:10001 or HOST:6379); "
        "unset: RAY_ADDRESS, else a local Ray started for this run."
    )
    shards: int = Field(1, gt=0, description="executor ray: how many shards (Ray tasks).")
    shard_cpus: float = Field(
        1.0, gt=0, description="executor ray: CPUs each shard task declares."
    )
    shard_gpus: float = Field(
        0.0, ge=0, description="executor ray: GPUs each shard task declares (its vLLM engine's "
        "tensor_parallel_size x data_parallel_size on a GPU cluster)."
    )
    task_retries: int = Field(
        2, ge=0, description="executor ray: times Ray reruns a shard task that died; the rerun "
        "resumes the shard's traces."
    )
    batch_size: int = Field(
        256, gt=0, description="Problems per engine call; each batch is written when done."
    )
    until_correct: int | None = Field(
        None, ge=1, description="Sample each problem with a gold answer in waves of n until it "
        "has K verified-correct finished traces (the filter's answer check) or max_samples "
        "samples; problems without gold get n. Unset: n for every problem."
    )
    max_samples: int | None = Field(
        None, gt=0, description="until_correct: the most samples one problem may cost "
        "(at least n and at least until_correct)."
    )
    think_in_prompt: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="Whether the chat template opens the thinking in the prompt (R1 distills "
        "end it with <think>), so completions start inside it; auto: render the teacher's "
        "template and see (in-process engine; no for a server).",
    )


TRACES = "traces.jsonl"


def check_adaptive(config: GenerateConfig) -> None:
    """`--until-correct K --max-samples M`: what does not fit together, said before any work."""
    k, m = config.until_correct, config.max_samples
    if k is None:
        if m is not None:
            raise InputError("--max-samples needs --until-correct K", field="max_samples")
        return
    if m is None:
        raise InputError("--until-correct needs --max-samples M (the budget per problem)",
                         field="max_samples")
    if m < k:
        raise InputError(f"max_samples {m} < until_correct {k}: no problem could reach K",
                         field="max_samples")
    if m < config.n:
        raise InputError(f"max_samples {m} < n {config.n}: the first wave is n samples",
                         field="max_samples")
    if config.temperature == 0:
        raise InputError("--until-correct needs temperature > 0 (greedy waves repeat the same "
                         "sample)", field="temperature")


def select_problems(problems: list[Problem], config: GenerateConfig) -> list[Problem]:
    if config.limit is not None:
        problems = problems[: config.limit]
    if config.shard is not None:
        index, count = parse_shard(config.shard)
        problems = [p for p in problems if in_shard(p.id, index, count)]
    return problems


def problem_fields(config: GenerateConfig) -> ProblemFields:
    return ProblemFields.of(config)
