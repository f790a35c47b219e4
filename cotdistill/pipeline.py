"""The whole chain from one YAML file: generate, filter, (student init,) train, evaluate.

    cotdistill run --config configs/demo.yaml [--out runs/demo] [--dry-run]

Each section of the file holds the keys of one stage's own config (`generate:` takes
`cotdistill generate` keys, and so on); `run` fills in the paths that connect the stages, and
every stage writes a sub-folder of `out`. A stage is skipped when its folder has a manifest
with the same config and a `pipeline.json` stamp whose input hashes still match; otherwise it
runs again, and the stages resume themselves (generate keeps finished problems, train continues
from its last checkpoint). The evaluation problems are in every filter's decontamination set
(PipelineConfig's docstring has the rule by which sections override). `--dry-run` prints every
stage's resolved config as JSON lines and runs nothing.

With `control: unfiltered`, a control student is trained exactly like `control_of` but on as
many traces as the filter kept, drawn at random from all generated traces (contaminated ones
excepted) without any selection, so the report shows what selection buys at equal budget.

With `refine: {rounds: R, ...}`, a share of the training problems is held out for validation
before anything is generated, and R rounds follow one student's training: validate, have the
teacher sample the failed problems, filter, continue training on the union (cotdistill/refine.py;
folders under `out/refine/`); every round's student joins the evaluation and the report.

`plan` turns the config into stage configs (all validated before any model loads);
`run_pipeline(config, stages=...)` runs them with injectable stage functions for tests.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from cotdistill.config import StrictModel, overlay, validate_config
from cotdistill.errors import InputError
from cotdistill.locking import locks_output
from cotdistill.records import (
    dump_line,
    parse_json_object,
    read_manifest,
    sha256_file,
    sha256_text,
    write_manifest,
)
from cotdistill.refine import RefineConfig, Refinement, unless_empty

STAMP = "pipeline.json"
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
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="`cotdistill train` keys; data, student and out are set by run.",
    )
    on_policy: dict[str, Any] | None = Field(
        None,
        description="A second stage after `train`: on-policy distillation from the run's "
        "teacher (`cotdistill train --kd on-policy` keys, e.g. max_steps, kd_loss); data, "
        "student, teacher, kd and out are set by run. The student evaluated is its result.",
    )


class PipelineConfig(StrictModel):
    """How nested sections override: a key set in a section replaces the value the stage would
    otherwise get (from the defaults, the shared `engine:` keys, or, for `refine:`'s sections,
    the run's own section or the refined student's `train:` keys), and a list is replaced whole,
    never extended: `refine: {generate: {stop: [a]}}` gives the rounds exactly `[a]`. One kind
    of key is added to instead: `decontaminate`, the problems a filter must never keep. Every
    filter of a run (the main one and each refinement round's) decontaminates against the
    run's `eval_problems`, plus the `decontaminate` entries of its own section and of the
    sections it inherits from; an entry is added, never substituted, so `decontaminate: []`
    removes nothing. Keys that connect the stages (paths, models, the rounds' `n` and how
    they read the problems files the run writes) are set by `run` and refused in a section.
    `cotdistill run --dry-run` prints every stage's resolved config.
    """

    out: Path = Field(Path("runs/demo"), description="Output folder; one sub-folder per stage.")
    teacher: str | None = Field(
        None, description="Teacher model folder or hub id; default: the embedded SmolLM2."
    )
    problems: Path | None = Field(None, description="Training problems the teacher solves.")
    eval_problems: Path | None = Field(
        None, description="Held-out problems: the evaluation set, always in the "
        "decontamination set of every filter of the run (refinement rounds' too)."
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
    fresh: list[str] = Field(
        default_factory=list,
        description="Redo these stages from scratch this time: generate, filter, a student's "
        "name, evaluate, refine (the split and every round), a round (`NAME-round-R`), or "
        "all. Each one's old folder is moved aside to "
        "`<folder>.old-<time>` (kept), e.g. to apply changed generate settings.",
    )
    dry_run: bool = Field(
        False, description="Print every planned stage (refinement rounds included), one JSON "
        "object per line (stage, kind, folder, resolved config, inputs), and run nothing: no "
        "folder is created, no engine loaded, no server asked.",
    )


# --- the plan: stage configs connected by paths -------------------------------------------------


@dataclass
class Step:
    """One stage run: which function, with what config, into which folder, depending on what."""

    name: str
    kind: str  # key of Stages
    out: Path
    config: BaseModel
    depends_on: list[Path] = field(default_factory=list)


@dataclass
class Plan:
    steps: list[Step]
    evaluate_dir: Path
    refinement: Refinement | None = None


def _section(
    model: type[BaseModel], values: dict[str, Any], section: str, source: Any,
    engine: Collection[str] = (),
) -> Any:
    """Validate a section into its stage config; errors name the section key (`filter.x`), or
    `engine.x` for a key that came from the shared `engine:` mapping (listed in `engine`)."""
    try:
        return validate_config(model, values, source)
    except InputError as exc:
        key = (exc.field or "").split(".")[0]
        where = "engine" if key in engine else section
        raise InputError(exc.message, file=exc.file, field=f"{where}.{exc.field}") from exc


def _teacher_spec(config: PipelineConfig, source: Any, ask_server: bool = True) -> str:
    """The teacher as evaluate names it: the configured model, else the embedded one; over
    the openai backend, the model the server serves (the embedded name means nothing there),
    or a placeholder saying so when the server is not to be asked (a dry run)."""
    from cotdistill.config import EngineConfig

    if config.teacher:
        return config.teacher
    values = {**config.engine, **config.evaluate}
    if values.get("backend") != "openai":
        return "embedded"
    if not ask_server:
        return "<the model the server serves>"
    from cotdistill.backends.openai_backend import OpenAIBackend

    engine = _section(EngineConfig, {k: v for k, v in values.items()
                                     if k in EngineConfig.model_fields}, "evaluate", source,
                      set(config.engine) - set(config.evaluate))
    return OpenAIBackend(None, engine).model


def _owned(values: dict[str, Any], keys: tuple[str, ...], section: str) -> None:
    for key in keys:
        if key in values:
            raise InputError(
                f"`{key}` is set by `cotdistill run`; remove it from this section",
                field=f"{section}.{key}",
            )


def _topk_source(train: dict[str, Any], generate: Any, gen_dir: Path, section: str,
                 source: Any) -> dict[str, Any]:
    """`kd: offline-topk` reads the teacher's top-k logprobs this run's generate stored."""
    if train.get("kd") != "offline-topk" or train.get("topk_from"):
        return train
    if not generate.topk_logprobs:
        raise InputError("kd: offline-topk needs `generate: {topk_logprobs: K}` (e.g. 20)",
                         file=source, field=f"{section}.kd")
    return {**train, "topk_from": [gen_dir]}


def _chain_teacher(train: dict[str, Any], models: dict[str, Path], names: list[str],
                   section: str, source: Any) -> tuple[dict[str, Any], list[Path]]:
    """Progressive distillation: a `teacher` (or each key of `teachers`) naming an earlier
    student becomes that student's trained model folder, and a dependency of this step (a
    retrained intermediate retrains what learns from it: teacher -> intermediate -> final)."""
    train, deps = dict(train), []

    def resolve(name: Any, field: str) -> Any:
        if name in models:
            deps.append(models[name])
            return str(models[name])
        if name in names:
            raise InputError(f"student {name!r} is trained after this one; list it first",
                             file=source, field=f"{section}.train.{field}")
        return name

    if isinstance(train.get("teacher"), str):
        train["teacher"] = resolve(train["teacher"], "teacher")
    if isinstance(train.get("teachers"), dict):
        train["teachers"] = {resolve(k, "teachers"): w for k, w in train["teachers"].items()}
    return train, deps


def plan(config: PipelineConfig, source: Any = None, ask_server: bool = True) -> Plan:
    """All stage configs, validated (before any model is loaded), in the order they run.

    Nothing is written; with `ask_server=False` no server is asked which model it serves."""
    from cotdistill.evaluate import EvaluateConfig
    from cotdistill.filter import FilterConfig
    from cotdistill.generate import GenerateConfig
    from cotdistill.student import StudentInitConfig
    from cotdistill.train import TrainConfig

    if config.problems is None or config.eval_problems is None:
        raise InputError("run needs `problems` and `eval_problems`", file=source,
                         field="problems" if config.problems is None else "eval_problems")
    for key in ("problems", "eval_problems"):
        path = getattr(config, key)
        if not Path(path).exists():
            raise InputError("file not found", file=path, field=key)
    out = Path(config.out)
    teacher_model = config.teacher  # None: each stage resolves the embedded teacher itself
    teacher_dep = [Path(config.teacher)] if config.teacher and Path(config.teacher).exists() else []

    _owned(config.generate, ("problems", "out", "teacher"), "generate")
    gen_dir = out / "generate"
    generate = _section(
        GenerateConfig,
        {**config.engine, **config.generate, "problems": config.problems, "out": gen_dir,
         "teacher": teacher_model},
        "generate", source, set(config.engine) - set(config.generate),
    )
    traces = gen_dir / "traces.jsonl"
    steps = []
    if config.refine is not None:  # validation problems set aside before the teacher sees any
        from cotdistill.refine import plan_split

        split, generate = plan_split(config, generate, out, source)
        steps.append(split)
    steps.append(Step("generate", "generate", gen_dir, generate,
                      [Path(generate.problems), *teacher_dep]))

    _owned(config.filter, ("traces", "out"), "filter")
    filter_dir = out / "filter"
    # The evaluation problems are added by the rule every filter of the run follows (`overlay`).
    filtered = _section(
        FilterConfig,
        overlay(config.filter, {"traces": [traces], "out": filter_dir,
                                "decontaminate": [config.eval_problems]}),
        "filter", source,
    )
    sft = filter_dir / "sft.jsonl"
    steps.append(Step("filter", "filter", filter_dir, filtered,
                      [traces, *filtered.decontaminate]))

    names = [s.name for s in config.students]
    if len(set(names)) != len(names):
        raise InputError("student names must be unique", file=source, field="students")
    models: dict[str, Path] = {}
    starts: dict[str, Path | None] = {}
    origins: dict[str, tuple[Path | None, str | None, list[Path]]] = {}
    trains: dict[str, dict[str, Any]] = {}
    for i, student in enumerate(config.students):
        section = f"students.{i}"
        folder = out / "students" / student.name
        origin = student.start or teacher_model
        origin_dep = [Path(origin)] if origin and Path(origin).exists() else []
        start: Path | None = None
        if student.init is not None:
            _owned(student.init, ("teacher", "out"), f"{section}.init")
            start = folder / "init"
            init = _section(
                StudentInitConfig, {**student.init, "teacher": origin, "out": start},
                f"{section}.init", source,
            )
            steps.append(Step(f"{student.name}: init", "student_init", start, init, origin_dep))
        _owned(student.train, ("data", "student", "out"), f"{section}.train")
        model_dir = folder / "model"
        train_keys, chain_dep = _chain_teacher(student.train, models, names, section, source)
        train = _section(
            TrainConfig,
            {**_topk_source(train_keys, generate, gen_dir, f"{section}.train", source),
             "data": [sft], "out": model_dir, "student": str(start) if start else origin},
            f"{section}.train", source,
        )
        steps.append(Step(f"{student.name}: train", "train", model_dir, train,
                          [sft, *([start] if start else origin_dep), *chain_dep]))
        if student.on_policy is not None:
            _owned(student.on_policy, ("data", "student", "teacher", "kd", "out"),
                   f"{section}.on_policy")
            sft_model, model_dir = model_dir, folder / "on_policy"
            on_policy = _section(
                TrainConfig,
                {**student.on_policy, "data": [sft], "out": model_dir, "kd": "on-policy",
                 "student": str(sft_model), "teacher": teacher_model or "embedded"},
                f"{section}.on_policy", source,
            )
            steps.append(Step(f"{student.name}: on-policy", "train", model_dir, on_policy,
                              [sft, sft_model, *teacher_dep]))
        models[student.name] = model_dir
        starts[student.name] = start
        origins[student.name] = (start, str(start) if start else origin,
                                 [start] if start else origin_dep)
        trains[student.name] = student.train

    if config.control == "unfiltered":
        if not config.students:
            raise InputError("control: unfiltered needs a student to copy", file=source,
                             field="control")
        of = config.control_of or config.students[0].name
        if of not in trains:
            raise InputError(f"no student named {of!r}", file=source, field="control_of")
        control_dir = out / "control" / f"{of}-unfiltered"
        control_sft = control_dir / "data" / "sft.jsonl"
        rejected = filter_dir / "rejected.jsonl"
        kept = filter_dir / "kept.jsonl"
        draw = ControlDataConfig(
            kept=kept, rejected=rejected, like=sft, out=control_sft.parent,
            seed=config.control_seed,
        )
        steps.append(Step(f"{of}-unfiltered: data", "control_data", control_sft.parent, draw,
                          [kept, rejected, sft]))
        _, student_model, student_dep = origins[of]
        model_dir = control_dir / "model"
        train = _section(
            TrainConfig,
            {**_topk_source(trains[of], generate, gen_dir, "control", source),
             "data": [control_sft], "out": model_dir, "student": student_model},
            "control", source,
        )
        steps.append(Step(f"{of}-unfiltered: train", "train", model_dir, train,
                          [control_sft, *student_dep]))
        models[f"{of}-unfiltered"] = model_dir

    refinement = None
    if config.refine is not None:
        from cotdistill.refine import plan_rounds

        refinement = plan_rounds(config, steps, models, generate, filtered, sft, source)
        steps += refinement.steps
        models.update(refinement.models)  # every round's student is evaluated with the rest

    _owned(config.evaluate, ("problems", "model", "out"), "evaluate")
    eval_dir = out / "evaluate"
    specs = [f"teacher={_teacher_spec(config, source, ask_server)}"]
    if config.evaluate_bases:
        specs += [f"{name}-base={start}" for name, start in starts.items() if start is not None]
    specs += [f"{name}={path}" for name, path in models.items()]
    evaluate = _section(
        EvaluateConfig,
        # The filter's answer reading, unless the evaluate section says otherwise: one run
        # judges its traces and its models by the same rule.
        {"prompt_template": generate.prompt_template, "reference": "teacher",
         "fallback_last_number": filtered.fallback_last_number, **config.engine,
         **config.evaluate, "problems": config.eval_problems, "model": specs, "out": eval_dir},
        "evaluate", source, set(config.engine) - set(config.evaluate),
    )
    eval_deps = [Path(config.eval_problems), *teacher_dep, *models.values()]
    if config.evaluate_bases:
        eval_deps += [s for s in starts.values() if s is not None]
    steps.append(Step("evaluate", "evaluate", eval_dir, evaluate, eval_deps))
    return Plan(steps, eval_dir, refinement)


# --- the control student's data: as many traces as were kept, drawn without selection ----------


class ControlDataConfig(StrictModel):
    kept: Path = Field(description="The filter's kept.jsonl.")
    rejected: Path = Field(description="The filter's rejected.jsonl.")
    like: Path = Field(description="The filter's sft.jsonl: the control gets as many rows.")
    out: Path = Field(description="Output folder for the control's sft.jsonl.")
    seed: int = Field(0, description="Seed of the random draw.")


# Rejections that are not a judgement of quality: these traces never enter the control pool.
NOT_A_SELECTION = ("contaminated", "invalid_record")


def draw_unfiltered(rows: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """`count` traces drawn uniformly from all rows; output in the rows' original order."""
    pool = [r for r in rows if not set(r.get("reasons") or ()) & set(NOT_A_SELECTION)]
    if count > len(pool):
        raise InputError(f"cannot draw {count} traces from {len(pool)}", field="control")
    chosen = sorted(random.Random(seed).sample(range(len(pool)), count))
    return [pool[i] for i in chosen]


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file, split on "\\n" only: `str.splitlines` also splits on U+2028 and
    U+0085, which `dump_line` writes raw inside strings."""
    with open(path, encoding="utf-8", newline="\n") as fh:
        return [parse_json_object(line, path, lineno)
                for lineno, line in enumerate(fh, start=1) if line.strip()]


def run_control_data(config: ControlDataConfig) -> dict[str, Any]:
    from cotdistill.filter import sft_row

    started = time.time()
    rows = [row for p in (config.kept, config.rejected) for row in _jsonl_rows(Path(p))]
    count = len(_jsonl_rows(Path(config.like)))
    # Rows are keyed for a stable order that does not depend on the kept/rejected split.
    rows.sort(key=lambda r: (str(r.get("problem_id")), r.get("sample_index", 0)))
    drawn = draw_unfiltered(rows, count, config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    path = config.out / "sft.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(dump_line(sft_row(r)) for r in drawn), encoding="utf-8")
    tmp.replace(path)
    correct = sum(1 for r in drawn if r.get("correct"))
    return write_manifest(
        config.out, stage="control_data", config=config,
        inputs={str(p): sha256_file(p) for p in (config.kept, config.rejected, config.like)},
        counts={"pool": len(rows), "drawn": len(drawn), "drawn_correct": correct},
        started=started,
    )


# --- running: reuse what is done, resume what is not -------------------------------------------


def content_hash(path: Path, cache: dict[Path, str] | None = None) -> str | None:
    """A file's hash, or a folder's top-level files (weights, configs; not checkpoints)."""
    path = Path(path)
    if cache is not None and path in cache:
        return cache[path]
    if not path.exists():
        value = None
    elif path.is_file():
        value = sha256_file(path)
    else:
        parts = [f"{p.name}:{sha256_file(p)}" for p in sorted(path.iterdir())
                 if p.is_file() and p.name not in (STAMP, "manifest.json")]
        value = sha256_text("\n".join(parts))
    if cache is not None:
        cache[path] = value  # type: ignore[assignment]
    return value


def stamp_of(step: Step, hashes: dict[Path, str]) -> dict[str, Any]:
    return {
        "config": step.config.model_dump(mode="json"),
        "inputs": {str(p): content_hash(p, hashes) for p in step.depends_on},
    }


def is_done(step: Step, hashes: dict[Path, str]) -> bool:
    """Done: a manifest with the same config, and inputs that hash as they did then."""
    manifest = read_manifest(step.out)
    if manifest is None or manifest.get("config") != step.config.model_dump(mode="json"):
        return False
    stamp_path = step.out / STAMP
    if not stamp_path.exists():
        return False
    try:
        return json.loads(stamp_path.read_text()) == stamp_of(step, hashes)
    except json.JSONDecodeError:
        return False


@dataclass
class Stages:
    """The stage functions `run` calls; tests replace them."""

    generate: Callable[[Any], Any]
    filter: Callable[[Any], Any]
    student_init: Callable[[Any], Any]
    train: Callable[[Any], Any]
    control_data: Callable[[Any], Any]
    evaluate: Callable[[Any], Any]

    # Refinement rounds (cotdistill/refine.py): file stages, and the stage functions above
    # made to pass over a round with nothing to do.
    def refine_split(self, config: Any) -> Any:
        from cotdistill.refine import run_split

        return run_split(config)

    def refine_select(self, config: Any) -> Any:
        from cotdistill.refine import run_select

        return run_select(config)

    def refine_validate(self, config: Any) -> Any:
        return unless_empty("evaluate", config, self.evaluate)

    def refine_generate(self, config: Any) -> Any:
        return unless_empty("generate", config, self.generate)

    def refine_filter(self, config: Any) -> Any:
        return unless_empty("filter", config, self.filter)


def default_stages() -> Stages:
    def generate(config: Any) -> Any:
        from cotdistill.generate import run_generate

        return run_generate(config)

    def filter_(config: Any) -> Any:
        from cotdistill.filter import run_filter

        return run_filter(config)

    def student_init(config: Any) -> Any:
        from cotdistill.student import run_student_init

        return run_student_init(config)

    def train(config: Any) -> Any:
        from cotdistill.train import run_train

        return run_train(config)

    def evaluate(config: Any) -> Any:
        from cotdistill.evaluate import run_evaluate

        return run_evaluate(config, tables=False)  # the run prints them once, at its end

    return Stages(generate, filter_, student_init, train, run_control_data, evaluate)


def _banner(text: str) -> None:
    print(f"=== {text} ===", flush=True)


def stage_folders(the_plan: Plan) -> dict[str, Path]:
    """Names `--fresh` takes -> the folder each one owns (a student's holds init and model)."""
    folders: dict[str, Path] = {}
    for step in the_plan.steps:
        name = step.name.split(":")[0]
        if step.kind in ("generate", "filter", "evaluate"):
            folders[name] = step.out
        else:
            folders.setdefault(name, step.out.parent)
    return folders


def move_aside(the_plan: Plan, fresh: list[str], source: Any = None) -> list[Path]:
    """Move the folders of the `fresh` stages to `<folder>.old-<time>`; returns the new places.

    Downstream stages need no moving: their inputs then change and they run again anyway.
    """
    folders = stage_folders(the_plan)
    unknown = sorted(set(fresh) - set(folders) - {"all"})
    if unknown:
        raise InputError(f"no stage named {', '.join(map(repr, unknown))}; choose from "
                         f"{', '.join(folders)} or all", file=source, field="fresh")
    chosen = list(folders) if "all" in fresh else [n for n in folders if n in fresh]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for name in chosen:
        folder = folders[name]
        if folder.exists():
            aside = folder.with_name(f"{folder.name}.old-{stamp}")
            for extra in range(2, 1000):
                if not aside.exists():
                    break
                aside = folder.with_name(f"{folder.name}.old-{stamp}-{extra}")  # same second
            folder.rename(aside)
            print(f"run: {name}: starting fresh; the old folder is now {aside}")
            moved.append(aside)
    return moved


def plan_lines(the_plan: Plan) -> list[str]:
    """One JSON object per stage, in the order they run: what `run --dry-run` prints. The
    configs are dumped as the manifests store them (server credentials masked)."""
    return [json.dumps({"stage": step.name, "kind": step.kind, "folder": str(step.out),
                        "config": step.config.model_dump(mode="json"),
                        "depends_on": [str(p) for p in step.depends_on]}, ensure_ascii=False)
            for step in the_plan.steps]


@locks_output("run")
def run_pipeline(
    config: PipelineConfig, stages: Stages | None = None, source: Any = None
) -> dict[str, Any]:
    """Run every stage that is not already done; print the report; return a summary.

    `source` (the YAML file the config came from) is named in errors about its keys.
    """
    started = time.time()
    the_plan = plan(config, source, ask_server=not config.dry_run)
    if config.dry_run:  # the lock is skipped too (`locks_output`): nothing is written
        for line in plan_lines(the_plan):
            print(line)
        return {"dry_run": True, "stages": [s.name for s in the_plan.steps]}
    stages = stages or default_stages()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    move_aside(the_plan, config.fresh, source)
    hashes: dict[Path, str] = {}
    record: list[dict[str, Any]] = []
    for step in the_plan.steps:
        tick = time.time()
        if is_done(step, hashes):
            print(f"run: {step.name}: reusing {step.out} (same config and inputs)")
            record.append({"stage": step.name, "out": str(step.out), "reused": True,
                           "seconds": 0.0})
            continue
        _banner(f"{step.name} -> {step.out}")
        getattr(stages, step.kind)(step.config)
        # Outputs changed: forget their hashes, then stamp this step with its inputs.
        for path in list(hashes):
            if path == step.out or step.out in path.parents:
                del hashes[path]
        (step.out / STAMP).write_text(json.dumps(stamp_of(step, hashes), indent=2) + "\n")
        record.append({"stage": step.name, "out": str(step.out), "reused": False,
                       "seconds": round(time.time() - tick, 1)})

    from cotdistill.evaluate import terminal_tables

    report = pipeline_report(config, the_plan, record, time.time() - started)
    (out / "report.md").write_text(report)
    print("\n" + terminal_tables(report, ("cotdistill run", "Evaluation", "Deployment",
                                           "Progressive chains", "Refinement")))
    print(f"run: everything is under {out}/ ; evaluation report: {the_plan.evaluate_dir}/report.md")
    return {"stages": record, "report": str(out / "report.md"),
            "evaluation": str(the_plan.evaluate_dir)}


def _manifest_line(step: Step) -> str:
    manifest = read_manifest(step.out) or {}
    counts = manifest.get("counts", {})
    kind = step.kind.removeprefix("refine_")
    if manifest.get("summary"):  # a stage that says in one line what it did (refine's)
        return str(manifest["summary"])
    if kind == "generate":
        rate = manifest.get("output_tokens_per_s")
        return (f"{counts.get('problems')} problems, {counts.get('samples')} samples, "
                f"mean {counts.get('mean_tokens')} tokens"
                + (f", {rate:.0f} output tok/s" if rate else ""))
    if kind == "filter":
        return (f"{counts.get('kept')} of {counts.get('traces_in')} traces kept, "
                f"{counts.get('problems_covered')} of {counts.get('problems')} problems covered")
    if step.kind == "train":
        loss = manifest.get("train_loss")
        return (f"{counts.get('train_examples')} examples, {counts.get('steps')} steps, "
                f"{manifest.get('mode')}" + (f", loss {loss:.3f}" if loss is not None else ""))
    if step.kind == "control_data":
        return f"{counts.get('drawn')} traces drawn ({counts.get('drawn_correct')} correct)"
    if step.kind == "student_init":
        return ", ".join(f"{k} {v}" for k, v in counts.items())
    return ""


def chain_lines(the_plan: Plan) -> list[str]:
    """Progressive chains (a student taught by another student): each link's accuracy and its
    retention against the model it learnt from (point ratio; the evaluation below gives each
    student's interval against the run's teacher). Empty when no student has a student teacher.
    """
    students = {str(s.out): s.name.split(": ")[0] for s in the_plan.steps
                if s.kind == "train" and s.name.endswith(": train")}
    taught_by = {}
    for step in the_plan.steps:
        if step.kind == "train" and step.name.endswith(": train"):
            teacher = getattr(step.config, "teacher", None)
            taught_by[step.name.split(": ")[0]] = students.get(str(teacher), "teacher")
    if all(t == "teacher" for t in taught_by.values()):
        return []
    summary_file = the_plan.evaluate_dir / "summary.json"
    models = json.loads(summary_file.read_text()).get("models", {}) if summary_file.exists() \
        else {}

    def accuracy(name: str) -> float | None:
        return (models.get(name) or {}).get("accuracy")

    lines = ["## Progressive chains", "",
             "| chain | accuracy at each step | retention of each step vs its teacher |",
             "|---|---|---|"]
    ends = [n for n in taught_by if n not in set(taught_by.values())]
    for end in ends:
        chain = [end]
        while chain[-1] != "teacher" and len(chain) <= len(taught_by):
            chain.append(taught_by.get(chain[-1], "teacher"))
        chain.reverse()
        accs = [accuracy(n) for n in chain]
        shown = ["?" if a is None else f"{a:.3f}" for a in accs]
        kept = ["?" if a is None or b is None or not a else f"{b / a:.2f}"
                for a, b in zip(accs, accs[1:], strict=False)]
        lines.append(f"| {' -> '.join(chain)} | {' -> '.join(shown)} | {', '.join(kept)} |")
    return [*lines, ""]


def pipeline_report(
    config: PipelineConfig, the_plan: Plan, record: list[dict[str, Any]], seconds: float
) -> str:
    lines = [
        "# cotdistill run",
        "",
        f"Teacher `{config.teacher or 'embedded SmolLM2-135M-Instruct'}`, training problems "
        f"`{config.problems}`, evaluation problems `{config.eval_problems}`.",
        "",
        "| stage | output | time | what |",
        "|---|---|---|---|",
    ]
    for step, entry in zip(the_plan.steps, record, strict=True):
        manifest = read_manifest(step.out) or {}
        took = "reused" if entry["reused"] else f"{entry['seconds']:.0f} s"
        if entry["reused"] and manifest.get("wall_time_s") is not None:
            took += f" (took {manifest['wall_time_s']:.0f} s)"
        lines.append(f"| {step.name} | `{step.out}` | {took} | {_manifest_line(step)} |")
    lines += ["", f"This run: {seconds:.0f} s.", ""]
    lines += chain_lines(the_plan)
    if the_plan.refinement is not None:
        lines += the_plan.refinement.report_lines(the_plan.steps[-1].config)
    evaluation = the_plan.evaluate_dir / "report.md"
    if evaluation.exists():
        body = evaluation.read_text().replace("# Evaluation", "## Evaluation", 1)
        lines.append(body.replace("](", f"]({the_plan.evaluate_dir.name}/"))
    return "\n".join(lines) + "\n"
