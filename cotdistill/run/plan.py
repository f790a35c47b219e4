"""Planning the chain: which stages run, with which resolved configs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.config import overlay
from cotdistill.errors import InputError
from cotdistill.run.config import PipelineConfig
from cotdistill.run.control import ControlDataConfig
from cotdistill.run.refine.plan import Refinement
from cotdistill.run.rounds.plan import SelfTraining
from cotdistill.run.steps import Step, owned, section_of


@dataclass
class Plan:
    steps: list[Step]
    evaluate_dir: Path
    refinement: Refinement | None = None
    rounds: SelfTraining | None = None


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

    engine = section_of(EngineConfig, {k: v for k, v in values.items()
                                     if k in EngineConfig.model_fields}, "evaluate", source,
                      set(config.engine) - set(config.evaluate))
    return OpenAIBackend(None, engine).model


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
    from cotdistill.compress.prune import PruneConfig
    from cotdistill.compress.student_init import StudentInitConfig
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.filter.config import FilterConfig
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.train.config import TEACHER_KD, TrainConfig

    if config.problems is None or config.eval_problems is None:
        raise InputError("run needs `problems` and `eval_problems`", file=source,
                         field="problems" if config.problems is None else "eval_problems")
    for key in ("problems", "eval_problems"):
        path = getattr(config, key)
        if not Path(path).exists():
            raise InputError("file not found", file=path, field=key)
    out = Path(config.out)
    teacher_model = config.teacher  # None: each stage resolves the embedded teacher itself
    kd_teacher = teacher_model or "embedded"  # what a distilling train stage is told
    teacher_dep = [Path(config.teacher)] if config.teacher and Path(config.teacher).exists() else []

    owned(config.generate, ("problems", "out", "teacher"), "generate")
    gen_dir = out / "generate"
    generate = section_of(
        GenerateConfig,
        {**config.engine, **config.generate, "problems": config.problems, "out": gen_dir,
         "teacher": teacher_model},
        "generate", source, set(config.engine) - set(config.generate),
    )
    traces = gen_dir / "traces.jsonl"
    steps = []
    seeds, validation = generate, None
    if config.refine is not None:  # validation problems set aside before the teacher sees any
        from cotdistill.run.refine.plan import plan_split

        split, generate = plan_split(config, generate, out, source)
        steps.append(split)
        validation = split.out / "validation.jsonl"
    synthetic = None
    if config.synthesize is not None:  # new problems made before the teacher samples
        from cotdistill.run.plan_synthesize import plan_synthesize

        synth_steps, generate, synthetic = plan_synthesize(config, generate, seeds, validation,
                                                           out, source)
        steps += synth_steps
    steps.append(Step("generate", "generate", gen_dir, generate,
                      [Path(generate.problems), *teacher_dep]))

    owned(config.filter, ("traces", "out"), "filter")
    filter_dir = out / "filter"
    # The evaluation problems are added by the rule every filter of the run follows (`overlay`).
    filtered = section_of(
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
        if student.init is not None and student.prune is not None:
            raise InputError("a student starts from `init:` (a layer cut) or `prune:`, not both",
                             file=source, field=f"{section}.prune")
        if student.prune is not None:
            owned(student.prune, ("teacher", "out"), f"{section}.prune")
            start = folder / "prune"
            # Importance is measured on the run's kept traces unless the section names a file.
            pruned = section_of(
                PruneConfig, {"calibration": filter_dir / "kept.jsonl", **student.prune,
                              "teacher": origin, "out": start},
                f"{section}.prune", source,
            )
            steps.append(Step(f"{student.name}: prune", "student_prune", start, pruned,
                              [Path(pruned.calibration), *origin_dep]))
        if student.init is not None:
            owned(student.init, ("teacher", "out"), f"{section}.init")
            start = folder / "init"
            init = section_of(
                StudentInitConfig, {**student.init, "teacher": origin, "out": start},
                f"{section}.init", source,
            )
            steps.append(Step(f"{student.name}: init", "student_init", start, init, origin_dep))
        owned(student.train, ("data", "student", "out"), f"{section}.train")
        model_dir = folder / "model"
        train_keys, chain_dep = _chain_teacher(student.train, models, names, section, source)
        if train_keys.get("kd") in TEACHER_KD and not train_keys.get("teacher") \
                and not train_keys.get("teachers"):  # the run's teacher scores the student
            train_keys["teacher"] = kd_teacher
            chain_dep += teacher_dep
        train = section_of(
            TrainConfig,
            {**_topk_source(train_keys, generate, gen_dir, f"{section}.train", source),
             "data": [sft], "out": model_dir, "student": str(start) if start else origin},
            f"{section}.train", source,
        )
        steps.append(Step(f"{student.name}: train", "train", model_dir, train,
                          [sft, *([start] if start else origin_dep), *chain_dep]))
        if student.on_policy is not None:
            owned(student.on_policy, ("data", "student", "teacher", "out"),
                  f"{section}.on_policy")
            mode = student.on_policy.get("kd", "on-policy")
            if mode not in ("on-policy", "on-policy-vllm"):
                raise InputError(f"{section}.on_policy.kd is on-policy (TRL's GKD) or "
                                 f"on-policy-vllm (rollouts on vLLM), not {mode!r}",
                                 file=source, field=f"{section}.on_policy.kd")
            sft_model, model_dir = model_dir, folder / "on_policy"
            on_policy = section_of(
                TrainConfig,
                {**student.on_policy, "data": [sft], "out": model_dir, "kd": mode,
                 "student": str(sft_model), "teacher": kd_teacher},
                f"{section}.on_policy", source,
            )
            steps.append(Step(f"{student.name}: on-policy", "train", model_dir, on_policy,
                              [sft, sft_model, *teacher_dep]))
        models[student.name] = model_dir
        starts[student.name] = start
        origins[student.name] = (start, str(start) if start else origin,
                                 [start] if start else origin_dep)
        trains[student.name] = student.train

    contrasts: list[str] = []
    if config.control == "unfiltered":
        if not config.students:
            raise InputError("control: unfiltered needs a student to copy", file=source,
                             field="control")
        of = config.control_of or config.students[0].name
        if of not in trains:
            raise InputError(f"no student named {of!r}", file=source, field="control_of")
        contrasts.append(f"{of}:{of}-unfiltered")  # the report's headline: selection's gain
        control_dir = out / "control" / f"{of}-unfiltered"
        control_sft = control_dir / "data" / "sft.jsonl"
        rejected, kept, like = filter_dir / "rejected.jsonl", filter_dir / "kept.jsonl", sft
        if synthetic is not None:  # the control draws from the seeds' traces only
            from cotdistill.run.plan_synthesize import plan_seed_traces

            if (config.synthesize or {}).get("mode", "join") == "replace":
                raise InputError("control: unfiltered draws from the training problems' own "
                                 "traces; with synthesize mode: replace there are none",
                                 file=source, field="control")
            seed_step = plan_seed_traces(f"{of}-unfiltered", filter_dir, synthetic,
                                         control_dir)
            steps.append(seed_step)
            rejected, kept, like = (seed_step.out / f"{n}.jsonl"
                                    for n in ("rejected", "kept", "sft"))
        draw = ControlDataConfig(
            kept=kept, rejected=rejected, like=like, out=control_sft.parent,
            seed=config.control_seed,
        )
        steps.append(Step(f"{of}-unfiltered: data", "control_data", control_sft.parent, draw,
                          [kept, rejected, like]))
        _, student_model, student_dep = origins[of]
        model_dir = control_dir / "model"
        train = section_of(
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
        from cotdistill.run.refine.plan import plan_rounds

        refinement = plan_rounds(config, steps, models, generate, filtered, sft, source)
        steps += refinement.steps
        models.update(refinement.models)  # every round's student is evaluated with the rest

    rounds = None
    if config.rounds is not None:  # self-training: after every other training, control too
        from cotdistill.run.rounds.plan import plan_self_training

        rounds = plan_self_training(config, steps, models, generate, filtered, sft, validation,
                                    source)
        steps += rounds.steps
        models.update(rounds.models)  # every round's student is evaluated with the rest

    owned(config.evaluate, ("problems", "model", "out"), "evaluate")
    eval_dir = out / "evaluate"
    specs = [f"teacher={_teacher_spec(config, source, ask_server)}"]
    if config.evaluate_bases:
        specs += [f"{name}-base={start}" for name, start in starts.items() if start is not None]
    specs += [f"{name}={path}" for name, path in models.items()]
    evaluate = section_of(
        EvaluateConfig,
        # The filter's answer reading, unless the evaluate section says otherwise: one run
        # judges its traces and its models by the same rule.
        {"prompt_template": generate.prompt_template, "reference": "teacher",
         "fallback_last_number": filtered.fallback_last_number, "contrasts": contrasts,
         **config.engine,
         **config.evaluate, "problems": config.eval_problems, "model": specs, "out": eval_dir},
        "evaluate", source, set(config.engine) - set(config.evaluate),
    )
    eval_deps = [Path(config.eval_problems), *teacher_dep, *models.values()]
    if config.evaluate_bases:
        eval_deps += [s for s in starts.values() if s is not None]
    steps.append(Step("evaluate", "evaluate", eval_dir, evaluate, eval_deps))
    return Plan(steps, eval_dir, refinement, rounds)


def plan_lines(the_plan: Plan) -> list[str]:
    """One JSON object per stage, in the order they run: what `run --dry-run` prints. The
    configs are dumped as the manifests store them (server credentials masked)."""
    return [json.dumps({"stage": step.name, "kind": step.kind, "folder": str(step.out),
                        "config": step.config.model_dump(mode="json"),
                        "depends_on": [str(p) for p in step.depends_on]}, ensure_ascii=False)
            for step in the_plan.steps]
