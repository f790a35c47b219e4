"""`cotdistill tune`: search stage settings on a validation split (Optuna, TPE), docs/tune.md."""

from cotdistill.run.tune.config import TuneConfig
from cotdistill.run.tune.search import run_tune, tune_validation_size
from cotdistill.run.tune.space import Param, parse_space
from cotdistill.run.tune.trial import HeldOutInTraining, PipelineTrials, Trial, trial_config

__all__ = ["HeldOutInTraining", "Param", "PipelineTrials", "Trial", "TuneConfig", "parse_space",
           "run_tune", "trial_config", "tune_validation_size"]
