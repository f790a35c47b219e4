"""`cotdistill tune`: an Optuna search (TPE, seeded) over keys of the run's stages, each trial
scored on validation problems held out of the training problems before anything is generated.

    run_tune(TuneConfig(config="configs/demo.yaml", out="runs/tune", trials=10,
                        space={"train.learning_rate": [1e-5, 1e-4]}))

The study lives in `DIR/optuna.db` (SQLite): a killed search, run again, keeps its finished
trials and resumes the interrupted one in the same folder with the same values.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotdistill.config import load_config
from cotdistill.errors import InputError
from cotdistill.infra.files import read_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.run.config import PipelineConfig
from cotdistill.run.plan import plan
from cotdistill.run.refine.select import validation_count
from cotdistill.run.refine.stages import SplitConfig, run_split
from cotdistill.run.runner import Stages
from cotdistill.run.tune.config import DEFAULT_FRACTION, MIN_VALIDATION, TuneConfig
from cotdistill.run.tune.report import TrialResult, write_outputs
from cotdistill.run.tune.space import Param, apply, defaults, parse_space, tuned_student
from cotdistill.run.tune.trial import (
    SCORES,
    HeldOutInTraining,
    PipelineTrials,
    Trial,
    TrialRunner,
    trial_config,
)

STUDY = "tune"


def tune_validation_size(problems: int, labelled: int, fraction: float | None,
                         size: int | None) -> int:
    """Validation problems: `size`, else `fraction` of the problems, else a quarter raised to
    MIN_VALIDATION where that leaves at least half the set for training."""
    if size is None and fraction is None:
        quarter = round(DEFAULT_FRACTION * problems)
        size = max(quarter, min(MIN_VALIDATION, labelled, problems // 2), 1)
    try:
        return validation_count(problems, labelled, fraction, size)
    except InputError as exc:
        raise InputError(exc.message, field=str(exc.field).replace("refine.", "tune.")) from exc


def _check_values(base: PipelineConfig, params: list[Param], student: int, source: Any) -> None:
    """Every end of every range and every choice makes valid stage configs: refused now, not
    in trial 12."""
    for p in params:
        values = p.choices if p.kind == "choice" else (p.low, p.high)
        for value in values:
            try:
                plan(apply(base, {p.key: value}, student), source, ask_server=False)
            except InputError as exc:
                raise InputError(f"{p.key} = {value!r}: {exc.message}", file=source,
                                 field=f"tune.space.{p.key}") from exc


def _split(base: PipelineConfig, config: TuneConfig, out: Path, source: Any) -> Path:
    from cotdistill.generate.config import problem_fields
    from cotdistill.problems import load_problems

    generate = next(s for s in plan(base, source, ask_server=False).steps
                    if s.kind == "generate").config
    problems = load_problems(Path(str(base.problems)), problem_fields(generate))  # type: ignore[arg-type]
    labelled = sum(1 for p in problems if p.gold_answer is not None)
    count = tune_validation_size(len(problems), labelled, config.validation_fraction,
                                 config.validation_size)
    folder = out / "split"
    split = SplitConfig(problems=Path(str(base.problems)), out=folder,
                        **{k: getattr(generate, k) for k in (
                            "question_field", "answer_field", "id_field", "question_template",
                            "category_field", "answer_format")},
                        validation_fraction=None, validation_size=count, seed=config.seed)
    manifest = read_manifest(folder)
    if manifest is None:
        run_split(split)
    elif manifest.get("config") != split.model_dump(mode="json"):
        raise InputError("the validation split of this search differs from the one asked for "
                         "now (problems, seed or size changed): trials scored on different "
                         "problems cannot be compared; use another --out", file=folder,
                         field="tune")
    return folder


def _open_study(config: TuneConfig, out: Path, params: list[Param]) -> Any:
    """The study in DIR/optuna.db; its interrupted trials marked failed and queued again."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(f"sqlite:///{out.resolve() / 'optuna.db'}")
    space = json.dumps(config.space, sort_keys=True)
    try:
        probe = optuna.load_study(study_name=STUDY, storage=storage)
    except KeyError:  # a new search
        probe = None
    if probe is not None and probe.user_attrs.get("space", space) != space:
        raise InputError(f"this search was begun over another space "
                         f"({probe.user_attrs['space']}); use another --out",
                         file=out / "optuna.db", field="tune.space")
    done = 0 if probe is None else len(probe.get_trials(deepcopy=False))
    # Seeded by how far the search got, so a resumed search does not replay the draws the
    # killed one already made (the first trials are random draws).
    sampler = optuna.samplers.TPESampler(seed=config.seed + done)
    study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                direction="maximize", load_if_exists=True)
    study.set_user_attr("space", space)
    study_id = storage.get_study_id_from_name(STUDY)
    # This process holds DIR's lock, so a trial still marked running was killed.
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, stale.number)
        storage.set_trial_user_attr(trial_id, "interrupted", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        folder = stale.user_attrs.get("folder", f"trial-{stale.number:03d}")
        known = {p.key for p in params}
        study.enqueue_trial({k: v for k, v in stale.params.items() if k in known},
                            user_attrs={"folder": folder, "resumes": stale.number})
        print(f"tune: trial {stale.number} was interrupted; resuming it in {folder}")
    return study


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.COMPLETE
               or (t.state == TrialState.FAIL and "error" in t.user_attrs))


def _run_one(runner: TrialRunner, trial: Trial) -> dict[str, float]:
    """A finished trial's scores from its folder; otherwise run it (resuming what it did)."""
    done = trial.folder / SCORES
    if done.is_file():
        return dict(json.loads(done.read_text())["scores"])
    scores = dict(runner(trial))
    if not scores:
        raise InputError("the trial scored no validation problem", file=trial.folder)
    trial.folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps({"values": trial.values, "scores": scores}, indent=1) + "\n")
    return scores


@locks_output("tune")
def run_tune(config: TuneConfig, trial_runner: TrialRunner | None = None,
             stages: Stages | None = None) -> dict[str, Any]:
    """Run the default and `config.trials` trials (those not finished yet); write best.yaml,
    trials.md, trials.csv, report.md and plots under `config.out`. Returns a summary."""
    from optuna.trial import TrialState

    source = config.config
    base = load_config(PipelineConfig, source)
    params = parse_space(config.space, source)
    student = tuned_student(base, config.student, source)
    name = base.students[student].name
    _check_values(base, params, student, source)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    split = _split(base, config, out, source)
    runner = trial_runner or PipelineTrials(out / "cache", _default(stages), source)
    trials_dir = out / "trials"

    def make(label: str, values: dict[str, Any], folder: str | None = None) -> Trial:
        where = trials_dir / (folder or label)
        return Trial(label, where, values, trial_config(base, values, student, split, where),
                     name)

    default_values = defaults(base, params, student)
    default = _run_one(runner, make("default", default_values))
    study = _open_study(config, out, params)
    while _finished(study) < config.trials:
        trial = study.ask()
        values = {p.key: p.suggest(trial) for p in params}
        folder = trial.user_attrs.get("folder", f"trial-{trial.number:03d}")
        trial.set_user_attr("folder", folder)
        print(f"tune: trial {trial.number}: {values}", flush=True)
        try:
            scores = _run_one(runner, make(folder, values, folder))
        except HeldOutInTraining:
            raise
        except InputError as exc:  # the values made a chain that cannot run (nothing kept)
            trial.set_user_attr("error", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            print(f"tune: trial {trial.number} failed: {exc}")
            continue
        study.tell(trial, sum(scores.values()) / len(scores))
    results = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE or "error" in t.user_attrs:
            folder = trials_dir / t.user_attrs["folder"]
            scores = json.loads((folder / SCORES).read_text())["scores"] \
                if (folder / SCORES).is_file() else {}
            results.append(TrialResult(t.number, t.user_attrs["folder"], dict(t.params), scores,
                                       t.user_attrs.get("error")))
    return write_outputs(out, source, base, params, student, default_values, default, results,
                         split, config)


def _default(stages: Stages | None) -> Stages:
    from cotdistill.run.runner import default_stages

    return stages or default_stages()
