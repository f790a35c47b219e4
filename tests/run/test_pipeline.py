"""`cotdistill run`: the plan connects the stages, a finished stage is reused, an interrupted or
changed one runs again, the control draws without selection, and the shipped configs load."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from cotdistill.config import load_config
from cotdistill.errors import InputError
from cotdistill.infra.files import write_manifest
from cotdistill.run.config import PipelineConfig
from cotdistill.run.control import draw_unfiltered, run_control_data
from cotdistill.run.plan import plan
from cotdistill.run.runner import Stages, run_pipeline

ROOT = Path(__file__).resolve().parents[2]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def trace(pid: str, index: int, correct: bool, reasons: list[str]) -> dict[str, Any]:
    return {
        "problem_id": pid, "sample_index": index, "teacher": "t", "completion": f"{pid}-{index}",
        "messages": [{"role": "user", "content": f"question {pid}"}],
        "correct": correct, "reasons": reasons,
    }


class FakeStages:
    """Stage functions that write what the real ones write (enough for the next stage)."""

    def __init__(self, interrupt_train: str | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.interrupt_train = interrupt_train
        self.resumed: dict[str, bool] = {}

    def stages(self) -> Stages:
        return Stages(self.generate, self.filter, self.student_init, self.train,
                      run_control_data, self.evaluate)

    def _done(self, stage: str, config: Any, name: str) -> None:
        self.calls.append((stage, name))
        write_manifest(config.out, stage=stage, config=config, inputs={}, counts={},
                       started=time.time())

    def generate(self, config: Any) -> None:
        rows = [trace(f"p{i}", j, False, []) for i in range(4) for j in range(2)]
        write_rows(config.out / "traces.jsonl", rows)
        self._done("generate", config, "generate")

    def filter(self, config: Any) -> None:
        kept = [trace("p0", 0, True, []), trace("p1", 1, True, [])]
        rejected = [trace("p0", 1, False, ["wrong"]), trace("p2", 0, False, ["wrong"]),
                    trace("p2", 1, False, ["truncated"]), trace("p3", 0, False, ["contaminated"]),
                    trace("p3", 1, False, ["contaminated"]), trace("p1", 0, False, ["wrong"])]
        write_rows(config.out / "kept.jsonl", kept)
        write_rows(config.out / "rejected.jsonl", rejected)
        write_rows(config.out / "sft.jsonl", [{"messages": [], "problem_id": r["problem_id"]}
                                              for r in kept])
        self._done("filter", config, "filter")

    def student_init(self, config: Any) -> None:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "config.json").write_text(json.dumps({"layers": "cut"}))
        self._done("student_init", config, str(config.out))

    def train(self, config: Any) -> None:
        out = config.out
        name = out.parent.name
        checkpoint = out / "checkpoints" / "checkpoint-1"
        self.resumed[name] = checkpoint.exists()
        checkpoint.mkdir(parents=True, exist_ok=True)
        if self.interrupt_train == name:
            self.interrupt_train = None
            self.calls.append(("train", name))
            raise KeyboardInterrupt  # killed after its first checkpoint, before the manifest
        (out / "model.safetensors").write_text(config.model_dump_json())  # differs with config
        self._done("train", config, name)

    def evaluate(self, config: Any) -> None:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "report.md").write_text("# Evaluation\n\n| model | accuracy |\n")
        self._done("evaluate", config, "evaluate")


@pytest.fixture
def pipeline_config(tmp_path: Path) -> PipelineConfig:
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    write_rows(train, [{"id": f"p{i}", "question": f"q{i}", "answer": "1"} for i in range(4)])
    write_rows(test, [{"id": "t0", "question": "held out", "answer": "2"}])
    return PipelineConfig.model_validate({
        "out": tmp_path / "run",
        "teacher": "fake-teacher",
        "problems": train,
        "eval_problems": test,
        "engine": {"gpu_memory_utilization": 0.2},
        "generate": {"prompt_template": "plain", "n": 2},
        "filter": {"max_per_problem": 1},
        "students": [
            {"name": "self", "train": {"epochs": 1}},
            {"name": "cut", "init": {"keep_every": 2}, "train": {"epochs": 3}},
        ],
        "control": "unfiltered",
        "control_of": "cut",
        "evaluate": {"limit": 1, "temperature": 0.0},
        "evaluate_bases": True,
    })


def manifests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("manifest.json"))}


def test_plan_connects_the_stages(pipeline_config: PipelineConfig, tmp_path: Path) -> None:
    steps = {s.name: s for s in plan(pipeline_config).steps}
    run = tmp_path / "run"
    assert list(steps) == ["generate", "filter", "self: train", "cut: init", "cut: train",
                           "cut-unfiltered: data", "cut-unfiltered: train", "evaluate"]
    generate = steps["generate"].config
    assert (generate.teacher, generate.n, generate.gpu_memory_utilization) == (
        "fake-teacher", 2, 0.2)
    # The evaluation problems are the filter's decontamination set.
    assert steps["filter"].config.decontaminate == [pipeline_config.eval_problems]
    assert steps["filter"].config.traces == [run / "generate" / "traces.jsonl"]
    assert steps["self: train"].config.student == "fake-teacher"
    # A run's trainings drop their checkpoints once finished (its manifests make reruns free).
    assert steps["self: train"].config.keep_checkpoints is False
    assert steps["self: train"].config.data == [run / "filter" / "sft.jsonl"]
    assert steps["cut: train"].config.student == str(run / "students" / "cut" / "init")
    # The control copies its student's start and training keys, not its data.
    control = steps["cut-unfiltered: train"].config
    assert control.student == steps["cut: train"].config.student
    assert control.epochs == 3
    assert control.data == [run / "control" / "cut-unfiltered" / "data" / "sft.jsonl"]
    evaluate = steps["evaluate"].config
    assert evaluate.problems == pipeline_config.eval_problems
    assert evaluate.prompt_template == "plain"  # the generation template unless told otherwise
    assert evaluate.gpu_memory_utilization == 0.2 and evaluate.reference == "teacher"
    assert evaluate.contrasts == ["cut:cut-unfiltered"]  # the headline: selection's gain
    assert evaluate.model == [
        "teacher=fake-teacher",
        f"cut-base={run / 'students' / 'cut' / 'init'}",
        f"self={run / 'students' / 'self' / 'model'}",
        f"cut={run / 'students' / 'cut' / 'model'}",
        f"cut-unfiltered={run / 'control' / 'cut-unfiltered' / 'model'}",
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"generate": {"out": "elsewhere"}}, "generate.out"),
        ({"filter": {"min_tokenz": 3}}, "filter.min_tokenz"),
        ({"students": [{"name": "a", "train": {"data": ["x.jsonl"]}}]}, "students.0.train.data"),
        ({"control_of": "nobody"}, "control_of"),
        ({"evaluate": {"n": 0}}, "evaluate.n"),
    ],
)
def test_plan_rejects_bad_sections(
    pipeline_config: PipelineConfig, change: dict[str, Any], field: str
) -> None:
    config = PipelineConfig.model_validate({**pipeline_config.model_dump(), **change})
    with pytest.raises(InputError) as info:
        plan(config)
    assert info.value.field == field


def test_second_run_does_no_work(pipeline_config: PipelineConfig, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    fake = FakeStages()
    summary = run_pipeline(pipeline_config, fake.stages())
    assert [c[0] for c in fake.calls] == ["generate", "filter", "train", "student_init", "train",
                                          "train", "evaluate"]
    assert not any(s["reused"] for s in summary["stages"])
    before = manifests(tmp_path / "run")
    printed = capsys.readouterr().out
    assert "| model | accuracy |" in printed  # the final report is printed

    again = FakeStages()
    summary = run_pipeline(pipeline_config, again.stages())
    assert again.calls == []
    assert all(s["reused"] for s in summary["stages"])
    assert manifests(tmp_path / "run") == before


def test_changed_config_reruns_that_stage_and_what_depends_on_it(
    pipeline_config: PipelineConfig,
) -> None:
    run_pipeline(pipeline_config, FakeStages().stages())
    students = [pipeline_config.students[0].model_copy(update={"train": {"epochs": 2}}),
                pipeline_config.students[1]]
    changed = pipeline_config.model_copy(update={"students": students})
    fake = FakeStages()
    run_pipeline(changed, fake.stages())
    # Only `self` retrains; its new weights make the evaluation stale, nothing else.
    assert fake.calls == [("train", "self"), ("evaluate", "evaluate")]


def test_changed_input_file_reruns_downstream(pipeline_config: PipelineConfig) -> None:
    run_pipeline(pipeline_config, FakeStages().stages())
    with open(pipeline_config.eval_problems, "a") as fh:
        fh.write(json.dumps({"id": "t1", "question": "another", "answer": "3"}) + "\n")
    fake = FakeStages()
    run_pipeline(pipeline_config, fake.stages())
    # The decontamination (= evaluation) set changed: the filter runs again; its outputs came
    # out identical, so training is reused (inputs are hashed, not dated); evaluation reruns.
    assert [c[0] for c in fake.calls] == ["filter", "evaluate"]


def test_interrupted_training_resumes(pipeline_config: PipelineConfig) -> None:
    first = FakeStages(interrupt_train="cut")
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(pipeline_config, first.stages())
    assert first.calls[-1] == ("train", "cut")

    second = FakeStages()
    run_pipeline(pipeline_config, second.stages())
    # Finished stages are reused; the interrupted one runs again in the same folder, where
    # its checkpoint survived (run_train continues from it), then the rest.
    assert second.calls == [("train", "cut"), ("train", "cut-unfiltered"),
                            ("evaluate", "evaluate")]
    assert second.resumed["cut"] is True


def test_control_draws_as_many_traces_without_selection(tmp_path: Path) -> None:
    rows = [trace("a", 0, True, []), trace("a", 1, False, ["wrong"]),
            trace("b", 0, False, ["contaminated"]), trace("c", 0, False, ["truncated"]),
            trace("c", 1, True, ["duplicate"])]
    drawn = draw_unfiltered(rows, 3, seed=0)
    assert len(drawn) == 3
    assert all("contaminated" not in r["reasons"] for r in drawn)
    assert draw_unfiltered(rows, 3, seed=0) == drawn
    every = {tuple(r["completion"] for r in draw_unfiltered(rows, 2, seed=s)) for s in range(30)}
    assert len(every) > 3  # really random over the pool, not the first rows
    with pytest.raises(InputError):
        draw_unfiltered(rows, 5, seed=0)


def test_control_data_stage_writes_sft_rows(tmp_path: Path) -> None:
    from cotdistill.run.control import ControlDataConfig

    kept = tmp_path / "kept.jsonl"
    rejected = tmp_path / "rejected.jsonl"
    sft = tmp_path / "sft.jsonl"
    write_rows(kept, [trace("a", 0, True, [])])
    write_rows(rejected, [trace("a", 1, False, ["wrong"]), trace("b", 0, False, ["wrong"])])
    write_rows(sft, [{"messages": []}, {"messages": []}])
    out = tmp_path / "control"
    manifest = run_control_data(ControlDataConfig(kept=kept, rejected=rejected, like=sft,
                                                  out=out, seed=1))
    lines = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and manifest["counts"]["drawn"] == 2
    assert lines[0]["messages"][-1]["role"] == "assistant"
    assert lines[0]["messages"][-1]["content"] in {"a-0", "a-1", "b-0"}


@pytest.mark.parametrize("name", ["demo.yaml", "gpu_gsm8k.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    path = ROOT / "configs" / name
    config = load_config(PipelineConfig, path)
    steps = plan(config.model_copy(update={
        "problems": ROOT / config.problems, "eval_problems": ROOT / config.eval_problems,
    }), path).steps
    kinds = [s.kind for s in steps]
    assert kinds[-1] == "evaluate" and "control_data" in kinds
    # A refinement split, when configured, comes before the teacher generates anything.
    assert kinds.index("generate") == (1 if config.refine else 0)


# --- the real filter, student init and training on tiny models (generation and evaluation
# --- through the fake backend, so no engine starts) ---------------------------------------------


def half_right(question: str, index: int) -> str:
    """Sample 0 adds the numbers (right for these problems), sample 1 is off by one."""
    import re

    numbers = [int(x) for x in re.findall(r"\d+", question)]
    total = sum(numbers) + index
    return f"{numbers[0]} + {numbers[1]} = {total}. The answer is {total}."


def graded_by_model(path: str, teacher: Path) -> Any:
    """Evaluation answers that differ by model (found from the folder the model is served
    from), so the report's retention is a real ratio: the teacher is always right, `self`
    only when the sum is even, the control only when it is odd, `cut` never."""
    import re

    name = "teacher" if Path(path) == teacher else Path(path).parent.name

    def answer(question: str, index: int) -> str:
        total = sum(int(x) for x in re.findall(r"\d+", question))
        right = {"teacher": True, "self": total % 2 == 0, "self-unfiltered": total % 2 == 1,
                 "cut": False}[name]
        given = total if right else total + 1
        return f"The answer is \\boxed{{{given}}}."

    return answer


@pytest.mark.train
def test_run_with_real_filter_and_training(tmp_path: Path, tiny_teacher: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.evaluate.stage import run_evaluate
    from cotdistill.generate.stage import run_generate
    from cotdistill.run.runner import default_stages

    data = ROOT / "data" / "word_problems"
    config = PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": str(tiny_teacher),
        "problems": data / "train.jsonl", "eval_problems": data / "test.jsonl",
        "generate": {"prompt_template": "plain", "limit": 6, "n": 2, "max_tokens": 32},
        "students": [
            {"name": "self", "train": {"max_steps": 2, "batch_size": 2, "save_steps": 1}},
            {"name": "cut", "init": {"keep_every": 2},
             "train": {"max_steps": 2, "batch_size": 2}},
        ],
        "control": "unfiltered",
        "evaluate": {"limit": 4, "temperature": 0.0, "bootstrap_resamples": 50},
    })
    calls: list[str] = []
    real = default_stages()

    def counted(name: str, function: Any) -> Any:
        def call(stage_config: Any) -> Any:
            calls.append(name)
            return function(stage_config)
        return call

    stages = Stages(
        generate=counted("generate", lambda c: run_generate(c, FakeBackend(responder=half_right))),
        filter=counted("filter", real.filter),
        student_init=counted("student_init", real.student_init),
        train=counted("train", real.train),
        control_data=counted("control_data", real.control_data),
        evaluate=counted("evaluate", lambda c: run_evaluate(c, lambda path: FakeBackend(
            path, responder=graded_by_model(path, tiny_teacher)), tables=False)),
    )
    run_pipeline(config, stages)
    assert calls == ["generate", "filter", "train", "student_init", "train", "control_data",
                     "train", "evaluate"]
    run = tmp_path / "run"
    record = json.loads((run / "stages.json").read_text())["stages"]
    assert [s["stage"] for s in record][:2] == ["generate", "filter"] and len(record) == 8
    assert not any(s["reused"] for s in record)
    kept = (run / "filter" / "sft.jsonl").read_text().splitlines()
    control = (run / "control" / "self-unfiltered" / "data" / "sft.jsonl").read_text()
    assert len(kept) == 6 and len(control.splitlines()) == 6
    summary = json.loads((run / "evaluate" / "summary.json").read_text())
    assert list(summary["models"]) == ["teacher", "self", "cut", "self-unfiltered"]
    assert set(summary["retention"]) == {"self", "cut", "self-unfiltered"}
    # Each model answers as graded_by_model says: the teacher all 4, `self` the one even sum
    # (20), the control the three odd ones (11, 31, 5), `cut` none.
    accuracy = {name: m["accuracy"] for name, m in summary["models"].items()}
    assert accuracy == {"teacher": 1.0, "self": 0.25, "cut": 0.0, "self-unfiltered": 0.75}
    retention = {name: r["value"] for name, r in summary["retention"].items()}
    assert retention == {"self": 0.25, "cut": 0.0, "self-unfiltered": 0.75}
    cut = json.loads((run / "students" / "cut" / "model" / "config.json").read_text())
    assert cut["num_hidden_layers"] == 2
    report = (run / "report.md").read_text()
    assert "## Evaluation" in report and "## Failure modes" in report
    # It leads with the paired differences: self 1 of 4 right where the teacher had 4 and the
    # control 3 (problems 11, 31, 5 the control's, 20 self's own).
    assert report.index("## Headline") < report.index("| stage |")
    assert "| self | teacher | -0.750 [" in report
    assert "| self | self-unfiltered | -0.500 [" in report and "| 1 / 3 |" in report
    # The terminal gets the tables a person decides on; notes and examples stay in the file.
    printed = capsys.readouterr().out
    assert "| generate |" in printed and "| self-unfiltered |" in printed
    assert "## Deployment" in printed and printed.count("| model | parameters | disk MB") == 1
    assert "## Failure modes" not in printed and "## Calibration" not in printed
    assert len(printed.splitlines()) < 80

    calls.clear()
    run_pipeline(config, stages)
    assert calls == []


# --- issue 14: --fresh, errors that name their file, a missing reference ------------------------


def test_fresh_moves_the_stage_aside_and_reruns_it_and_what_depends_on_it(
    pipeline_config: PipelineConfig, tmp_path: Path
) -> None:
    run_pipeline(pipeline_config, FakeStages().stages())
    fresh = pipeline_config.model_copy(update={"fresh": ["generate", "cut"]})
    fake = FakeStages()
    run_pipeline(fresh, fake.stages())
    # Both run again from nothing; they wrote what they wrote before, so what depends on them
    # is reused (inputs are hashed).
    assert [c[0] for c in fake.calls] == ["generate", "student_init", "train"]
    assert fake.resumed["cut"] is False  # the old checkpoints went aside with the old folder
    asides = sorted(p.name for p in (tmp_path / "run").rglob("*.old-*"))
    assert [a.split(".old-")[0] for a in asides] == ["cut", "generate"]
    assert (tmp_path / "run" / "generate").is_dir()

    everything = FakeStages()
    run_pipeline(pipeline_config.model_copy(update={"fresh": ["all"]}), everything.stages())
    assert len(everything.calls) == 7


def test_fresh_with_an_unknown_stage_names_the_choices(pipeline_config: PipelineConfig) -> None:
    with pytest.raises(InputError) as info:
        run_pipeline(pipeline_config.model_copy(update={"fresh": ["generat"]}),
                     FakeStages().stages())
    assert info.value.field == "fresh"
    assert "'generat'" in info.value.message and "cut-unfiltered" in info.value.message


def test_cli_fresh_flag_applies_changed_generate_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The refusal of changed settings says how to apply them, and `--fresh generate` does."""
    import yaml

    from cotdistill.backends.fake import FakeBackend
    from cotdistill.cli import main

    monkeypatch.setattr("cotdistill.generate.single.make_backend",
                        lambda *args, **kwargs: FakeBackend())
    monkeypatch.setattr("cotdistill.models.resolve_model", lambda name: ("/m", "fake"))

    def only_generate(config: PipelineConfig, stages: Any = None, source: Any = None) -> Any:
        from cotdistill.run.runner import default_stages

        fake = FakeStages()  # the real generate stage (over a fake backend), fakes after it
        return run_pipeline(config, Stages(
            default_stages().generate, fake.filter, fake.student_init, fake.train,
            run_control_data, fake.evaluate), source)

    monkeypatch.setattr("cotdistill.run.run_pipeline", only_generate)
    train = tmp_path / "train.jsonl"
    write_rows(train, [{"id": f"p{i}", "question": f"{i} + 1?", "answer": str(i + 1)}
                       for i in range(3)])
    cfg = tmp_path / "cfg.yaml"
    values = {"out": str(tmp_path / "run"), "problems": str(train),
              "eval_problems": str(train), "generate": {"n": 1, "temperature": 0.5}}
    cfg.write_text(yaml.safe_dump(values))
    assert main(["run", "--config", str(cfg)]) == 0
    values["generate"]["n"] = 2
    cfg.write_text(yaml.safe_dump(values))
    capsys.readouterr()
    assert main(["run", "--config", str(cfg)]) == 2
    assert "--fresh generate" in capsys.readouterr().err
    assert main(["run", "--config", str(cfg), "--fresh", "generate"]) == 0
    traces = (tmp_path / "run" / "generate" / "traces.jsonl").read_text().splitlines()
    assert len(traces) == 6  # 3 problems x the new n=2
    assert len(list((tmp_path / "run").glob("generate.old-*"))) == 1


def test_a_typo_in_engine_names_the_file_and_the_engine_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import yaml

    from cotdistill.cli import main

    train = tmp_path / "train.jsonl"
    write_rows(train, [{"id": "p0", "question": "1 + 1?", "answer": "2"}])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "problems": str(train),
                                   "eval_problems": str(train), "engine": {"dtyp": "bfloat16"}}))
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}, field 'engine.dtyp'" in err


def test_evaluation_without_the_reference_model_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.evaluate.stage import run_evaluate

    problems = tmp_path / "p.jsonl"
    write_rows(problems, [{"id": "a", "question": "2 + 3?", "answer": "5"}])
    config = EvaluateConfig(problems=problems, out=tmp_path / "eval", model=["big=x", "small=y"],
                            bootstrap_resamples=20, prompt_template="plain")
    run_evaluate(config, lambda path: FakeBackend(path))
    assert "no model is named 'teacher'" in capsys.readouterr().err
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "**No retention:** no model is named 'teacher'" in report
