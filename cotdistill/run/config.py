"""Settings of `cotdistill run`: the chain, its students, refinement and self-training rounds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from cotdistill.config import StrictModel
from cotdistill.problems import AnswerFormat

if TYPE_CHECKING:
    pass
from typing import Literal

DEFAULT_FRACTION = 0.1


class ProblemFileKeys(StrictModel):
    """The keys that say how to read a problems file (generate's), carried by the run's own
    problem stages (refinement's split, the rounds' problems, synthesis' join)."""

    question_field: list[str]
    answer_field: list[str]
    id_field: str
    question_template: str | None
    category_field: str | None
    answer_format: AnswerFormat


# Their names; the split rewrites the problems in one form.
PROBLEM_KEYS = tuple(ProblemFileKeys.model_fields)


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


class RoundsConfig(StrictModel):
    """Self-training rounds (STaR / ReST-EM): a model samples the training problems, the
    verified traces are kept, a student trains on them (cotdistill/run/rounds/)."""

    count: int = Field(gt=0, description="Self-training rounds after the main chain.")
    generator: Literal["best_student", "teacher"] = Field(
        "best_student", description="Who samples in round r: best_student, the previous "
        "round's student (round 1: the student the main chain trained); teacher: the run's "
        "teacher.",
    )
    start: Literal["original", "last"] = Field(
        "original", description="Where each round's student starts: original, the named "
        "student's own starting point (its init/prune, its start, or the teacher; ReST-EM); "
        "last, the previous round's student (its fp32 master when it has one).",
    )
    student: str | None = Field(None, description="Student of the run the rounds retrain; "
                                "default: the first.")
    keep_previous: bool = Field(
        True, description="Each round trains on its own kept traces plus the main chain's "
        "(the run's filter's sft.jsonl); false: on its own kept traces only. Earlier rounds' "
        "traces are never added.",
    )
    generate: dict[str, Any] = Field(
        default_factory=dict, description="`cotdistill generate` keys for the rounds, over the "
        "run's generate section; by default until_correct 1 and max_samples max(8, n) "
        "(sample each problem until one verified-correct trace; null both for n each).",
    )
    filter: dict[str, Any] = Field(
        default_factory=dict, description="`cotdistill filter` keys for the rounds, over the "
        "run's filter section; decontaminate entries are added to the run's (the evaluation "
        "problems, any refinement validation split and the filter section's), never replace "
        "them.",
    )
    train: dict[str, Any] = Field(
        default_factory=dict, description="`cotdistill train` keys for each round, over the "
        "student's own (e.g. epochs: 1).",
    )


class TuneSection(StrictModel):
    """The `tune:` section of a run config: what `cotdistill tune` searches (docs/tune.md)."""

    trials: int = Field(20, gt=0, description="Trials to finish (the default run is extra).")
    seed: int = Field(0, description="Seed of the TPE sampler and of the validation split.")
    space: dict[str, Any] = Field(
        default_factory=dict, description="`section.key: [low, high]` (a range; log scale for "
        "learning rates) or `[a, b, c, ...]` (a choice); sections generate, filter, train.",
    )
    student: str | None = Field(None, description="Student whose train keys are searched; "
                                "default: the first. The trials train only this student.")
    validation_fraction: float | None = Field(
        None, gt=0, lt=1, description="Share of the training problems held out to score the "
        "trials; default a quarter, raised to 200 problems where at most half the set allows.")
    validation_size: int | None = Field(
        None, gt=0, description="Validation problems, instead of validation_fraction.")
    out: Path | None = Field(None, description="Output folder of the search (or `--out`).")


_NAME = r"^[A-Za-z0-9_.\-]+$"


class StudentPlan(StrictModel):
    name: str = Field(pattern=_NAME, description="Student name in the report and folder name.")
    start: str | None = Field(
        None, description="Model to start from (folder or hub id); default: the teacher."
    )
    init: dict[str, Any] | None = Field(
        None,
        description="`cotdistill student init` keys (layers or keep_every): start from a "
        "shallower copy of the teacher. Unset: start from the teacher itself.",
    )
    prune: dict[str, Any] | None = Field(
        None,
        description="`cotdistill student prune` keys (target_params, or mlp, hidden, heads, "
        "layers): start from a width- and depth-pruned copy of the teacher, importance "
        "measured on `calibration` (default: the run's kept traces, the filter's kept.jsonl). "
        "Not with `init:`.",
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="`cotdistill train` keys; data, student and out are set by run.",
    )
    on_policy: dict[str, Any] | None = Field(
        None,
        description="A second stage after `train`: on-policy distillation from the run's "
        "teacher (`cotdistill train` keys, e.g. max_steps, kd_loss; kd: on-policy, TRL's GKD, "
        "the default, or on-policy-vllm, rollouts on vLLM); data, student, teacher and out are "
        "set by run. The student evaluated is its result.",
    )


class PipelineConfig(StrictModel):
    """How nested sections override: a key set in a section replaces the value the stage would
    otherwise get (from the defaults, the shared `engine:` keys, or, for the sections of
    `refine:` and `rounds:`, the run's own section or the student's `train:` keys), and a list
    is replaced whole, never extended: `refine: {generate: {stop: [a]}}` gives the rounds
    exactly `[a]`. One kind of key is added to instead: `decontaminate`, the problems a filter
    must never keep. Every filter of a run (the main one, each refinement round's and each
    self-training round's) decontaminates against the run's `eval_problems`, plus the
    `decontaminate` entries of its own section and of the sections it inherits from; an entry
    is added, never substituted, so `decontaminate: []` removes nothing. Keys that connect the
    stages (paths, models, the refinement rounds' `n` and how they read the problems files the
    run writes) are set by `run` and refused in a section.
    `cotdistill run --dry-run` prints every stage's resolved config.
    """

    out: Path = Field(Path("runs/demo"), description="Output folder; one sub-folder per stage.")
    teacher: str | None = Field(
        None, description="Teacher model folder or hub id; default: the embedded SmolLM2."
    )
    problems: Path | None = Field(None, description="Training problems the teacher solves.")
    eval_problems: Path | None = Field(
        None, description="Held-out problems: the evaluation set, always in the "
        "decontamination set of every filter of the run (refinement and self-training "
        "rounds' too)."
    )
    engine: dict[str, Any] = Field(
        default_factory=dict,
        description="Engine keys shared by generate and evaluate (backend, dtype, "
        "gpu_memory_utilization, seed, ...); a stage section can override them.",
    )
    generate: dict[str, Any] = Field(
        default_factory=dict,
        description="`cotdistill generate` keys; problems, out and teacher are set by run.",
    )
    filter: dict[str, Any] = Field(
        default_factory=dict,
        description="`cotdistill filter` keys; traces and out are set by run. The "
        "evaluation problems are always added to decontaminate (entries given here are added "
        "to them, never replace them).",
    )
    students: list[StudentPlan] = Field(
        default_factory=list, description="Students to build and train on the kept traces."
    )
    control: Literal["none", "unfiltered"] = Field(
        "none",
        description="unfiltered: also train a control student on as many traces as were kept, "
        "drawn from all generated traces without selection.",
    )
    control_of: str | None = Field(
        None, description="Student whose start and training the control copies; default: first."
    )
    control_seed: int = Field(0, description="Seed of the control's random draw of traces.")
    evaluate: dict[str, Any] = Field(
        default_factory=dict,
        description="`cotdistill evaluate` keys; problems, model and out are set by run; "
        "prompt_template defaults to generate's.",
    )
    evaluate_bases: bool = Field(
        False, description="Also evaluate each student's starting point when it is not the teacher."
    )
    refine: RefineConfig | None = Field(
        None, description="Iterative refinement of one student after its training: validate "
        "on held-out training problems, sample the failed ones, filter, train on the union "
        "(cotdistill/refine.py).",
    )
    synthesize: dict[str, Any] | None = Field(
        None,
        description="`cotdistill synthesize` keys, plus `mode: join | replace` (default join): "
        "new problems made from the training problems before generate, which then samples the "
        "training problems and the synthetic ones (join) or the synthetic ones alone (replace). "
        "The evaluation problems and the refinement validation split are always added to "
        "decontaminate; the unfiltered control and the evaluation never see a synthetic "
        "problem. problems, out, teacher and how the seeds are read are set by run.",
    )
    tune: TuneSection | None = Field(
        None, description="What `cotdistill tune` searches (ignored by `cotdistill run`): "
        "trials, seed, space, student and the validation split (docs/tune.md).",
    )
    fresh: list[str] = Field(
        default_factory=list,
        description="Redo these stages from scratch this time: synthesize, generate, filter, "
        "a student's name, evaluate, refine (the split and every round), a round "
        "(`NAME-round-R`), rounds (every self-training round), one of them (`NAME-st-R`), "
        "or all. Each one's old folder is moved aside to "
        "`<folder>.old-<time>` (kept), e.g. to apply changed generate settings.",
    )
    dry_run: bool = Field(
        False, description="Print every planned stage (refinement and self-training rounds "
        "included), one JSON object per line (stage, kind, folder, resolved config, inputs), "
        "and run nothing: no folder is created, no engine loaded, no server asked.",
    )
    rounds: RoundsConfig | None = Field(
        None, description="Self-training rounds (STaR / ReST-EM) after the main chain: each "
        "round a generator samples the training problems with a gold answer, the run's filter "
        "keeps the verified traces, and a student trains on them and is evaluated with the "
        "rest (cotdistill/run/rounds/). The control and the evaluation set are never touched.",
    )
