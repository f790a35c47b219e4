"""Planning refinement rounds: the split, and each round's generate, filter, train and evaluate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from cotdistill.config import overlay, validate_config
from cotdistill.errors import InputError

if TYPE_CHECKING:
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.filter.config import FilterConfig
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.run.config import PipelineConfig
    from cotdistill.run.steps import Step
from cotdistill.run.config import PROBLEM_KEYS, RefineConfig
from cotdistill.run.refine.report import refinement_report
from cotdistill.run.refine.stages import SelectConfig, SplitConfig, normalized_fields

M = TypeVar("M", bound=BaseModel)


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
    from cotdistill.run.steps import Step

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
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.run.steps import Step
    from cotdistill.run.steps import owned as _owned
    from cotdistill.run.steps import section_of as _section

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
