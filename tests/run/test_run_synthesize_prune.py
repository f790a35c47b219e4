"""`run` with a `synthesize:` section (issue 21) and a student's `prune:` (issue 22): the plan,
the problems generate samples (join vs replace), decontamination, the control kept free of
synthetic problems, and the pruned student calibrated on the run's kept traces."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotdistill.cli import main
from cotdistill.config import load_config
from cotdistill.errors import InputError
from cotdistill.infra.files import write_manifest
from cotdistill.problems import ProblemFields, load_problems
from cotdistill.run.config import PipelineConfig
from cotdistill.run.control import run_control_data
from cotdistill.run.plan import plan
from cotdistill.run.plan_synthesize import run_synth_problems
from cotdistill.run.runner import Stages, run_pipeline

ROOT = Path(__file__).resolve().parents[2]
SYNTHETIC = [
    {"id": "p0~numbers-0", "question": "q0 with new numbers", "answer": "7",
     "synthetic_from": "p0", "strategy": "numbers", "label_source": "equation"},
    {"id": "p1~numbers-0", "question": "q1 with new numbers", "answer": "9",
     "synthetic_from": "p1", "strategy": "numbers", "label_source": "votes"},
]


def values(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_rows(train, [{"id": f"p{i}", "question": f"q{i}", "answer": str(i)} for i in range(6)])
    write_rows(test, [{"id": "t0", "question": "held out", "answer": "2"}])
    return {"out": str(tmp_path / "run"), "teacher": "fake-teacher", "problems": str(train),
            "eval_problems": str(test), "students": [{"name": "self"}], **extra}


def steps_of(config: dict[str, Any]) -> dict[str, Any]:
    return {s.name: s for s in plan(PipelineConfig.model_validate(config)).steps}


def test_dry_run_shows_synthesize_before_generate_with_its_resolved_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = tmp_path / "other_eval.jsonl"
    write_rows(extra, [{"id": "o", "question": "other", "answer": "1"}])
    config = values(tmp_path, generate={"max_tokens": 64, "limit": 4},
                    synthesize={"count": 2, "min_votes": 3, "decontaminate": [str(extra)]},
                    refine={"rounds": 1, "validation_size": 2},
                    students=[{"name": "slim", "prune": {"target_params": 0.5}}])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config))

    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [row["kind"] for row in lines]
    assert kinds[:4] == ["refine_split", "synthesize", "synth_problems", "generate"]
    synth = lines[1]["config"]
    assert (synth["count"], synth["min_votes"], synth["max_tokens"]) == (2, 3, 64)
    assert synth["limit"] == 4  # the run's training problems: generate's limit
    assert synth["problems"] == config["problems"]  # seeds keep their equations
    assert synth["out"] == str(tmp_path / "run" / "synthesize")
    # the section's entry stays; the evaluation set and the validation split are added
    assert synth["decontaminate"] == [str(extra), config["eval_problems"],
                                      str(tmp_path / "run/refine/split/validation.jsonl")]
    assert lines[3]["config"]["problems"] == str(
        tmp_path / "run/synthesize/problems/problems.jsonl")
    prune = next(row for row in lines if row["kind"] == "student_prune")
    assert (prune["stage"], prune["config"]["target_params"]) == ("slim: prune", 0.5)
    assert prune["config"]["calibration"] == str(tmp_path / "run/filter/kept.jsonl")
    assert not (tmp_path / "run").exists()


def test_the_evaluation_problems_cannot_be_dropped_from_decontamination(tmp_path: Path) -> None:
    config = values(tmp_path, synthesize={"decontaminate": []})
    synth = steps_of(config)["synthesize"].config
    assert [str(p) for p in synth.decontaminate] == [config["eval_problems"]]
    evaluate = steps_of(config)["evaluate"].config
    assert str(evaluate.problems) == config["eval_problems"]  # never the synthetic problems


@pytest.mark.parametrize(("mode", "expected"), [
    ("join", ["p0", "p1", "p2", "p0~numbers-0", "p1~numbers-0"]),
    ("replace", ["p0~numbers-0", "p1~numbers-0"]),
])
def test_join_or_replace_sets_the_problems_generate_samples(
        tmp_path: Path, mode: str, expected: list[str]) -> None:
    steps = steps_of(values(tmp_path, generate={"limit": 3},
                            synthesize={"mode": mode}))
    joined = steps["synthesize: problems"].config
    write_rows(joined.synthetic, SYNTHETIC)  # what the synthesize step writes

    run_synth_problems(joined)

    generate = steps["generate"].config
    assert generate.limit is None  # the limit applied to the seeds, not the synthetic ones
    problems = load_problems(generate.problems, ProblemFields.of(generate))
    assert [p.id for p in problems] == expected
    golds = {p.id: p.gold_answer for p in problems}
    assert golds["p1~numbers-0"] == "9"


def test_an_unknown_mode_and_run_owned_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="join or replace") as bad:
        steps_of(values(tmp_path, synthesize={"mode": "mix"}))
    assert bad.value.field == "synthesize.mode"
    with pytest.raises(InputError, match="set by `cotdistill run`"):
        steps_of(values(tmp_path, synthesize={"problems": "x.jsonl"}))
    with pytest.raises(InputError, match="replace"):
        steps_of(values(tmp_path, synthesize={"mode": "replace"}, control="unfiltered"))


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def trace(pid: str, index: int, correct: bool, reasons: list[str]) -> dict[str, Any]:
    return {"problem_id": pid, "sample_index": index, "teacher": "t",
            "completion": f"{pid}-{index}",
            "messages": [{"role": "user", "content": f"question {pid}"}],
            "correct": correct, "reasons": reasons}


class SynthStages:
    """Stage functions that write what the real ones write (enough for the next stage): the
    synthesize writes SYNTHETIC, generate notes the problems it was given, and the filter keeps
    two traces of seeds and one of a synthetic problem."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.generated: list[str] = []

    def stages(self) -> Stages:
        return Stages(self.generate, self.filter, self.model, self.model, run_control_data,
                      self.evaluate, synthesize=self.synthesize, student_prune=self.model)

    def _done(self, stage: str, config: Any) -> None:
        self.calls.append((stage, str(config.out)))
        write_manifest(config.out, stage=stage, config=config, inputs={}, counts={},
                       started=time.time())

    def synthesize(self, config: Any) -> None:
        write_rows(config.out / "problems.jsonl", SYNTHETIC)
        self._done("synthesize", config)

    def generate(self, config: Any) -> None:
        problems = load_problems(config.problems, ProblemFields.of(config))
        self.generated = [p.id for p in problems]
        write_rows(config.out / "traces.jsonl", [trace(i, 0, True, []) for i in self.generated])
        self._done("generate", config)

    def filter(self, config: Any) -> None:
        write_rows(config.out / "kept.jsonl", [trace(i, 0, True, [])
                                               for i in ("p0", "p1", "p0~numbers-0")])
        write_rows(config.out / "rejected.jsonl", [trace(i, 1, False, ["wrong"])
                                                   for i in ("p2", "p3", "p1~numbers-0")])
        write_rows(config.out / "sft.jsonl", [{"messages": []}] * 3)
        self._done("filter", config)

    def model(self, config: Any) -> None:  # prune, init and train: a model folder
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "model.safetensors").write_text(config.model_dump_json())
        self._done(type(config).__name__, config)

    def evaluate(self, config: Any) -> None:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "report.md").write_text("# Evaluation\n\n| model | accuracy |\n")
        self._done("evaluate", config)


def test_run_synthesizes_prunes_and_keeps_the_control_on_seed_traces(tmp_path: Path) -> None:
    config = PipelineConfig.model_validate(values(
        tmp_path, synthesize={"mode": "join"}, control="unfiltered",
        students=[{"name": "slim", "prune": {"target_params": 0.5}}]))
    fake = SynthStages()

    run_pipeline(config, fake.stages())

    assert [c[0] for c in fake.calls[:3]] == ["synthesize", "generate", "filter"]
    assert fake.generated == [f"p{i}" for i in range(6)] + [r["id"] for r in SYNTHETIC]
    assert ("PruneConfig", str(tmp_path / "run/students/slim/prune")) in fake.calls
    control = (tmp_path / "run/control/slim-unfiltered/data/sft.jsonl").read_text()
    assert control.count("\n") == 2  # as many as the filter kept of the seeds
    assert "question p" in control and "~numbers" not in control
    again = SynthStages()
    run_pipeline(config, again.stages())
    assert again.calls == []  # every step, synthesize and prune included, is reused


def test_prune_student_is_calibrated_on_the_kept_traces_and_trained_from_the_cut(
        tmp_path: Path) -> None:
    steps = steps_of(values(tmp_path, students=[
        {"name": "slim", "prune": {"target_params": 0.5}, "train": {"epochs": 1}},
        {"name": "own", "prune": {"mlp": 128, "calibration": str(tmp_path / "train.jsonl")}}]))
    pruned = steps["slim: prune"]
    assert pruned.kind == "student_prune"
    assert pruned.config.calibration == tmp_path / "run/filter/kept.jsonl"
    assert (pruned.config.teacher, pruned.config.target_params) == ("fake-teacher", 0.5)
    assert pruned.config.calibration in pruned.depends_on
    train = steps["slim: train"]
    assert train.config.student == str(tmp_path / "run/students/slim/prune")
    assert Path(train.config.student) in train.depends_on
    assert steps["own: prune"].config.calibration == tmp_path / "train.jsonl"
    names = list(steps)
    assert names.index("filter") < names.index("slim: prune") < names.index("slim: train")


def test_a_student_with_init_and_prune_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not both") as both:
        steps_of(values(tmp_path, students=[
            {"name": "x", "init": {"keep_every": 2}, "prune": {"target_params": 0.5}}]))
    assert both.value.field == "students.0.prune"
    with pytest.raises(InputError, match="set by `cotdistill run`"):
        steps_of(values(tmp_path, students=[{"name": "x", "prune": {"out": "y"}}]))


def test_the_demo_plans_the_same_stages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the demo's paths are relative to the repository
    config = load_config(PipelineConfig, ROOT / "configs" / "demo.yaml")
    steps = plan(config, ROOT / "configs" / "demo.yaml", ask_server=False).steps
    assert [(s.name, s.kind) for s in steps] == [
        ("generate", "generate"), ("filter", "filter"), ("self: train", "train"),
        ("self-unfiltered: data", "control_data"), ("self-unfiltered: train", "train"),
        ("evaluate", "evaluate")]
    generate = steps[0].config
    assert (str(generate.problems), generate.limit) == ("data/word_problems/train.jsonl", 150)
    control = steps[3].config
    assert control.kept == Path("runs/demo/filter/kept.jsonl")
    evaluate = steps[-1].config
    assert evaluate.contrasts == ["self:self-unfiltered"] and evaluate.share_engine


def test_real_synthesis_labels_new_numbers_and_refuses_copies_of_the_evaluation_set(
        tmp_path: Path) -> None:
    from cotdistill.synthesize.stage import run_synthesize

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_rows(train, [
        {"id": "a", "question": "Tom has 3 bags with 4 apples in each bag. How many apples?",
         "answer": "3 * 4 = <<3*4=12>>12\n#### 12"},
        {"id": "b", "question": "Mia reads 5 pages a day for 6 days. How many pages in all?",
         "answer": "5 * 6 = <<5*6=30>>30\n#### 30"}])
    # the evaluation set holds seed b with other numbers: b's variants are copies of it
    write_rows(test, [{"id": "t", "question": "Mia reads 7 pages a day for 2 days. How many "
                       "pages in all?", "answer": "14"}])
    steps = steps_of({"out": str(tmp_path / "run"), "problems": str(train),
                      "eval_problems": str(test), "synthesize": {"count": 2}})

    run_synthesize(steps["synthesize"].config)  # exact labels: no teacher is loaded
    run_synth_problems(steps["synthesize: problems"].config)

    generate = steps["generate"].config
    problems = load_problems(generate.problems, ProblemFields.of(generate))
    made = [p for p in problems if p.id not in ("a", "b")]
    assert [p.id for p in problems][:2] == ["a", "b"]
    assert made and all(p.id.startswith("a~") for p in made)
    for problem in made:  # the gold is the seed's equation on the new numbers
        x, y = (int(w) for w in problem.question.split() if w.isdigit())
        assert problem.gold_answer == str(x * y)
