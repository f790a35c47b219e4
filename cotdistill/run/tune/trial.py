"""One trial of `cotdistill tune`: the run config with a trial's values, planned like `run`
plans it, on the split's training problems, scored on its validation problems.

Generation, filtering and a student cut do not live in the trial's folder: each goes to
`DIR/cache/<kind>-<key>`, the key being a hash of the stage's resolved config (its folder
left out) and the contents of its inputs from outside the cache. Trials that vary only
training keys therefore share one generation and one filter output, and a trial that changes a
generate key generates again. Train and evaluate run in `DIR/trials/<trial>/`; every step is
reused or resumed as `run` does it (`is_done`, the stage's own resume).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotdistill.config import overlay
from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_text
from cotdistill.run.config import PipelineConfig
from cotdistill.run.plan import plan
from cotdistill.run.refine.select import problem_scores
from cotdistill.run.refine.stages import check_held_out, normalized_fields, read_normalized, rows_of
from cotdistill.run.runner import Stages, default_stages
from cotdistill.run.steps import STAMP, Step, content_hash, is_done, stamp_of
from cotdistill.run.tune.space import apply

CACHED = ("generate", "filter", "student_init")
SCORES = "scores.json"  # written last in a trial's folder: the trial is finished


@dataclass
class Trial:
    """What a trial runner gets: where to work, with which values, and the run config they
    make (already moved onto the split: training problems, validation problems)."""

    label: str  # "default" or "trial-007"
    folder: Path
    values: dict[str, Any]
    config: PipelineConfig
    student: str


class HeldOutInTraining(InputError):
    """A validation problem reached a trial's training data: the search stops (a trial that
    merely fails on its values is recorded as failed and the search goes on)."""


TrialRunner = Callable[[Trial], Mapping[str, float]]  # -> problem id: validation score


def trial_config(base: PipelineConfig, values: Mapping[str, Any], student: int, split: Path,
                 folder: Path) -> PipelineConfig:
    """The run config of one trial: the searched values set, the one student trained, the
    split's training problems generated, its validation problems evaluated, and the run's
    evaluation problems still in every filter's decontamination set (never scored here)."""
    config = apply(base, values, student)
    categories = config.generate.get("category_field") is not None
    fields = normalized_fields(categories)
    return config.model_copy(update={
        "out": folder, "problems": split / "train.jsonl",
        "eval_problems": split / "validation.jsonl",
        "generate": {**config.generate, **fields},
        "filter": overlay(config.filter, {"decontaminate": [base.eval_problems]}),
        "students": [config.students[student]], "control": "none", "refine": None,
        "evaluate_bases": False, "fresh": [], "dry_run": False, "tune": None,
        "evaluate": {**config.evaluate, **fields, "limit": None, "latency_prompts": 0},
    })


def _moved(value: Any, mapping: Mapping[Path, Path]) -> Any:
    """`value` with every path under a moved folder pointing into its new folder."""
    if isinstance(value, (Path, str)):
        path = Path(value)
        for old, new in mapping.items():
            if path == old or old in path.parents:
                moved = new / path.relative_to(old)
                return moved if isinstance(value, Path) else str(moved)
        return value
    if isinstance(value, list):
        return [_moved(v, mapping) for v in value]
    if isinstance(value, tuple):
        return tuple(_moved(v, mapping) for v in value)
    if isinstance(value, dict):
        return {_moved(k, mapping): _moved(v, mapping) for k, v in value.items()}
    return value


def cache_key(step: Step, cache: Path, hashes: dict[Path, str]) -> str:
    """A hash of the step's resolved config without its folder, and of the contents of its
    inputs from outside the cache (a cached input is named by its folder, itself a key)."""
    config = step.config.model_dump(mode="json")
    config.pop("out", None)
    inputs = {str(p): (None if cache in Path(p).parents else content_hash(p, hashes))
              for p in step.depends_on}
    return sha256_text(json.dumps({"kind": step.kind, "config": config, "inputs": inputs},
                                  sort_keys=True, default=str))[:16]


def rebase(steps: list[Step], cache: Path) -> list[Step]:
    """The steps with generate, filter and student init moved into the shared cache."""
    mapping: dict[Path, Path] = {}
    hashes: dict[Path, str] = {}
    moved = []
    for step in steps:
        config = step.config.model_copy(update={
            name: _moved(getattr(step.config, name), mapping)
            for name in type(step.config).model_fields if name != "out"})
        step = Step(step.name, step.kind, step.out, config,
                    [_moved(p, mapping) for p in step.depends_on])
        if step.kind in CACHED:
            new = cache / f"{step.kind}-{cache_key(step, cache, hashes)}"
            mapping[Path(step.out)] = new
            step = Step(step.name, step.kind, new, config.model_copy(update={"out": new}),
                        step.depends_on)
        moved.append(step)
    return moved


def trial_steps(trial: Trial, cache: Path, source: Any = None) -> list[Step]:
    """The trial's steps as `run` plans them, its evaluation scoring the student alone."""
    steps = plan(trial.config, source, ask_server=False).steps
    last = steps[-1]
    assert last.kind == "evaluate"
    models = [m for m in last.config.model if m.split("=", 1)[0] == trial.student]
    steps[-1] = Step(last.name, last.kind, last.out, last.config.model_copy(
        update={"model": models, "reference": trial.student}),
        [d for d in last.depends_on if d == Path(trial.config.eval_problems or "")
         or str(d) in {m.split("=", 1)[1] for m in models}])
    return rebase(steps, cache)


@dataclass
class PipelineTrials:
    """The trial runner `cotdistill tune` uses: the run's stages (tests pass fake ones)."""

    cache: Path
    stages: Stages = field(default_factory=default_stages)
    source: Any = None

    def __call__(self, trial: Trial) -> dict[str, float]:
        steps = trial_steps(trial, self.cache, self.source)
        validation = read_normalized(Path(str(trial.config.eval_problems)),
                                     trial.config.generate.get("category_field") is not None)
        hashes: dict[Path, str] = {}
        for step in steps:
            if step.kind == "train":  # the guarantee, checked where it matters
                try:
                    check_held_out(validation, step.config.data)  # type: ignore[attr-defined]
                except InputError as exc:
                    raise HeldOutInTraining(exc.message, file=exc.file, line=exc.line,
                                            field=exc.field) from exc
            if is_done(step, hashes):
                continue
            print(f"tune: {trial.label}: {step.name} -> {step.out}", flush=True)
            getattr(self.stages, step.kind)(step.config)
            for path in list(hashes):
                if path == step.out or step.out in path.parents:
                    del hashes[path]
            (step.out / STAMP).write_text(json.dumps(stamp_of(step, hashes), indent=2) + "\n")
        results = Path(str(steps[-1].config.out)) / "results.jsonl"  # type: ignore[attr-defined]
        return problem_scores((row for _, row in rows_of(results)), trial.student)
