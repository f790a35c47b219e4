"""Planning self-training rounds (`rounds:` in a run; STaR, Zelikman et al. 2022; ReST-EM,
Singh et al. 2023): one problems step, then per round a generate, a filter and a train step.

    rounds: problems   the problems of the run's generate that have a gold answer (the training
                       problems after any refinement validation split; with `synthesize:`, the
                       seeds and the synthetic problems it sampled), written once
    NAME-st-R: generate  the generator samples them: the previous round's student (round 1: the
                       student the main chain trained) or the teacher; adaptively by default
                       (until_correct 1, max_samples max(8, n)): until one verified trace
    NAME-st-R: filter  the run's filter keys + `rounds.filter`, decontaminated like the main
                       filter: the evaluation problems, any validation split, the run's entries
    NAME-st-R: train   the student's train keys + `rounds.train`, from `start` (original: the
                       student's own starting point; last: the previous round's student, whose
                       fp32 master the train stage loads), on the round's kept traces plus, with
                       `keep_previous`, the main chain's (out/filter/sft.jsonl); never an
                       earlier round's traces

Each round's student is evaluated with the rest. The rounds come after every other training
step and write only under out/rounds/: the unfiltered control and the evaluation set are never
an input they change.

    training = plan_self_training(config, steps, models, generate, filtered, sft, validation,
                                  source)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from cotdistill.config import overlay, validate_config
from cotdistill.errors import InputError
from cotdistill.run.config import PROBLEM_KEYS, RoundsConfig
from cotdistill.run.refine.stages import normalized_fields
from cotdistill.run.rounds.report import rounds_report
from cotdistill.run.rounds.stages import PROBLEMS, RoundsProblemsConfig
from cotdistill.run.steps import Step, owned

if TYPE_CHECKING:
    from cotdistill.filter.config import FilterConfig
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.run.config import PipelineConfig

M = TypeVar("M", bound=BaseModel)

# The keys of each rounds section that `run` sets, refused in the section: the wiring, and how
# the rounds read the problems file the run writes (`normalized_fields`).
SET_BY_RUN: dict[str, tuple[str, ...]] = {
    "generate": ("problems", "out", "teacher", *PROBLEM_KEYS),
    "filter": ("traces", "out"),
    "train": ("data", "student", "out"),
}
# Adaptive sampling by default: each problem until one verified-correct trace, at most
# max(MAX_SAMPLES, n) samples (the run's generate settings win when it is adaptive itself).
UNTIL_CORRECT = 1
MAX_SAMPLES = 8


@dataclass
class Round:
    index: int
    generator: str  # "teacher" or the student that sampled, as the evaluation names it
    model: str  # the round's student as the evaluation names it
    folder: Path


@dataclass
class SelfTraining:
    """The rounds' steps, the models they train, and the report section about them."""

    student: str
    config: RoundsConfig
    main_generate: Path
    main_filter: Path
    steps: list[Step] = field(default_factory=list)
    models: dict[str, Path] = field(default_factory=dict)
    rounds: list[Round] = field(default_factory=list)

    def report_lines(self, evaluate_dir: Path) -> list[str]:
        return rounds_report(self, evaluate_dir)


def derive(base: M, keys: Mapping[str, Any], fixed: Mapping[str, Any], section: str,
           source: Any) -> M:
    """A validated stage config: a rounds section's keys, then the wiring, over the run's own
    (`overlay`: lists replace, decontamination sets add up). The base's values are taken as
    they are (a dump would mask credentials in server URLs)."""
    try:
        return validate_config(type(base), overlay(overlay(dict(base), keys), fixed), source)
    except InputError as exc:
        raise InputError(exc.message, file=exc.file, field=f"{section}.{exc.field}") from exc


def served(model: Path, trained_by: Any, source: Any, key: str) -> Path:
    """A trained student's full weights: its folder; a LoRA adapter's merged weights (what a
    generator samples with and what a round continues from)."""
    if not getattr(trained_by, "lora", False):
        return model
    if not trained_by.merge:
        raise InputError("a LoRA student that samples or is trained further needs "
                         "`merge: true` in its train keys", file=source, field=key)
    return model / "merged"


def _checked_generate(config: GenerateConfig, source: Any) -> None:
    """What generate would refuse (until_correct without max_samples, greedy waves, ...),
    said now with the rounds key, before any stage runs."""
    from cotdistill.generate.config import check_adaptive

    if config.n > 1 and config.temperature == 0:
        raise InputError("n > 1 needs temperature > 0 (greedy samples are the same)",
                         file=source, field="rounds.generate.temperature")
    try:
        check_adaptive(config)
    except InputError as exc:
        raise InputError(exc.message, file=source,
                         field=f"rounds.generate.{exc.field}") from exc


def plan_self_training(config: PipelineConfig, steps: list[Step], models: dict[str, Path],
                       generate: GenerateConfig, filtered: FilterConfig, sft: Path,
                       validation: Path | None, source: Any) -> SelfTraining:
    """The problems step and every round's generate, filter and train, validated now.

    `steps` and `models` are the chain planned so far (read, never changed); `generate` and
    `filtered` the run's resolved generate and filter; `validation` the refinement split's
    validation problems, if any."""
    rounds = config.rounds
    assert rounds is not None
    names = [s.name for s in config.students]
    if not names:
        raise InputError("rounds need a student to retrain", file=source, field="rounds")
    name = rounds.student or names[0]
    if name not in names:
        raise InputError(f"no student named {name!r} (the run's students: "
                         f"{', '.join(names)})", file=source, field="rounds.student")
    for section, keys in SET_BY_RUN.items():
        owned(getattr(rounds, section), keys, f"rounds.{section}")

    by_out = {s.out: s for s in steps}
    train_step = next(s for s in steps if s.name == f"{name}: train")
    generate_step = next(s for s in steps if s.name == "generate")
    teacher_dep = [d for d in generate_step.depends_on if d != Path(generate.problems)]
    base = train_step.config
    # The start and the teachers of the student's own training, without its data.
    base_deps = [d for d in train_step.depends_on if d != sft]

    folder = Path(config.out) / "rounds"
    problems = RoundsProblemsConfig(
        problems=Path(generate.problems),  # type: ignore[arg-type]
        out=folder / "problems", limit=generate.limit,
        **{k: getattr(generate, k) for k in PROBLEM_KEYS})
    plan = SelfTraining(name, rounds, Path(generate_step.out), Path(filtered.out))
    plan.steps.append(Step("rounds: problems", "rounds_problems", problems.out, problems,
                           [problems.problems]))

    defaults: dict[str, Any] = {"topk_logprobs": 0}  # a round's traces train no offline KD
    if generate.until_correct is None:
        wave = rounds.generate.get("n", generate.n)  # a wave is n samples: the budget holds one
        defaults.update(until_correct=UNTIL_CORRECT,
                        max_samples=max(MAX_SAMPLES, wave) if isinstance(wave, int) else None)
    against = [config.eval_problems, *([validation] if validation is not None else [])]
    seed = rounds.generate.get("seed", generate.seed)
    previous, previous_by = models[name], by_out[models[name]].config
    previous_name = name
    for r in range(1, rounds.count + 1):
        label, round_dir = f"{name}-st-{r}", folder / f"round-{r}"
        if label in models:
            raise InputError(f"a model is already named {label!r}", file=source,
                             field="rounds.student")
        if rounds.generator == "teacher":
            sampler, sampler_name, sampler_deps = config.teacher, "teacher", teacher_dep
        else:
            weights = served(previous, previous_by, source, "rounds.generator")
            sampler, sampler_name, sampler_deps = str(weights), previous_name, [weights]
        new = derive(generate, {**defaults, **rounds.generate}, {
            **normalized_fields(generate.category_field is not None),
            "problems": problems.out / PROBLEMS, "out": round_dir / "generate",
            "teacher": sampler, "limit": None, "seed": seed + r}, "rounds.generate", source)
        _checked_generate(new, source)
        kept = derive(filtered, rounds.filter, {
            "traces": [round_dir / "generate" / "traces.jsonl"], "out": round_dir / "filter",
            "decontaminate": against}, "rounds.filter", source)
        data = [*([sft] if rounds.keep_previous else []), round_dir / "filter" / "sft.jsonl"]
        if rounds.start == "original":
            student, start_deps = base.student, base_deps
        else:
            weights = served(previous, previous_by, source, "rounds.start")
            student, start_deps = str(weights), [weights, *base_deps]
        trained = derive(base, rounds.train, {
            "data": data, "student": student, "out": round_dir / "train"}, "rounds.train",
            source)
        if trained.kd == "offline-topk" and "topk_from" not in rounds.train:
            raise InputError("kd: offline-topk trains on the teacher's stored top-K "
                             "logprobs, which a round's traces do not carry; set another kd "
                             "in rounds.train", file=source, field="rounds.train.kd")
        plan.steps += [
            Step(f"{label}: generate", "generate", new.out, new,  # type: ignore[arg-type]
                 [Path(new.problems), *sampler_deps]),  # type: ignore[arg-type]
            Step(f"{label}: filter", "filter", kept.out, kept,  # type: ignore[arg-type]
                 [*kept.traces, *kept.decontaminate]),
            Step(f"{label}: train", "train", trained.out, trained,  # type: ignore[arg-type]
                 [*data, *start_deps]),
        ]
        previous, previous_by, previous_name = Path(trained.out), trained, label  # type: ignore[arg-type]
        plan.models[label] = previous
        plan.rounds.append(Round(r, sampler_name, label, round_dir))
    return plan
