"""Iterative refinement: find the problems a trained student fails, and teach it those.

`cotdistill run` with `refine: {rounds: R, ...}` adds R rounds after one student's training.
First a share of the training problems is set aside as a validation split (a seeded hash of each
id, so every rerun draws the same split); the run's `generate` then samples only the rest, so no
student trains on a validation problem. Round r, each step a stage with its own folder under
`out/refine/round-r/` (manifest and reuse as for every stage of `run`):

  validate  score the current student on the round's validation problems (`cotdistill
            evaluate`; never the evaluation set);
  select    the validation problems it fails (share of correct samples below `fail_below`;
            at most `max_problems`, a seeded draw) and, with `weak_category_problems`, that many
            training problems of each category in which it does worse than on average. The
            selected validation problems leave the validation set: they are training data from
            now on, so every round is validated on problems the student never trained on;
  generate  the teacher samples `samples` traces per selected problem (engine seed + r, so the
            draws differ from the first run's);
  filter    the run's filter on the new traces (the evaluation set always decontaminates:
            `refine.filter.decontaminate` entries are added to it, never replace it);
  train     continue training the student (from the previous round's weights) on the union of
            everything kept so far.

Every round's student is scored in the run's `evaluate` stage next to the others (the teacher
once, comparisons paired over the same problems); `Refinement.report_lines` adds accuracy per
round and the per-category change, with intervals, to the run's report.

The pure pieces work on records: `split_ids`, `problem_scores`, `weak_categories`,
`select_round`; `run_split` and `run_select` add the files; `plan_split` and `plan_rounds`
build the pipeline's steps (cotdistill/pipeline.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field

from cotdistill.config import StrictModel, overlay, validate_config
from cotdistill.errors import InputError
from cotdistill.locking import locks_output
from cotdistill.problems import AnswerFormat, ProblemFields, load_problems
from cotdistill.records import (
    Problem,
    parse_json_object,
    read_manifest,
    sha256_file,
    sha256_text,
    write_jsonl,
    write_manifest,
)

if TYPE_CHECKING:
    from cotdistill.evaluate import EvaluateConfig
    from cotdistill.filter import FilterConfig
    from cotdistill.generate import GenerateConfig
    from cotdistill.pipeline import PipelineConfig, Step

M = TypeVar("M", bound=BaseModel)
DEFAULT_FRACTION = 0.1
# The keys that say how to read a problems file; the split rewrites the problems in one form.
PROBLEM_KEYS = ("question_field", "answer_field", "id_field", "question_template",
                "category_field", "answer_format")


class RefineConfig(StrictModel):
    rounds: int = Field(gt=0, description="Refinement rounds after the student's training.")
    student: str | None = Field(None, description="Student to refine; default: the first.")
    validation_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of the training problems set aside for "
        f"validation (drawn among those with a gold answer); default {DEFAULT_FRACTION}.",
    )
    validation_size: int | None = Field(
        None, gt=0, description="Validation problems, instead of validation_fraction.")
    seed: int = Field(0, description="Seed of the validation split and of every draw.")
    fail_below: float = Field(
        0.5, gt=0, le=1, description="A validation problem is failed when the share of its "
        "samples that are correct is below this (one greedy sample: when it is wrong).",
    )
    max_problems: int | None = Field(
        None, gt=0, description="At most this many failed problems per round (a seeded draw), "
        "so a weak student does not use up the validation set in one round; unset: all.",
    )
    samples: int = Field(8, gt=0, description="Teacher samples per selected problem.")
    weak_category_problems: int = Field(
        0, ge=0, description="Also sample this many training problems of each weak category "
        "(validation accuracy below the student's mean); needs generate.category_field.",
    )
    validation: dict[str, Any] = Field(
        default_factory=dict, description="`cotdistill evaluate` keys for the validation, over "
        "the run's evaluate section (its limit and latency do not apply).",
    )
    generate: dict[str, Any] = Field(
        default_factory=dict, description="`cotdistill generate` keys for the rounds, over the "
        "run's generate section (n is `samples`).",
    )
    filter: dict[str, Any] = Field(
        default_factory=dict, description="`cotdistill filter` keys for the rounds, over the "
        "run's filter section (e.g. max_per_problem: 4 to keep more traces of hard problems). "
        "decontaminate entries are added to the run's (the evaluation problems and the filter "
        "section's), never replace them.",
    )
    train: dict[str, Any] = Field(
        default_factory=dict, description="`cotdistill train` keys for each round, over the "
        "student's own (e.g. epochs: 1).",
    )


# --- the pure core ------------------------------------------------------------------------------


def split_ids(ids: Iterable[str], size: int, seed: int | str) -> set[str]:
    """The `size` ids with the smallest seeded hash: the same split on every rerun, and one that
    moves only at its margin when problems are added to the file (a shuffle would redraw all)."""
    return set(sorted(ids, key=lambda pid: sha256_text(f"{seed}:{pid}"))[:size])


def validation_count(problems: int, labelled: int, fraction: float | None,
                     size: int | None) -> int:
    """How many problems the split sets aside; bad sizes are an InputError naming the key."""
    count = size if size is not None else max(1, round((fraction or DEFAULT_FRACTION) * problems))
    key = "refine.validation_size" if size is not None else "refine.validation_fraction"
    if count > labelled:
        raise InputError(f"{count} validation problems asked for, but only {labelled} training "
                         "problems have a gold answer to score against", field=key)
    if count >= problems:
        raise InputError(f"{count} validation problems would leave no training problem",
                         field=key)
    return count


def problem_scores(rows: Iterable[Mapping[str, Any]], model: str | None = None
                   ) -> dict[str, float]:
    """Per problem, the share of `model`'s samples that are correct (evaluate's results rows)."""
    hits: dict[str, list[bool]] = {}
    for row in rows:
        if model is None or row.get("model") == model:
            hits.setdefault(str(row["problem_id"]), []).append(bool(row.get("correct")))
    return {pid: sum(h) / len(h) for pid, h in hits.items()}


def weak_categories(scores: Mapping[str, float], categories: Mapping[str, str | None]
                    ) -> dict[str, float]:
    """Categories whose accuracy is below the mean over all scored problems -> that accuracy."""
    if not scores:
        return {}
    mean = sum(scores.values()) / len(scores)
    groups: dict[str, list[float]] = {}
    for pid, score in scores.items():
        category = categories.get(pid)
        if category is not None:
            groups.setdefault(category, []).append(score)
    accuracy = {c: sum(v) / len(v) for c, v in sorted(groups.items())}
    return {c: a for c, a in accuracy.items() if a < mean}


def _draw(problems: Sequence[Problem], count: int | None, salt: str) -> list[Problem]:
    """`count` problems chosen by seeded hash, in their original order; all when count is None."""
    if count is None or count >= len(problems):
        return list(problems)
    chosen = split_ids((p.id for p in problems), count, salt)
    return [p for p in problems if p.id in chosen]


@dataclass(frozen=True)
class Selection:
    """What one round samples, and the validation set the next round scores on."""

    failed: list[str]  # every failed validation problem, in validation order
    chosen: list[Problem]  # the failed problems the teacher samples now (<= max_problems)
    weak: dict[str, float]  # weak category -> the student's validation accuracy in it
    extra: list[Problem]  # training problems drawn from the weak categories
    remaining: list[Problem]  # next round's validation set: the validation minus `chosen`
    accuracy: float | None  # the student's mean validation accuracy


def select_round(
    validation: Sequence[Problem],
    scores: Mapping[str, float],
    pool: Sequence[Problem],
    *,
    fail_below: float = 0.5,
    max_problems: int | None = None,
    weak_category_problems: int = 0,
    seed: int = 0,
    round_index: int = 1,
) -> Selection:
    """The failed validation problems (capped by a seeded draw), extra training problems of the
    weak categories, and what stays held out. `scores` must cover every validation problem."""
    missing = [p.id for p in validation if p.id not in scores]
    if missing:
        raise InputError(f"{len(missing)} validation problems have no validation result "
                         f"(first: {missing[0]!r})", field="problem_id")
    held = {p.id: scores[p.id] for p in validation}
    failed = [p for p in validation if held[p.id] < fail_below]
    chosen = _draw(failed, max_problems, f"{seed}:{round_index}:failed")
    taken = {p.id for p in chosen}
    weak = weak_categories(held, {p.id: p.category for p in validation}) \
        if weak_category_problems else {}
    extra = [p for category in weak for p in _draw(
        [q for q in pool if q.category == category and q.id not in taken],
        weak_category_problems, f"{seed}:{round_index}:{category}")]
    return Selection(
        failed=[p.id for p in failed], chosen=chosen, weak=weak, extra=extra,
        remaining=[p for p in validation if p.id not in taken],
        accuracy=sum(held.values()) / len(held) if held else None,
    )


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


def _rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8", newline="\n") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                yield lineno, parse_json_object(line, path, lineno)


def has_rows(path: Path) -> bool:
    return Path(path).is_file() and any(True for _ in _rows(Path(path)))


def read_normalized(path: Path, categories: bool) -> list[Problem]:
    """Problems of a file written by `problem_row`; an empty file is no problems, not an error."""
    if not has_rows(path):
        return []
    return load_problems(path, ProblemFields(("question",), ("answer",), "id", "raw", None,
                                             "category" if categories else None))


class SplitConfig(StrictModel):
    problems: Path = Field(description="The run's training problems.")
    out: Path = Field(description="Folder for train.jsonl and validation.jsonl.")
    question_field: list[str]
    answer_field: list[str]
    id_field: str
    question_template: str | None
    category_field: str | None
    answer_format: AnswerFormat
    validation_fraction: float | None
    validation_size: int | None
    seed: int


@locks_output("refine split")
def run_split(config: SplitConfig) -> dict[str, Any]:
    """Write the training problems as train.jsonl and validation.jsonl (validation: problems
    with a gold answer, chosen by `split_ids`); both keep the file's order."""
    started = time.time()
    problems = load_problems(config.problems, ProblemFields(
        tuple(config.question_field), tuple(config.answer_field), config.id_field,
        config.answer_format, config.question_template, config.category_field))
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
        for lineno, row in _rows(Path(path)):
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
    rows = [row for _, row in _rows(config.results)] if Path(config.results).is_file() else []
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


# --- the plan: one step per stage of every round -------------------------------------------


# The keys of each refine section that `run` sets, refused in the section: the wiring, and how
# the rounds read the problems files they write (`normalized_fields`).
SET_BY_RUN: dict[str, tuple[str, ...]] = {
    "validation": ("problems", "model", "out", "reference", *PROBLEM_KEYS),
    "generate": ("problems", "out", "teacher", "n", *PROBLEM_KEYS),
    "filter": ("traces", "out"),
    "train": ("data", "student", "out"),
}


def _derive(base: M, keys: Mapping[str, Any], fixed: Mapping[str, Any], section: str,
            source: Any) -> M:
    """A validated stage config with a refine section's keys and the wiring on top, by the
    override rule of nested sections (`overlay`: lists replace, decontamination sets add up).
    The base's own values are taken as they are (a dump would mask credentials in server
    URLs)."""
    try:
        return validate_config(type(base), overlay(overlay(dict(base), keys), fixed), source)
    except InputError as exc:
        raise InputError(exc.message, file=exc.file, field=f"{section}.{exc.field}") from exc


def plan_split(config: PipelineConfig, generate: GenerateConfig, out: Path,
               source: Any) -> tuple[Step, GenerateConfig]:
    """The split step, and the run's generate moved onto the split's training problems."""
    from cotdistill.pipeline import Step

    refine = config.refine
    assert refine is not None
    if refine.validation_fraction is not None and refine.validation_size is not None:
        raise InputError("give validation_fraction or validation_size, not both", file=source,
                         field="refine.validation_size")
    folder = out / "refine" / "split"
    split = SplitConfig(
        problems=Path(generate.problems),  # type: ignore[arg-type]
        out=folder, **{k: getattr(generate, k) for k in PROBLEM_KEYS},
        validation_fraction=refine.validation_fraction,
        validation_size=refine.validation_size, seed=refine.seed)
    moved = generate.model_copy(update={
        "problems": folder / "train.jsonl",
        **normalized_fields(generate.category_field is not None)})
    return Step("refine: split", "refine_split", folder, split, [split.problems]), moved


@dataclass
class Round:
    index: int
    model: str  # the round's student as the evaluation names it
    folder: Path


@dataclass
class Refinement:
    """The rounds' steps, the models they train, and the report section about them."""

    student: str
    config: RefineConfig
    steps: list[Step] = field(default_factory=list)
    models: dict[str, Path] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)
    base_train: Path | None = None  # the refined student's own training folder (round 0)

    def report_lines(self, evaluate: EvaluateConfig) -> list[str]:
        return refinement_report(self, evaluate)


def _continue_from(model: Path, trained_by: Any, source: Any) -> Path:
    """The folder the next round trains from: a full model as it is; a LoRA adapter's merged
    weights (the next round trains its own adapter on top of them)."""
    if not getattr(trained_by, "lora", False):
        return model
    if not trained_by.merge:
        raise InputError("refine continues from the previous round's weights; a LoRA student "
                         "needs `merge: true` in its train keys", file=source, field="refine")
    return model / "merged"


def plan_rounds(config: PipelineConfig, steps: list[Step], models: dict[str, Path],
                generate: GenerateConfig, filtered: FilterConfig, sft: Path,
                source: Any) -> Refinement:
    """Every round's steps (validate, select, generate, filter, train), validated now."""
    from cotdistill.evaluate import EvaluateConfig
    from cotdistill.pipeline import Step, _owned, _section

    refine = config.refine
    assert refine is not None
    names = [s.name for s in config.students]
    if not names:
        raise InputError("refine needs a student", file=source, field="refine")
    name = refine.student or names[0]
    if name not in names:
        raise InputError(f"no student named {name!r}", file=source, field="refine.student")
    for section, owned in SET_BY_RUN.items():
        _owned(getattr(refine, section), owned, f"refine.{section}")
    categories = generate.category_field is not None
    if refine.weak_category_problems and not categories:
        raise InputError("weak categories need categories: set generate.category_field",
                         file=source, field="refine.weak_category_problems")
    by_out = {s.out: s for s in steps}
    train_step = next(s for s in steps if s.name == f"{name}: train")
    generate_step = next(s for s in steps if s.name == "generate")
    teacher_dep = [d for d in generate_step.depends_on if d != Path(generate.problems)]
    evaluate = _section(
        EvaluateConfig, {"prompt_template": generate.prompt_template,
                         "fallback_last_number": filtered.fallback_last_number,
                         **config.engine, **config.evaluate},
        "evaluate", source, set(config.engine) - set(config.evaluate))
    base = train_step.config
    topk = list(base.topk_from) if base.kd == "offline-topk" and "topk_from" not in refine.train \
        else None

    plan = Refinement(name, refine, base_train=train_step.out)
    split = next(s for s in steps if s.kind == "refine_split").out
    validation, data = split / "validation.jsonl", [sft]
    model, label, trained_by = models[name], name, by_out[models[name]].config
    for r in range(1, refine.rounds + 1):
        folder, previous = split.parent / f"round-{r}", label
        label = f"{name}-round-{r}"
        if label in models:
            raise InputError(f"a model is already named {label!r}", file=source,
                             field="refine.student")
        start = _continue_from(model, trained_by, source)
        check = _derive(evaluate, refine.validation, {
            **normalized_fields(categories), "problems": validation, "model": [
                f"{previous}={model}"], "reference": previous, "limit": None,
            "latency_prompts": 0, "out": folder / "validate"}, "refine.validation", source)
        select = SelectConfig(
            validation=validation, results=folder / "validate" / "results.jsonl",
            model=previous, pool=split / "train.jsonl", training_data=list(data),
            out=folder / "select", round_index=r, categories=categories,
            fail_below=refine.fail_below, max_problems=refine.max_problems,
            weak_category_problems=refine.weak_category_problems, seed=refine.seed)
        new = _derive(generate, refine.generate, {
            "problems": folder / "select" / "problems.jsonl", "out": folder / "generate",
            "n": refine.samples, "limit": None, "seed": generate.seed + r}, "refine.generate",
            source)
        if new.n > 1 and new.temperature == 0:
            raise InputError("samples > 1 needs temperature > 0 (greedy samples are the "
                             "same)", file=source, field="refine.samples")
        kept = _derive(filtered, refine.filter, {
            "traces": [folder / "generate" / "traces.jsonl"], "out": folder / "filter",
            "decontaminate": [config.eval_problems]}, "refine.filter", source)
        data = [*data, folder / "filter" / "sft.jsonl"]
        if topk is not None:
            topk.append(folder / "generate")
        trained_by = _derive(base, refine.train, {
            "data": data, "student": str(start), "out": folder / "train",
            **({"topk_from": list(topk)} if topk is not None else {})}, "refine.train", source)
        plan.steps += [
            Step(f"{label}: validate", "refine_validate", check.out, check, [validation, model]),
            Step(f"{label}: select", "refine_select", select.out, select,
                 [validation, select.results, select.pool, *select.training_data]),
            Step(f"{label}: generate", "refine_generate", new.out, new,
                 [Path(new.problems), *teacher_dep]),
            Step(f"{label}: filter", "refine_filter", kept.out, kept,
                 [*kept.traces, *kept.decontaminate]),
            Step(f"{label}: train", "train", trained_by.out, trained_by,
                 [*data, start, *[d for d in train_step.depends_on if d != sft]]),
        ]
        model, validation = Path(trained_by.out), folder / "select" / "validation.jsonl"
        plan.models[label] = model
        plan.rounds.append(Round(r, label, folder))
    return plan


# --- the report: what each round did to the student on the evaluation set ------------------


def _interval(value: float | None, low: float | None, high: float | None,
              signed: bool = False) -> str:
    if value is None:
        return "-"
    sign = "+" if signed else ""
    if low is None or high is None:
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.3f} [{low:{sign}.3f}, {high:{sign}.3f}]"


def _categories(rows: Sequence[Mapping[str, Any]], reference: str) -> dict[str, str]:
    """problem_id -> category as the evaluation grouped them: the problems' labels, else the
    reference model's answer-length quartiles (cotdistill/evaluation/categories.py)."""
    from types import SimpleNamespace

    from cotdistill.evaluation.categories import labelled_categories, length_quartiles

    samples = [SimpleNamespace(**row) for row in rows]
    labelled = labelled_categories(samples)  # type: ignore[arg-type]
    if labelled is not None:
        return labelled
    return length_quartiles([s for s in samples if s.model == reference])[0]  # type: ignore[misc]


def refinement_report(plan: Refinement, evaluate: EvaluateConfig) -> list[str]:
    """Accuracy on the evaluation set per round with its paired change against round 0, the
    per-category change, and what each round validated, sampled and kept."""
    from cotdistill.metrics import bootstrap_difference, bootstrap_mean

    results = Path(str(evaluate.out)) / "results.jsonl"
    rows = [row for _, row in _rows(results)] if results.is_file() else []
    names = [plan.student, *plan.models]
    scores = {name: problem_scores(rows, name) for name in names}
    base = scores[plan.student]
    stats = {"resamples": evaluate.bootstrap_resamples, "seed": evaluate.bootstrap_seed,
             "confidence": evaluate.confidence}
    config = plan.config
    lines = [
        "## Refinement", "",
        f"`{plan.student}` refined for {config.rounds} round(s). Validation: training problems "
        "held out from the start (never the evaluation set); a validation problem with fewer "
        f"than {config.fail_below:.0%} of its samples correct is failed, the teacher samples "
        f"{config.samples} traces for it, and it leaves the validation set (it is training data "
        "from then on), so each round is validated on problems its student never trained on. "
        "Each round continues training on everything kept so far. Sampled: the failed problems "
        "the teacher sampled (+ training problems of weak categories). Accuracy is on the "
        f"evaluation set; the change is against round 0 with a {evaluate.confidence:.0%} "
        "paired bootstrap interval over problems.", "",
        "| round | model | validated on | failed | sampled | new traces kept | training "
        "examples | evaluation accuracy | change vs round 0 |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for index, name in enumerate(names):
        folder = plan.rounds[index - 1].folder if index else None
        select = manifest_counts(folder / "select") if folder else {}
        train = manifest_counts(folder / "train" if folder else plan.base_train)
        kept = manifest_counts(folder / "filter").get("kept") if folder else None
        sampled = select.get("chosen")
        if select.get("extra"):
            sampled = f"{sampled} + {select['extra']}"
        mine = scores[name]
        accuracy = bootstrap_mean(list(mine.values()), **stats) if mine else None
        change = None
        if index and mine and mine.keys() == base.keys():
            ids = list(base)
            change = bootstrap_difference([mine[i] for i in ids], [base[i] for i in ids], **stats)
        cells = [str(index), name, *(("-" if v is None else str(v)) for v in (
            select.get("validation"), select.get("failed"), sampled, kept,
            train.get("train_examples"))),
            "not evaluated yet" if accuracy is None else _interval(
                accuracy.value, accuracy.low, accuracy.high),
            "-" if change is None else _interval(change.value, change.low, change.high, True)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if rows and base:
        lines += _category_change(rows, names, scores, evaluate, stats)
    return lines


def _category_change(rows: Sequence[Mapping[str, Any]], names: list[str],
                     scores: Mapping[str, Mapping[str, float]], evaluate: EvaluateConfig,
                     stats: Mapping[str, Any]) -> list[str]:
    from cotdistill.metrics import bootstrap_difference

    groups: dict[str, list[str]] = {}
    for pid, category in _categories(rows, evaluate.reference).items():
        groups.setdefault(category, []).append(pid)
    first, last = names[0], names[-1]
    lines = [
        "Per category (as the evaluation below groups its problems): accuracy at each round, "
        f"and the change from round 0 to the last round with a {evaluate.confidence:.0%} paired "
        "bootstrap interval over the category's problems.", "",
        "| category | problems | " + " | ".join(names) + " | change |",
        "|---|---:|" + "---:|" * (len(names) + 1),
    ]
    for category in sorted(groups):
        ids = [i for i in groups[category] if all(i in scores[n] for n in names)]
        if not ids:
            continue
        means = [sum(scores[n][i] for i in ids) / len(ids) for n in names]
        change = bootstrap_difference([scores[last][i] for i in ids],
                                      [scores[first][i] for i in ids], **stats)
        lines.append(f"| {category} | {len(ids)} | " + " | ".join(f"{m:.3f}" for m in means)
                     + f" | {_interval(change.value, change.low, change.high, True)} |")
    return [*lines, ""]


def manifest_counts(folder: Path | None) -> dict[str, Any]:
    return (read_manifest(folder) or {}).get("counts", {}) if folder is not None else {}
