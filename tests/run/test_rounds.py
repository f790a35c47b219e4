"""Self-training rounds (`rounds:` in `cotdistill run`, STaR / ReST-EM): R rounds plan a problems
step and per round generate, filter and train, in order, with the generator and the start the
config names; every round's filter decontaminates like the main one; the unfiltered control
and the evaluation set are untouched; the report has a "Rounds" section with each round's
yield; a rerun reuses finished rounds; a student that does not exist is a clear error.

Generation is the real generate stage over the fake backend (so `until_correct` really samples
in waves) and filtering the real filter (so decontamination and the yield figures are the real
ones); training and evaluation are fakes: a "model" is a model.json naming the prompts it
trained on, and a student answers a prompt it trained on at once, any other one on its second
try.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotdistill.errors import InputError
from cotdistill.run.config import PipelineConfig
from cotdistill.run.plan import plan
from cotdistill.run.runner import run_pipeline, stage_folders
from tests.helpers.stages import RecordingStages, read_rows, write_rows


def train_question(i: int) -> str:
    return f"Tom has {i} apples and buys {i + 2} more apples at the market today."


def eval_question(i: int) -> str:
    return f"A farm keeps {i} cows and {i + 3} goats in one large field near the river."


LEAK = "leak"  # a training problem that is an evaluation problem word for word


HARD = {train_question(i) for i in range(4)}  # the teacher gets these right on its 2nd try only


def answerer(model: str | None) -> Any:
    """The fake backend's responder for a generator (it sums the question's numbers, or gets
    it wrong): the teacher is right at once except on HARD; a student is right at once on a
    prompt it trained on; either is right on its second try at the latest."""
    trained = Path(str(model)) / "model.json"
    known = set(json.loads(trained.read_text())["prompts"]) if trained.is_file() else None
    tries: Counter[str] = Counter()

    def answer(prompt: str, index: int) -> str:
        tries[prompt] += 1
        total = sum(int(x) for x in re.findall(r"\d+", prompt))
        at_once = prompt not in HARD if known is None else prompt in known
        right = at_once or tries[prompt] > 1
        return f"Adding up gives {total}. The answer is \\boxed{{{total if right else total + 1}}}."
    return answer


class FakeStages(RecordingStages):
    def generate(self, config: Any) -> None:
        from cotdistill.backends.fake import FakeBackend
        from cotdistill.generate.stage import run_generate

        self.calls.append(("generate", str(config.out)))
        run_generate(config, FakeBackend(str(config.teacher), responder=answerer(config.teacher)))

    def filter(self, config: Any) -> None:
        from cotdistill.filter.stage import run_filter

        self.calls.append(("filter", str(config.out)))
        run_filter(config)

    def student_init(self, config: Any) -> None:
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "config.json").write_text(json.dumps({"keep_every": config.keep_every}))
        self._done("student_init", config)

    def train(self, config: Any) -> None:
        rows = [row for path in config.data for row in read_rows(path)]
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "model.json").write_text(json.dumps({
            "prompts": sorted({r["messages"][0]["content"] for r in rows}),
            "start": config.student, "data": [str(p) for p in config.data]}))
        self._done("train", config, {"train_examples": len(rows)})

    def evaluate(self, config: Any) -> None:
        from cotdistill.evaluate.sources import parse_model_specs

        models = {}
        for name, spec in parse_model_specs(config.model).items():
            model = Path(spec) / "model.json"
            known = json.loads(model.read_text())["prompts"] if model.exists() else None
            models[name] = {"accuracy": 1.0 if known is None else len(known) / 100}
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "summary.json").write_text(json.dumps({"models": models}))
        (config.out / "report.md").write_text("# Evaluation\n")
        self._done("evaluate", config)


def rounds_config(tmp_path: Path, out: str = "run", **rounds: Any) -> PipelineConfig:
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_rows(train, [
        *({"id": f"p{i:02d}", "question": train_question(i), "answer": str(2 * i + 2)}
          for i in range(12)),
        {"id": LEAK, "question": eval_question(1), "answer": "5"},
        *({"id": f"nogold{i}", "question": f"Tom has {i} apples; is that many for one person?"}
          for i in range(2)),
    ])
    write_rows(test, [{"id": f"e{i}", "question": eval_question(i), "answer": str(2 * i + 3)}
                      for i in range(5)])
    return PipelineConfig.model_validate({
        "out": tmp_path / out, "teacher": "fake-teacher", "problems": train,
        "eval_problems": test,
        "generate": {"prompt_template": "plain", "n": 1, "temperature": 0.7},
        "filter": {"verify_processes": 1},
        "students": [{"name": "self", "train": {"epochs": 2}},
                     {"name": "cut", "init": {"keep_every": 2}, "train": {"epochs": 1}}],
        "evaluate": {"temperature": 0.0},
        "rounds": {"count": 2, **rounds},
    })


def steps_of(config: PipelineConfig) -> dict[str, Any]:
    return {s.name: s for s in plan(config).steps}


# --- the plan ------------------------------------------------------------------------------


def test_plan_has_each_rounds_stages_in_order_with_its_generator_and_start(
        tmp_path: Path) -> None:
    the_plan = plan(rounds_config(tmp_path))
    run, steps = tmp_path / "run", {s.name: s for s in the_plan.steps}
    per_round = ["generate", "filter", "train"]
    assert [s.name for s in the_plan.steps] == [
        "generate", "filter", "self: train", "cut: init", "cut: train", "rounds: problems",
        *[f"self-st-{r}: {s}" for r in (1, 2) for s in per_round], "evaluate"]
    for r in (1, 2):
        for stage in per_round:
            assert steps[f"self-st-{r}: {stage}"].out == run / "rounds" / f"round-{r}" / stage
    # best_student: round 1 samples with the student the main chain trained, round 2 with
    # round 1's; adaptively by default.
    first, second = (steps[f"self-st-{r}: generate"].config for r in (1, 2))
    assert first.teacher == str(run / "students" / "self" / "model")
    assert second.teacher == str(run / "rounds" / "round-1" / "train")
    assert (first.until_correct, first.max_samples) == (1, 8)
    assert first.problems == second.problems == run / "rounds" / "problems" / "problems.jsonl"
    assert first.seed != second.seed
    # start: original: every round's student starts where `self` started (the teacher), on its
    # own kept traces plus the main chain's.
    for r in (1, 2):
        train = steps[f"self-st-{r}: train"].config
        assert train.student == "fake-teacher" and train.epochs == 2
        assert train.data == [run / "filter" / "sft.jsonl",
                              run / "rounds" / f"round-{r}" / "filter" / "sft.jsonl"]
    # Each round's student is evaluated with the rest.
    assert steps["evaluate"].config.model[-2:] == [
        f"self-st-1={run / 'rounds' / 'round-1' / 'train'}",
        f"self-st-2={run / 'rounds' / 'round-2' / 'train'}"]
    assert the_plan.rounds is not None and list(the_plan.rounds.models) == [
        "self-st-1", "self-st-2"]
    # `--fresh self-st-1` moves that round's folder, `--fresh rounds` every round's.
    folders = stage_folders(the_plan)
    assert folders["self-st-1"] == run / "rounds" / "round-1"
    assert folders["rounds"] == run / "rounds"
    assert folders["generate"] == run / "generate"


def test_start_last_teacher_generator_and_the_named_student(tmp_path: Path) -> None:
    run = tmp_path / "run"
    steps = steps_of(rounds_config(tmp_path, start="last", generator="teacher"))
    assert [steps[f"self-st-{r}: train"].config.student for r in (1, 2)] == [
        str(run / "students" / "self" / "model"), str(run / "rounds" / "round-1" / "train")]
    assert run / "rounds" / "round-1" / "train" in steps["self-st-2: train"].depends_on
    assert [steps[f"self-st-{r}: generate"].config.teacher for r in (1, 2)] == [
        "fake-teacher", "fake-teacher"]

    # The named student: `cut` starts from its layer cut, with its own train keys; no main
    # chain traces with keep_previous: false; sampling n each when adaptive is turned off.
    steps = steps_of(rounds_config(
        tmp_path, student="cut", keep_previous=False,
        generate={"until_correct": None, "max_samples": None, "n": 3}, train={"epochs": 3}))
    train = steps["cut-st-2: train"].config
    assert train.student == str(run / "students" / "cut" / "init") and train.epochs == 3
    assert train.data == [run / "rounds" / "round-2" / "filter" / "sft.jsonl"]
    assert steps["cut-st-1: generate"].config.teacher == str(run / "students" / "cut" / "model")
    generate = steps["cut-st-1: generate"].config
    assert (generate.until_correct, generate.max_samples, generate.n) == (None, None, 3)
    # A wider wave than the default budget: the budget is one wave.
    generate = steps_of(rounds_config(tmp_path, generate={"n": 12}))["self-st-1: generate"]
    assert (generate.config.until_correct, generate.config.max_samples) == (1, 12)


def test_rounds_sample_the_synthetic_problems_too_and_only_problems_with_gold(
        tmp_path: Path) -> None:
    from cotdistill.run.rounds.stages import run_rounds_problems

    values = rounds_config(tmp_path).model_dump()
    values["synthesize"] = {"count": 1}
    values["refine"] = {"rounds": 1, "validation_size": 3}
    steps = steps_of(PipelineConfig.model_validate(values))
    run = tmp_path / "run"
    problems = steps["rounds: problems"].config
    # What the run's generate samples: the split's training problems and the synthetic ones.
    assert problems.problems == steps["generate"].config.problems == (
        run / "synthesize" / "problems" / "problems.jsonl")
    write_rows(problems.problems, [
        {"id": "p01", "question": train_question(1), "answer": "4"},
        {"id": "nogold0", "question": "Is that many?"},
        {"id": "p01~numbers-0", "question": train_question(5), "answer": "12",
         "origin": "synthetic"}])
    run_rounds_problems(problems)
    assert [r["id"] for r in read_rows(problems.out / "problems.jsonl")] == [
        "p01", "p01~numbers-0"]
    assert steps["self-st-1: generate"].config.problems == problems.out / "problems.jsonl"


@pytest.mark.parametrize(("change", "field"), [
    ({"student": "nobody"}, "rounds.student"),
    ({"train": {"data": ["x.jsonl"]}}, "rounds.train.data"),
    ({"generate": {"teacher": "other"}}, "rounds.generate.teacher"),
    ({"filter": {"traces": ["x.jsonl"]}}, "rounds.filter.traces"),
    ({"train": {"epochz": 1}}, "rounds.train.epochz"),
    ({"generate": {"temperature": 0}}, "rounds.generate.temperature"),
    ({"generate": {"max_samples": None}}, "rounds.generate.max_samples"),
])
def test_plan_rejects_bad_rounds_keys(tmp_path: Path, change: dict[str, Any],
                                      field: str) -> None:
    with pytest.raises(InputError) as info:
        plan(rounds_config(tmp_path, **change))
    assert info.value.field == field
    if field == "rounds.student":
        assert "'nobody'" in info.value.message and "self, cut" in info.value.message


def test_a_lora_student_generates_and_continues_from_its_merged_weights(
        tmp_path: Path) -> None:
    config = rounds_config(tmp_path, start="last")
    config.students[0].train.update({"lora": True})
    with pytest.raises(InputError, match="merge: true") as info:
        plan(config)
    assert info.value.field == "rounds.generator"
    config.students[0].train["merge"] = True
    steps = steps_of(config)
    merged = str(tmp_path / "run" / "students" / "self" / "model" / "merged")
    assert steps["self-st-1: generate"].config.teacher == merged
    assert steps["self-st-1: train"].config.student == merged


def test_offline_topk_students_need_another_kd_in_the_rounds(tmp_path: Path) -> None:
    """A round's traces carry no teacher top-K logprobs to distil from."""
    values = rounds_config(tmp_path).model_dump()
    values["generate"]["topk_logprobs"] = 4
    values["students"][0]["train"]["kd"] = "offline-topk"
    with pytest.raises(InputError) as info:
        plan(PipelineConfig.model_validate(values))
    assert info.value.field == "rounds.train.kd"
    values["rounds"]["train"] = {"kd": None}
    steps = steps_of(PipelineConfig.model_validate(values))
    assert steps["self-st-1: train"].config.kd is None
    assert steps["self-st-1: generate"].config.topk_logprobs == 0


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("extra", [None, [], ["extra.jsonl"]])
def test_every_round_filter_decontaminates_like_the_main_filter(
        tmp_path: Path, refine: bool, extra: list[str] | None) -> None:
    values = rounds_config(tmp_path).model_dump()
    values["filter"]["decontaminate"] = ["mine.jsonl"]
    if extra is not None:
        values["rounds"]["filter"] = {"decontaminate": extra}
    if refine:
        values["refine"] = {"rounds": 1, "validation_size": 3}
    config = PipelineConfig.model_validate(values)
    filters = [s for s in plan(config).steps if s.name.startswith("self-st-")
               and s.kind == "filter"]
    assert len(filters) == 2
    validation = tmp_path / "run" / "refine" / "split" / "validation.jsonl"
    for step in filters:
        sets = step.config.decontaminate
        assert config.eval_problems in sets and Path("mine.jsonl") in sets
        assert {Path(p) for p in extra or []} <= set(sets)
        assert (validation in sets) is refine  # the split is held out of every round too
        assert config.eval_problems in step.depends_on  # a changed evaluation set refilters


# --- running the rounds --------------------------------------------------------------------


def test_no_evaluation_problem_reaches_a_round_and_the_control_is_untouched(
        tmp_path: Path) -> None:
    with_rounds = rounds_config(tmp_path).model_copy(update={"control": "unfiltered"})
    without = rounds_config(tmp_path, out="plain").model_copy(
        update={"control": "unfiltered", "rounds": None})
    run_pipeline(with_rounds, FakeStages().stages())
    run_pipeline(without, FakeStages().stages())
    run, plain = tmp_path / "run", tmp_path / "plain"

    evaluation = [eval_question(i) for i in range(5)]
    leaked = 0
    for r in (1, 2):
        round_dir = run / "rounds" / f"round-{r}"
        # The leaked problem was sampled and answered right, and the filter set it aside.
        traces = read_rows(round_dir / "generate" / "traces.jsonl")
        assert {t["problem_id"] for t in traces} == {f"p{i:02d}" for i in range(12)} | {LEAK}
        rejected = [row for row in read_rows(round_dir / "filter" / "rejected.jsonl")
                    if row["problem_id"] == LEAK]
        leaked += len(rejected)
        assert rejected and all("contaminated" in row["reasons"] for row in rejected)
        model = json.loads((round_dir / "train" / "model.json").read_text())
        assert model["prompts"]  # the round trained on something
        assert not any(q in p for q in evaluation for p in model["prompts"])
    assert leaked >= 2

    # The control draws, trains and is evaluated as it would without rounds.
    control = Path("control") / "self-unfiltered"
    for name in ("data/sft.jsonl", "data/manifest.json", "model/model.json"):
        mine, theirs = (root / control / name for root in (run, plain))
        if name.endswith("manifest.json"):
            assert json.loads(mine.read_text())["counts"] == json.loads(theirs.read_text())[
                "counts"]
        else:
            assert mine.read_text().replace(str(run), "") == theirs.read_text().replace(
                str(plain), "")
    # The evaluation set is what the run was given, evaluated over every model.
    evaluate = next(s for s in plan(with_rounds).steps if s.kind == "evaluate").config
    assert evaluate.problems == with_rounds.eval_problems
    summary = json.loads((run / "evaluate" / "summary.json").read_text())["models"]
    assert {"self-unfiltered", "self-st-1", "self-st-2"} <= set(summary)


def _cells(report: str, index: int) -> list[str]:
    row = re.search(rf"^\| {index} \| .*$", report.split("## Rounds")[1], re.MULTILINE)
    assert row is not None, index
    return [c.strip() for c in row.group(0).strip("|").split("|")]


def test_report_shows_each_rounds_yield_and_a_rerun_reuses_finished_rounds(
        tmp_path: Path) -> None:
    config = rounds_config(tmp_path, count=1)
    first = FakeStages()
    run_pipeline(config, first.stages())
    run = tmp_path / "run"
    assert ("train", str(run / "rounds" / "round-1" / "train")) in first.calls

    # One round more: only the new round (and the evaluation) runs.
    more = FakeStages()
    run_pipeline(config.model_copy(update={"rounds": config.rounds.model_copy(  # type: ignore[union-attr]
        update={"count": 2})}), more.stages())
    round2 = run / "rounds" / "round-2"
    assert more.calls == [("generate", str(round2 / "generate")),
                          ("filter", str(round2 / "filter")),
                          ("train", str(round2 / "train")), ("evaluate", str(run / "evaluate"))]
    again = FakeStages()
    summary = run_pipeline(config.model_copy(update={"rounds": config.rounds.model_copy(  # type: ignore[union-attr]
        update={"count": 2})}), again.stages())
    assert again.calls == [] and all(s["reused"] for s in summary["stages"])

    report = (run / "report.md").read_text()
    assert "## Rounds" in report
    accuracy = json.loads((run / "evaluate" / "summary.json").read_text())["models"]
    folders = {0: (run / "generate", run / "filter"),
               1: (run / "rounds" / "round-1" / "generate", run / "rounds" / "round-1" / "filter"),
               2: (round2 / "generate", round2 / "filter")}
    for index, (generator, student) in enumerate(
            [("teacher", "self"), ("self", "self-st-1"), ("self-st-1", "self-st-2")]):
        generate_dir, filter_dir = folders[index]
        traces = read_rows(generate_dir / "traces.jsonl")
        kept = read_rows(filter_dir / "kept.jsonl")
        tokens = sum(t["num_tokens"] for t in traces)
        cells = _cells(report, index)
        assert cells[1] == generator and cells[7] == student
        assert (cells[2], cells[4]) == (str(len(traces)), str(len(kept)))
        assert cells[5] == f"{1000 * len(kept) / tokens:.2f}"
        assert cells[6] == f"{len(kept) / len(traces):.3f}"
        assert cells[8] == f"{accuracy[student]['accuracy']:.3f}"
        if index:
            # Adaptive sampling: a prompt the generator trained on costs one sample, any other
            # two (the leaked evaluation problem, and in round 1 the four the teacher's one
            # sample got wrong, so `self` never trained on them).
            assert (cells[2], cells[3]) == ({1: "18", 2: "14"}[index], "13 of 13")
            assert not any(t["problem_id"].startswith("nogold") for t in traces)  # no gold
        else:  # the teacher's one sample each: wrong on the four hard ones, no gold on two
            assert (cells[2], cells[3], cells[4]) == ("15", "-", "8")
    # The run's yield table lists every round's filter too.
    assert re.search(r"^\| self-st-2: filter \| 14 \|", report, re.MULTILINE)


# --- the command line ----------------------------------------------------------------------


def test_dry_run_lists_the_round_stages_and_help_lists_the_keys(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cotdistill.cli import build_parser, main

    config = rounds_config(tmp_path)
    values = json.loads(config.model_dump_json())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["stage"] for row in lines] == [s.name for s in plan(config).steps]
    assert {"rounds: problems", "self-st-1: generate", "self-st-2: train"} <= {
        row["stage"] for row in lines}
    assert not (tmp_path / "run").exists()

    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "YAML file only (no flag): engine, generate, filter, students, evaluate" in text
    assert re.search(r"YAML file only \(no flag\): [^.]*, rounds\.", text)
    for key in ("count", "generator", "start", "student", "keep_previous", "generate",
                "filter", "train"):
        assert f"rounds.{key}:" in text


@pytest.mark.train
def test_rounds_with_real_filter_and_training(tmp_path: Path, tiny_teacher: Path) -> None:
    """Real filter and TRL training on a tiny model (generation from the fake backend): round
    1 continues from the main chain's student (`start: last`), round 2 from round 1's, each on
    its own kept traces plus the main chain's."""
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.generate.stage import run_generate
    from cotdistill.run.runner import Stages, default_stages

    data = Path(__file__).resolve().parents[2] / "data" / "word_problems"
    config = PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": str(tiny_teacher),
        "problems": data / "train.jsonl", "eval_problems": data / "test.jsonl",
        "generate": {"prompt_template": "plain", "limit": 4, "n": 1, "max_tokens": 32,
                     "temperature": 0.7},
        "filter": {"verify_processes": 1},
        "students": [{"name": "self", "train": {"max_steps": 1, "batch_size": 2}}],
        "rounds": {"count": 2, "start": "last"},
    })
    real, fake = default_stages(), FakeStages()
    stages = Stages(generate=lambda c: run_generate(c, FakeBackend(str(c.teacher))),
                    filter=real.filter, student_init=real.student_init, train=real.train,
                    control_data=real.control_data, evaluate=fake.evaluate)
    run_pipeline(config, stages)
    run = tmp_path / "run"
    main_kept = len(read_rows(run / "filter" / "sft.jsonl"))
    for r, start in ((1, run / "students" / "self" / "model"),
                     (2, run / "rounds" / "round-1" / "train")):
        round_dir = run / "rounds" / f"round-{r}"
        manifest = json.loads((round_dir / "train" / "manifest.json").read_text())
        assert manifest["base_model"] == str(start)
        kept = len(read_rows(round_dir / "filter" / "sft.jsonl"))
        assert kept and manifest["counts"]["records"] == main_kept + kept
        generated = json.loads((round_dir / "generate" / "manifest.json").read_text())
        assert generated["teacher"] == str(start)  # the previous student sampled
    assert "| 2 | self-st-1 |" in (run / "report.md").read_text()
