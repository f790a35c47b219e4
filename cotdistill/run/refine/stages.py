"""Refinement's own stages: split the problems, select a round's problems."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from cotdistill.config import StrictModel
from cotdistill.errors import InputError
from cotdistill.infra.files import (
    parse_json_object,
    sha256_file,
    write_jsonl,
    write_manifest,
)
from cotdistill.infra.locking import locks_output
from cotdistill.problems import ProblemFields, load_problems
from cotdistill.records import Problem
from cotdistill.run.config import ProblemFileKeys

if TYPE_CHECKING:
    pass
from cotdistill.run.refine.select import problem_scores, select_round, split_ids, validation_count

# --- files: one problem format for every file the rounds write ------------------------------


def normalized_fields(categories: bool) -> dict[str, Any]:
    """Stage keys that read the files written here (`problem_row`) back as the same problems."""
    return {"question_field": ["question"], "answer_field": ["answer"], "id_field": "id",
            "question_template": None, "answer_format": "raw",
            "category_field": "category" if categories else None}


def problem_row(problem: Problem, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"id": problem.id, "question": problem.question}
    if problem.gold_answer is not None:
        row["answer"] = problem.gold_answer
    if problem.category is not None:
        row["category"] = problem.category
    return {**row, "origin": problem.source, **extra}


def rows_of(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", newline="\n") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, parse_json_object(line, path, lineno)


def has_rows(path: Path) -> bool:
    return Path(path).is_file() and any(True for _ in rows_of(Path(path)))


def read_normalized(path: Path, categories: bool) -> list[Problem]:
    """Problems of a file written by `problem_row`; an empty file is no problems, not an error."""
    if not has_rows(path):
        return []
    return load_problems(path, ProblemFields(("question",), ("answer",), "id", "raw", None,
                                             "category" if categories else None))


class SplitConfig(ProblemFileKeys):
    problems: Path = Field(description="The run's training problems.")
    out: Path = Field(description="Folder for train.jsonl and validation.jsonl.")
    validation_fraction: float | None
    validation_size: int | None
    seed: int


@locks_output("refine split")
def run_split(config: SplitConfig) -> dict[str, Any]:
    """Write the training problems as train.jsonl and validation.jsonl (validation: problems
    with a gold answer, chosen by `split_ids`); both keep the file's order."""
    started = time.time()
    problems = load_problems(config.problems, ProblemFields.of(config))
    labelled = [p.id for p in problems if p.gold_answer is not None]
    count = validation_count(len(problems), len(labelled), config.validation_fraction,
                             config.validation_size)
    held = split_ids(labelled, count, config.seed)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", (problem_row(p) for p in problems if p.id not in held))
    write_jsonl(out / "validation.jsonl", (problem_row(p) for p in problems if p.id in held))
    return write_manifest(
        out, stage="refine_split", config=config,
        inputs={str(config.problems): sha256_file(Path(config.problems))},
        counts={"problems": len(problems), "train": len(problems) - count, "validation": count},
        started=started,
        extra={"summary": f"{count} of {len(problems)} training problems held out for "
                          "validation"},
    )


class SelectConfig(StrictModel):
    validation: Path = Field(description="This round's validation problems.")
    results: Path = Field(description="The validate stage's results.jsonl.")
    model: str = Field(description="The student's name in those results.")
    pool: Path = Field(description="The training problems (weak categories draw from them).")
    training_data: list[Path] = Field(description="Everything the student trained on so far.")
    out: Path
    round_index: int
    categories: bool
    fail_below: float
    max_problems: int | None
    weak_category_problems: int
    seed: int


def check_held_out(validation: Iterable[Problem], data: Iterable[Path]) -> None:
    """A validation problem in the training data means the scores are not held out: refuse.

    It happens when the traces were generated before `refine:` was added (the old generate
    folder holds traces of every problem)."""
    ids = {p.id for p in validation}
    for path in data:
        if not Path(path).is_file():
            continue
        for lineno, row in rows_of(Path(path)):
            if row.get("problem_id") in ids:
                raise InputError(
                    f"validation problem {row['problem_id']!r} is in the training data (traces "
                    "made before `refine:` was set?); run again with `--fresh generate`",
                    file=path, line=lineno, field="problem_id")


@locks_output("refine select")
def run_select(config: SelectConfig) -> dict[str, Any]:
    """Write problems.jsonl (what the teacher samples this round, each with its `reason`) and
    validation.jsonl (what the next round validates on)."""
    started = time.time()
    validation = read_normalized(config.validation, config.categories)
    check_held_out(validation, config.training_data)
    rows = [row for _, row in rows_of(config.results)] if Path(config.results).is_file() else []
    try:
        chosen = select_round(
            validation, problem_scores(rows, config.model),
            read_normalized(config.pool, config.categories), fail_below=config.fail_below,
            max_problems=config.max_problems,
            weak_category_problems=config.weak_category_problems, seed=config.seed,
            round_index=config.round_index)
    except InputError as exc:
        raise InputError(exc.message, file=config.results, field=exc.field) from exc
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "problems.jsonl", [
        *(problem_row(p, reason="failed_validation") for p in chosen.chosen),
        *(problem_row(p, reason=f"weak_category:{p.category}") for p in chosen.extra)])
    write_jsonl(out / "validation.jsonl", (problem_row(p) for p in chosen.remaining))
    counts = {"validation": len(validation), "failed": len(chosen.failed),
              "chosen": len(chosen.chosen), "extra": len(chosen.extra),
              "remaining": len(chosen.remaining)}
    return write_manifest(
        out, stage="refine_select", config=config,
        inputs={str(p): sha256_file(Path(p)) for p in (config.validation, config.results,
                                                        config.pool) if Path(p).exists()},
        counts=counts, started=started,
        extra={"validation_accuracy": chosen.accuracy, "weak_categories": chosen.weak,
               "summary": f"{counts['failed']} of {counts['validation']} validation problems "
                          f"failed (accuracy {chosen.accuracy or 0:.3f}), {counts['chosen']} "
                          "sampled"
                          + (f" + {counts['extra']} of weak categories" if chosen.extra else "")},
    )


_EMPTY_OUTPUTS = {"evaluate": ("results.jsonl",), "generate": ("traces.jsonl",),
                  "filter": ("kept.jsonl", "rejected.jsonl", "sft.jsonl")}


def unless_empty(stage: str, config: Any, run: Callable[[Any], Any]) -> Any:
    """Run a round's validate, generate or filter stage; when its input holds nothing (the
    validation set is used up, or nothing failed), write empty outputs and a manifest instead,
    so the round goes on: its training continues on the data kept so far."""
    inputs = list(config.traces) if stage == "filter" else [config.problems]
    if any(has_rows(Path(p)) for p in inputs):
        return run(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in _EMPTY_OUTPUTS[stage]:
        (out / name).write_text("")
    print(f"refine: {out}: nothing to do (no {'traces' if stage == 'filter' else 'problems'})")
    return write_manifest(out, stage=stage, config=config, inputs={}, started=time.time(),
                          counts={"problems": 0, "samples": 0, "kept": 0, "traces_in": 0},
                          extra={"summary": "nothing to do: empty input"})
