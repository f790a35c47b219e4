"""Running the plan: each stage unless done, folders moved aside when settings change."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.infra.locking import locks_output
from cotdistill.run.config import PipelineConfig
from cotdistill.run.control import run_control_data
from cotdistill.run.plan import Plan, plan, plan_lines
from cotdistill.run.refine.stages import unless_empty
from cotdistill.run.report import pipeline_report
from cotdistill.run.steps import STAMP, is_done, stamp_of


@dataclass
class Stages:
    """The stage functions `run` calls; tests replace them."""

    generate: Callable[[Any], Any]
    filter: Callable[[Any], Any]
    student_init: Callable[[Any], Any]
    train: Callable[[Any], Any]
    control_data: Callable[[Any], Any]
    evaluate: Callable[[Any], Any]

    # Stages only some runs plan (`synthesize:`, a student's `prune:`); tests may pass their own.
    synthesize: Callable[[Any], Any] | None = None
    student_prune: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.synthesize is None:
            self.synthesize = _synthesize
        if self.student_prune is None:
            self.student_prune = _student_prune

    def synth_problems(self, config: Any) -> Any:
        from cotdistill.run.plan_synthesize import run_synth_problems

        return run_synth_problems(config)

    def seed_traces(self, config: Any) -> Any:
        from cotdistill.run.plan_synthesize import run_seed_traces

        return run_seed_traces(config)

    # Refinement rounds (cotdistill/refine.py): file stages, and the stage functions above
    # made to pass over a round with nothing to do.
    def refine_split(self, config: Any) -> Any:
        from cotdistill.run.refine.stages import run_split

        return run_split(config)

    def refine_select(self, config: Any) -> Any:
        from cotdistill.run.refine.stages import run_select

        return run_select(config)

    def refine_validate(self, config: Any) -> Any:
        return unless_empty("evaluate", config, self.evaluate)

    def refine_generate(self, config: Any) -> Any:
        return unless_empty("generate", config, self.generate)

    def refine_filter(self, config: Any) -> Any:
        return unless_empty("filter", config, self.filter)

    # Self-training rounds (cotdistill/run/rounds/): the problems every round samples; the
    # rounds' generate, filter and train are the stage functions above.
    def rounds_problems(self, config: Any) -> Any:
        from cotdistill.run.rounds.stages import run_rounds_problems

        return run_rounds_problems(config)


def _synthesize(config: Any) -> Any:
    from cotdistill.synthesize.stage import run_synthesize

    return run_synthesize(config)


def _student_prune(config: Any) -> Any:
    from cotdistill.compress.prune import run_prune

    return run_prune(config)


def default_stages() -> Stages:
    def generate(config: Any) -> Any:
        from cotdistill.generate.stage import run_generate

        return run_generate(config)

    def filter_(config: Any) -> Any:
        from cotdistill.filter.stage import run_filter

        return run_filter(config)

    def student_init(config: Any) -> Any:
        from cotdistill.compress.student_init import run_student_init

        return run_student_init(config)

    def train(config: Any) -> Any:
        from cotdistill.train.stage import run_train

        return run_train(config)

    def evaluate(config: Any) -> Any:
        from cotdistill.evaluate.stage import run_evaluate

        return run_evaluate(config, tables=False)  # the run prints them once, at its end

    return Stages(generate, filter_, student_init, train, run_control_data, evaluate)


def _banner(text: str) -> None:
    print(f"=== {text} ===", flush=True)


def stage_folders(the_plan: Plan) -> dict[str, Path]:
    """Names `--fresh` takes -> the folder each one owns (a student's holds init and model, a
    self-training round `NAME-st-R: generate` its round's folder)."""
    folders: dict[str, Path] = {}
    for step in the_plan.steps:
        name = step.name.split(":")[0]
        if step.kind in ("generate", "filter", "evaluate", "synthesize") and ":" not in step.name:
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

    from cotdistill.evaluate.report import terminal_tables

    report = pipeline_report(config, the_plan, record, time.time() - started)
    (out / "report.md").write_text(report)
    # Each stage's seconds (or that it was reused) for scripts: bench/bench_demo.py reads it.
    (out / "stages.json").write_text(json.dumps(
        {"stages": record, "seconds": round(time.time() - started, 1)}, indent=2) + "\n")
    print("\n" + terminal_tables(report, ("cotdistill run", "Headline", "Stages", "Evaluation",
                                           "Paired differences", "Deployment",
                                           "Progressive chains", "Refinement", "Rounds")))
    print(f"run: everything is under {out}/ ; evaluation report: {the_plan.evaluate_dir}/report.md")
    return {"stages": record, "report": str(out / "report.md"),
            "evaluation": str(the_plan.evaluate_dir)}
