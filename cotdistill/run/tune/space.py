"""The search space of `cotdistill tune`: `section.key` -> a range or a choice, checked against
the stage configs before any work, and applied to a run config.

    params = parse_space({"train.learning_rate": [1e-5, 1e-4], "train.epochs": [1, 2, 3]})
    params[0].kind == "log"; params[1].kind == "choice"
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cotdistill.errors import InputError
from cotdistill.run.config import PROBLEM_KEYS, PipelineConfig

# Keys `run` (or tune) sets in each section: searching them would rewire the chain.
SET_BY_RUN: dict[str, tuple[str, ...]] = {
    "generate": ("problems", "out", "teacher", *PROBLEM_KEYS),
    "filter": ("traces", "out", "decontaminate", "dry_run"),
    "train": ("data", "student", "out", "teacher", "teachers", "topk_from"),
}


def _stage_fields(section: str) -> set[str]:
    if section == "generate":
        from cotdistill.generate.config import GenerateConfig as model
    elif section == "filter":
        from cotdistill.filter.config import FilterConfig as model  # type: ignore[assignment]
    else:
        from cotdistill.train.config import TrainConfig as model  # type: ignore[assignment]
    return set(model.model_fields) - set(SET_BY_RUN[section])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class Param:
    """One searched key: a range (`float`, `int`, or `log` for rates) or a `choice`."""

    key: str  # "train.learning_rate"
    kind: str  # float | int | log | choice
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def suggest(self, trial: Any) -> Any:
        """The value an Optuna trial draws (or replays, for a resumed trial)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))  # type: ignore[arg-type]
        return trial.suggest_float(self.key, self.low, self.high, log=self.kind == "log")

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        scale = " (log scale)" if self.kind == "log" else " (integers)" if self.kind == "int" \
            else ""
        return f"{self.low:g} to {self.high:g}{scale}"


def _is_rate(name: str) -> bool:
    return name == "learning_rate" or name.endswith("_lr") or name.endswith("learning_rate")


def parse_param(key: str, spec: Any, source: Any = None) -> Param:
    """`[low, high]` (two numbers) is a range, log scale for learning rates; a longer list, or
    two values that are not both numbers, is a choice. Anything else is refused naming the key.
    """
    field = f"tune.space.{key}"
    section, dot, name = key.partition(".")
    if not dot or section not in SET_BY_RUN:
        raise InputError(f"unknown key {key!r}: name a key of a stage as `generate.KEY`, "
                         "`filter.KEY` or `train.KEY`", file=source, field=field)
    fields = _stage_fields(section)
    if name not in fields:
        if name in SET_BY_RUN[section]:
            raise InputError(f"unknown key {key!r}: `{name}` is set by `cotdistill run`, it "
                             "cannot be searched", file=source, field=field)
        close = difflib.get_close_matches(name, sorted(fields), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(f'{section}.{c}' for c in close)}?)" if close else ""
        raise InputError(f"unknown key {key!r}: `{section}` has no key `{name}`{hint}",
                         file=source, field=field)
    if not isinstance(spec, (list, tuple)) or len(spec) < 2:
        raise InputError(f"{key}: give [low, high] (a range) or a list of 3 or more values "
                         f"(a choice), not {spec!r}", file=source, field=field)
    if len(spec) == 2 and all(_is_number(v) for v in spec):
        low, high = spec
        if not low < high:
            raise InputError(f"{key}: range [{low}, {high}] needs low < high", file=source,
                             field=field)
        if _is_rate(name):
            if low <= 0:
                raise InputError(f"{key}: a learning-rate range is searched on a log scale; "
                                 "both ends must be > 0", file=source, field=field)
            return Param(key, "log", float(low), float(high))
        if all(isinstance(v, int) for v in spec):
            return Param(key, "int", low, high)
        return Param(key, "float", float(low), float(high))
    if len({repr(v) for v in spec}) != len(spec):
        raise InputError(f"{key}: a choice lists each value once", file=source, field=field)
    return Param(key, "choice", choices=tuple(spec))


def parse_space(space: Mapping[str, Any], source: Any = None) -> list[Param]:
    if not space:
        raise InputError("nothing to search: give `tune: {space: {section.key: [low, high]}}` "
                         "in the run config", file=source, field="tune.space")
    return [parse_param(key, spec, source) for key, spec in space.items()]


def tuned_student(config: PipelineConfig, name: str | None, source: Any = None) -> int:
    """Index of the student whose train keys are searched (the first unless `name`)."""
    names = [s.name for s in config.students]
    if not names:
        raise InputError("tune trains a student: the run config lists none", file=source,
                         field="students")
    if name is None:
        return 0
    if name not in names:
        raise InputError(f"no student named {name!r}; choose from {', '.join(names)}",
                         file=source, field="tune.student")
    return names.index(name)


def apply(config: PipelineConfig, values: Mapping[str, Any], student: int) -> PipelineConfig:
    """The run config with the searched values in their sections (the student's `train:`)."""
    sections: dict[str, dict[str, Any]] = {
        "generate": dict(config.generate), "filter": dict(config.filter),
        "train": dict(config.students[student].train)}
    for key, value in values.items():
        section, name = key.split(".", 1)
        sections[section][name] = value
    students = list(config.students)
    students[student] = students[student].model_copy(update={"train": sections["train"]})
    return config.model_copy(update={"generate": sections["generate"],
                                     "filter": sections["filter"], "students": students})


def defaults(config: PipelineConfig, params: list[Param], student: int) -> dict[str, Any]:
    """The value each searched key has in the run config as given (the default trial)."""
    from cotdistill.filter.config import FilterConfig
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.train.config import TrainConfig

    given = {"generate": {**config.engine, **config.generate}, "filter": config.filter,
             "train": config.students[student].train}
    models = {"generate": GenerateConfig, "filter": FilterConfig, "train": TrainConfig}
    out = {}
    for p in params:
        if p.name in given[p.section]:
            out[p.key] = given[p.section][p.name]
        else:
            out[p.key] = models[p.section].model_fields[p.name].default
    return out
