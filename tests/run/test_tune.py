"""`cotdistill tune`: the space is parsed and checked before any work, trials share what they
do not change, no validation or evaluation problem reaches any trial's training data, a killed
search resumes with its finished trials, and best.yaml is a run config.

The stages are fakes that read and write what the real ones do: the fake filter decontaminates
by exact question text, and a fake model's validation accuracy depends on its learning rate.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotdistill.cli import main
from cotdistill.config import load_config
from cotdistill.errors import InputError
from cotdistill.run.config import PipelineConfig
from cotdistill.run.runner import Stages
from cotdistill.run.tune import Trial, TuneConfig, parse_space, run_tune, tune_validation_size
from tests.helpers.stages import RecordingStages, read_rows, write_rows

BEST_LR = 5e-5


def solves(pid: str, learning_rate: float) -> bool:
    """A fake student: right on a share of problems that peaks at BEST_LR."""
    quality = max(0.0, 1 - abs(math.log10(learning_rate / BEST_LR)))
    return int(hashlib.sha256(pid.encode()).hexdigest(), 16) % 100 < 90 * quality


class FakeStages(RecordingStages):
    def filter(self, config: Any) -> None:
        held = {row["question"] for path in config.decontaminate for row in read_rows(path)}
        traces = [row for path in config.traces for row in read_rows(path)]
        kept = [t for t in traces if t["sample_index"] == 0 and t["question"] not in held]
        write_rows(config.out / "kept.jsonl", kept)
        write_rows(config.out / "rejected.jsonl", [t for t in traces if t not in kept])
        write_rows(config.out / "sft.jsonl", [
            {"messages": [*t["messages"], {"role": "assistant", "content": t["completion"]}],
             "problem_id": t["problem_id"]} for t in kept])
        self._done("filter", config)

    def train(self, config: Any) -> None:
        rows = [row for path in config.data for row in read_rows(path)]
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "model.json").write_text(json.dumps({
            "trained_on": sorted({r["messages"][0]["content"] for r in rows}),
            "learning_rate": config.learning_rate}))
        self._done("train", config)

    def evaluate(self, config: Any) -> None:
        from cotdistill.evaluate.sources import parse_model_specs
        from cotdistill.evaluate.stage import load_eval_problems

        rows = []
        for name, spec in parse_model_specs(config.model).items():
            model = json.loads((Path(spec) / "model.json").read_text())
            rows += [{"model": name, "problem_id": p.id, "sample_index": 0,
                      "correct": solves(p.id, model["learning_rate"])}
                     for p in load_eval_problems(config)]
        write_rows(config.out / "results.jsonl", rows)
        (config.out / "report.md").write_text("# Evaluation\n")
        self._done("evaluate", config)


def run_yaml(tmp_path: Path, space: dict[str, Any], trials: int = 4, **tune: Any) -> Path:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    rows = [{"id": f"p{i:02d}", "question": f"train question {i}", "answer": str(i)}
            for i in range(39)]
    # A training problem that is an evaluation problem under another id: only
    # decontamination keeps it out of the training data.
    rows.append({"id": "p39", "question": "held out 3", "answer": "3"})
    write_rows(train, rows)
    write_rows(test, [{"id": f"e{i}", "question": f"held out {i}", "answer": str(i)}
                      for i in range(10)])
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "out": str(tmp_path / "run"), "teacher": "fake-teacher",
        "problems": str(train), "eval_problems": str(test),
        "generate": {"prompt_template": "plain", "n": 2, "temperature": 0.7},
        "students": [{"name": "self", "train": {"epochs": 1, "learning_rate": 1e-5}}],
        "evaluate": {"temperature": 0.0, "limit": 3},
        "tune": {"trials": trials, "seed": 0, "space": space, **tune},
    }))
    return path


def tune_config(path: Path, out: Path, **flags: Any) -> TuneConfig:
    return load_config(TuneConfig, path, section="tune",
                       overrides={"config": path, "out": out, **flags})


# --- the space ------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "spec", "kind", "expected"), [
    ("train.learning_rate", [1e-5, 1e-4], "log", (1e-5, 1e-4)),
    ("generate.temperature", [0.3, 1.0], "float", (0.3, 1.0)),
    ("filter.min_mean_logprob", [-1.5, -0.2], "float", (-1.5, -0.2)),
    ("train.max_steps", [10, 40], "int", (10, 40)),
    ("train.epochs", [1, 2, 3], "choice", (1, 2, 3)),
    ("train.kd_loss", ["forward_kl", "reverse_kl"], "choice", ("forward_kl", "reverse_kl")),
])
def test_space_parsing(key: str, spec: list[Any], kind: str, expected: tuple[Any, ...]) -> None:
    (param,) = parse_space({key: spec})
    assert param.kind == kind
    assert (param.choices if kind == "choice" else (param.low, param.high)) == expected


@pytest.mark.parametrize(("key", "spec", "says"), [
    ("train.temperature", [1.0, 4.0], "did you mean train.distill_temperature"),
    ("evaluate.temperature", [0.0, 1.0], "`generate.KEY`, `filter.KEY` or `train.KEY`"),
    ("generate.problems", ["a", "b", "c"], "set by `cotdistill run`"),
    ("temperature", [0.1, 1.0], "name a key of a stage"),
    ("train.learning_rate", [1e-4], "give [low, high]"),
    ("train.learning_rate", [1e-4, 1e-5], "needs low < high"),
    ("train.learning_rate", [0, 1e-4], "log scale"),
])
def test_bad_space_keys_are_refused_naming_the_key(key: str, spec: list[Any], says: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_space({key: spec})
    assert says in str(caught.value) and caught.value.field == f"tune.space.{key}"


def test_unknown_key_is_refused_before_any_work(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = run_yaml(tmp_path, {"train.alpha": [0.2, 0.9]})
    out = tmp_path / "tune"
    assert main(["tune", "--config", str(path), "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "train.alpha" in err and "train.distill_alpha" in err
    assert {p.name for p in out.iterdir()} <= {"logs", ".lock"}  # the CLI's log, the lock
    # A value no stage accepts is refused too, before anything is generated.
    path = run_yaml(tmp_path, {"generate.temperature": [-1.0, 1.0]})
    with pytest.raises(InputError, match="generate.temperature = -1.0"):
        run_tune(tune_config(path, out), stages=FakeStages().stages())
    assert not (out / "split").exists()


@pytest.mark.parametrize(("problems", "fraction", "size", "expected"), [
    (1000, None, None, 250),   # a quarter
    (400, None, None, 200),    # raised to 200 where half the set allows
    (100, None, None, 50),     # at most half
    (40, None, None, 20),
    (40, 0.1, None, 4),
    (40, None, 7, 7),
])
def test_validation_size(problems: int, fraction: float | None, size: int | None,
                         expected: int) -> None:
    assert tune_validation_size(problems, problems, fraction, size) == expected


def test_the_tune_section_belongs_to_the_run_config(tmp_path: Path) -> None:
    path = run_yaml(tmp_path, {"train.learning_rate": [1e-5, 1e-4]}, trials=7,
                    out=str(tmp_path / "t"))
    run = load_config(PipelineConfig, path)
    assert run.tune is not None and run.tune.trials == 7
    config = load_config(TuneConfig, path, section="tune", overrides={"config": path,
                                                                     "trials": 3})
    assert (config.trials, config.config, config.out, config.space) == (
        3, path, tmp_path / "t", {"train.learning_rate": [1e-5, 1e-4]})


# --- the search over the fake stages ------------------------------------------------------


def test_trials_share_generation_and_never_train_on_held_out_problems(tmp_path: Path) -> None:
    path = run_yaml(tmp_path, {"train.learning_rate": [1e-5, 1e-3], "train.epochs": [1, 2, 3]})
    out = tmp_path / "tune"
    fake = FakeStages()
    summary = run_tune(tune_config(path, out), stages=fake.stages())
    kinds = [kind for kind, _ in fake.calls]
    # Only training keys vary: one generation and one filter for the default and 4 trials.
    assert kinds.count("generate") == 1 and kinds.count("filter") == 1
    assert kinds.count("train") == 5 and kinds.count("evaluate") == 5
    assert [Path(o).parent for k, o in fake.calls if k == "generate"] == [out / "cache"]

    validation = read_rows(out / "split" / "validation.jsonl")
    assert len(validation) == 20 and summary["validation_problems"] == 20
    held = {r["question"] for r in validation} | {
        r["question"] for r in read_rows(tmp_path / "test.jsonl")}
    models = sorted((out / "trials").glob("*/students/self/model/model.json"))
    assert len(models) == 5
    for model in models:
        trained_on = set(json.loads(model.read_text())["trained_on"])
        assert trained_on and not trained_on & held
    # Scored on the validation problems alone, the evaluation problems never.
    for results in (out / "trials").glob("*/evaluate/results.jsonl"):
        assert {r["problem_id"] for r in read_rows(results)} == {r["id"] for r in validation}

    # best.yaml: the run config with the best trial's values, ready for `cotdistill run`.
    best = load_config(PipelineConfig, out / "best.yaml")
    assert best.tune is None and best.out == out / "best-run"
    rows = list(csv.DictReader((out / "trials.csv").open()))
    top = max(rows, key=lambda r: float(r["validation_accuracy"]))
    assert best.students[0].train["learning_rate"] == pytest.approx(
        float(top["train.learning_rate"]))
    assert best.students[0].train["epochs"] == int(top["train.epochs"])
    assert best.generate == load_config(PipelineConfig, path).generate
    report = (out / "report.md").read_text()
    assert "standard error" in report and "cannot be ranked" in report  # 20 < 100
    for png in ("history.png", "accuracy-vs-train.learning_rate.png",
                "accuracy-vs-train.epochs.png"):
        assert (out / png).stat().st_size > 1000

    # Run again: everything is finished; nothing runs.
    fake.calls.clear()
    run_tune(tune_config(path, out), stages=fake.stages())
    assert fake.calls == []


def test_a_changed_generate_key_generates_again(tmp_path: Path) -> None:
    path = run_yaml(tmp_path, {"generate.temperature": [0.3, 1.0],
                               "train.learning_rate": [1e-5, 1e-4]}, trials=3)
    fake = FakeStages()
    run_tune(tune_config(path, tmp_path / "tune"), stages=fake.stages())
    generated = [out for kind, out in fake.calls if kind == "generate"]
    assert len(generated) == len(set(generated)) == 4  # the default's and each trial's
    temperatures = {json.loads((Path(o) / "manifest.json").read_text())["config"]["temperature"]
                    for o in generated}
    assert len(temperatures) == 4


class LeakyStages(FakeStages):
    """A generation of the whole training file (one made before the split, reused: it holds
    the validation problems) and a filter that does not decontaminate."""

    def __init__(self, whole: Path) -> None:
        super().__init__()
        self.whole = whole

    def generate(self, config: Any) -> None:
        rows = read_rows(self.whole)
        write_rows(config.out / "traces.jsonl", [
            {"problem_id": r["id"], "sample_index": 0, "question": r["question"],
             "completion": "x", "messages": [{"role": "user", "content": r["question"]}]}
            for r in rows])
        self._done("generate", config)

    def filter(self, config: Any) -> None:
        super().filter(config.model_copy(update={"decontaminate": []}))


def test_training_data_holding_a_validation_problem_is_refused(tmp_path: Path) -> None:
    path = run_yaml(tmp_path, {"train.learning_rate": [1e-5, 1e-3]})
    fake = LeakyStages(tmp_path / "train.jsonl")
    with pytest.raises(InputError, match="validation problem .* is in the training data"):
        run_tune(tune_config(path, tmp_path / "tune"), stages=fake.stages())
    assert "train" not in [kind for kind, _ in fake.calls]


class Killable:
    """A trial runner that counts calls, scores by the learning rate, and can be killed."""

    def __init__(self, kill_at: int | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.kill_at = kill_at

    def __call__(self, trial: Trial) -> dict[str, float]:
        self.calls.append((trial.label, dict(trial.values)))
        if len(self.calls) == self.kill_at:
            trial.folder.mkdir(parents=True)
            raise KeyboardInterrupt
        ids = [r["id"] for r in read_rows(Path(str(trial.config.eval_problems)))]
        lr = trial.values["train.learning_rate"]
        return {pid: float(solves(pid, lr)) for pid in ids}


def test_a_killed_search_resumes_with_its_finished_trials(tmp_path: Path) -> None:
    import optuna

    path = run_yaml(tmp_path, {"train.learning_rate": [1e-5, 1e-3]}, trials=4)
    out = tmp_path / "tune"
    first = Killable(kill_at=3)  # default, trial 0, then killed inside trial 1
    with pytest.raises(KeyboardInterrupt):
        run_tune(tune_config(path, out), trial_runner=first)
    assert [label for label, _ in first.calls] == ["default", "trial-000", "trial-001"]
    second = Killable()
    run_tune(tune_config(path, out), trial_runner=second)
    # The interrupted trial resumes in its folder with its values (as Optuna's trial 2; its
    # trial 1 is marked failed and interrupted); nothing finished runs again.
    assert [label for label, _ in second.calls] == ["trial-001", "trial-003", "trial-004"]
    assert second.calls[0][1] == first.calls[2][1]
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'optuna.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 4


def test_a_trial_is_better_only_when_its_interval_excludes_zero(tmp_path: Path) -> None:
    path = run_yaml(tmp_path, {"train.learning_rate": [BEST_LR, 1.0001 * BEST_LR]}, trials=2,
                    validation_size=30)
    summary = run_tune(tune_config(path, tmp_path / "tune"), trial_runner=Killable())
    # The default's 1e-5 solves about 27% of them; BEST_LR about 90%.
    assert [row["verdict"] for row in summary["trials"]] == ["better", "better"]
    path = run_yaml(tmp_path, {"train.learning_rate": [1e-5, 1.0001e-5]}, trials=2,
                    validation_size=30)
    summary = run_tune(tune_config(path, tmp_path / "same"), trial_runner=Killable())
    assert [row["verdict"] for row in summary["trials"]] == ["no difference"] * 2
    assert summary["noise_floor"] > 0
    # No trial scored above the default: best.yaml keeps the default's values.
    path = run_yaml(tmp_path, {"train.learning_rate": [5e-4, 1e-3]}, trials=2)
    summary = run_tune(tune_config(path, tmp_path / "worse"), trial_runner=Killable())
    assert {row["verdict"] for row in summary["trials"]} == {"worse"}
    assert summary["best"] is None
    best = load_config(PipelineConfig, tmp_path / "worse" / "best.yaml")
    assert best.students[0].train["learning_rate"] == 1e-5


# --- the real filter and training on a tiny model (generation and evaluation through the
# --- fake backend, so no engine starts) -----------------------------------------------------


def half_right(question: str, index: int) -> str:
    """Sample 0 adds the numbers (right for these problems), sample 1 is off by one."""
    import re

    total = sum(int(x) for x in re.findall(r"\d+", question)) + index
    return f"The sum is {total}. The answer is \\boxed{{{total}}}."


@pytest.mark.train
def test_a_search_with_the_real_filter_and_training(tmp_path: Path, tiny_teacher: Path) -> None:
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.evaluate.stage import run_evaluate
    from cotdistill.generate.stage import run_generate
    from cotdistill.run.runner import default_stages

    data = Path(__file__).resolve().parents[2] / "data" / "word_problems"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({
        "out": str(tmp_path / "run"), "teacher": str(tiny_teacher),
        "problems": str(data / "train.jsonl"), "eval_problems": str(data / "test.jsonl"),
        "generate": {"prompt_template": "plain", "limit": 6, "n": 2, "max_tokens": 32},
        "students": [{"name": "self", "train": {"max_steps": 2, "batch_size": 2}}],
        "evaluate": {"temperature": 0.0, "bootstrap_resamples": 50},
        "tune": {"trials": 2, "validation_size": 12,
                 "space": {"train.learning_rate": [1e-5, 1e-3]}},
    }))
    real = default_stages()
    calls: list[str] = []

    def counted(name: str, function: Any) -> Any:
        def call(config: Any) -> Any:
            calls.append(name)
            return function(config)
        return call

    stages = Stages(
        generate=counted("generate", lambda c: run_generate(c, FakeBackend(responder=half_right))),
        filter=counted("filter", real.filter), student_init=real.student_init,
        train=counted("train", real.train), control_data=real.control_data,
        evaluate=counted("evaluate", lambda c: run_evaluate(
            c, lambda model: FakeBackend(model, responder=half_right), tables=False)))
    out = tmp_path / "tune"
    summary = run_tune(tune_config(path, out), stages=stages)
    assert calls == ["generate", "filter", "train", "evaluate"] * 1 + ["train", "evaluate"] * 2
    assert summary["validation_problems"] == 12 and len(summary["trials"]) == 2
    (filtered,) = (out / "cache").glob("filter-*")
    manifest = json.loads((filtered / "manifest.json").read_text())
    assert set(manifest["config"]["decontaminate"]) == {
        str(out / "split" / "validation.jsonl"), str(data / "test.jsonl")}
    validation = {r["id"] for r in read_rows(out / "split" / "validation.jsonl")}
    kept = {r["problem_id"] for r in read_rows(filtered / "sft.jsonl")}
    assert kept and not kept & validation
    results = read_rows(out / "trials" / "default" / "evaluate" / "results.jsonl")
    assert {r["problem_id"] for r in results} == validation
    assert {r["model"] for r in results} == {"self"}
    best = load_config(PipelineConfig, out / "best.yaml")
    # The fake backend answers alike for every model: no trial beats the default's 2e-5.
    assert best.students[0].train["learning_rate"] == 2e-5 and summary["best"] is None


def test_a_trial_that_cannot_run_is_failed_and_the_search_goes_on(tmp_path: Path) -> None:
    from cotdistill.run.tune.trial import HeldOutInTraining

    class Picky(Killable):
        def __call__(self, trial: Trial) -> dict[str, float]:
            if trial.label == "trial-001":
                raise InputError("the filter kept no trace", field="filter")
            return super().__call__(trial)

    path = run_yaml(tmp_path, {"train.learning_rate": [1e-5, 1e-3]}, trials=3)
    summary = run_tune(tune_config(path, tmp_path / "tune"), trial_runner=Picky())
    assert [row["verdict"] for row in summary["trials"]][1] == "failed"
    assert "kept no trace" in summary["trials"][1]["error"]
    assert summary["best"] in (0, 2)

    class Leaky(Killable):  # a leak is no trial's fault: the search stops
        def __call__(self, trial: Trial) -> dict[str, float]:
            if trial.label == "trial-000":
                raise HeldOutInTraining("validation problem 'p01' is in the training data")
            return super().__call__(trial)

    with pytest.raises(HeldOutInTraining):
        run_tune(tune_config(path, tmp_path / "leak"), trial_runner=Leaky())
