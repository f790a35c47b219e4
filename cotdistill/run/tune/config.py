"""Settings of `cotdistill tune`: the run config it searches, and its `tune:` section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from cotdistill.run.config import PipelineConfig, TuneSection

MIN_VALIDATION = 200  # validation problems wanted by default, where the set allows
RANKABLE = 100  # below this, the report warns that trials cannot be ranked
DEFAULT_FRACTION = 0.25


class TuneConfig(TuneSection):
    """`cotdistill tune --config RUN.yaml --trials N --out DIR` reads the run config's `tune:`
    section (trials, seed, space, student, validation split), flags over it."""

    config: Path = Field(description="The run config (YAML) whose settings are searched.")
    out: Path = Field(description="Output folder: optuna.db, trials, best.yaml, report.")

    @model_validator(mode="before")
    @classmethod
    def _run_keys_are_not_tune_keys(cls, values: Any) -> Any:
        # A run config without a `tune:` section reaches here whole: its keys belong to the
        # run, and `space` is then missing (refused with a message saying where it goes).
        if isinstance(values, dict) and any(k in values for k in ("students", "problems")):
            run_only = set(PipelineConfig.model_fields) - set(cls.model_fields)
            values = {k: v for k, v in values.items() if k not in run_only}
        return values
