"""Iterative refinement (`refine:` in `cotdistill run`): the validation split is held out, a round
samples exactly the failed validation problems and never an evaluation problem, the rounds are
planned as stages with their own folders, a rerun does no work, and the report has each round.

The stages are fakes that read and write what the real ones do: a model "knows" the training
problems whose traces it was trained on, so which validation problems fail is known exactly.
"""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from cotdistill.errors import InputError
from cotdistill.records import Problem
from cotdistill.run.config import PROBLEM_KEYS, PipelineConfig
from cotdistill.run.plan import plan
from cotdistill.run.refine.plan import SET_BY_RUN
from cotdistill.run.refine.select import select_round, split_ids
from cotdistill.run.refine.stages import check_held_out
from cotdistill.run.runner import Stages, run_pipeline
from tests.helpers.stages import RecordingStages, read_rows, write_rows


def easy(pid: str) -> bool:
    """Training problems every model solves without having seen them."""
    return int(pid[1:]) % 3 == 0


def answers(pid: str, trained_on: set[str] | None) -> bool:
    """The fake models' answers: the teacher (None) is always right; a student is right on a
    training problem it trained on or that is easy, and on evaluation problem e<i> when it
    trained on more than 4 * i problems (more data, more right)."""
    if trained_on is None:
        return True
    if pid.startswith("e"):
        return int(pid[1:]) < len(trained_on) // 4
    return pid in trained_on or easy(pid)


class FakeStages(RecordingStages):
    def filter(self, config: Any) -> None:
        traces = [row for path in config.traces for row in read_rows(path)]
        kept = [t for t in traces if t["sample_index"] == 0]
        write_rows(config.out / "kept.jsonl", kept)
        write_rows(config.out / "rejected.jsonl", [t for t in traces if t["sample_index"]])
        write_rows(config.out / "sft.jsonl", [
            {"messages": [*t["messages"], {"role": "assistant", "content": t["completion"]}],
             "problem_id": t["problem_id"]} for t in kept])
        self._done("filter", config, {"kept": len(kept), "traces_in": len(traces)})

    def train(self, config: Any) -> None:
        rows = [row for path in config.data for row in read_rows(path)]
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "model.json").write_text(json.dumps({
            "trained_on": sorted({r["problem_id"] for r in rows}), "start": config.student}))
        self._done("train", config, {"train_examples": len(rows)})

    def evaluate(self, config: Any) -> None:
        from cotdistill.evaluate.sources import parse_model_specs
        from cotdistill.evaluate.stage import load_eval_problems

        problems = load_eval_problems(config)
        rows = []
        for name, spec in parse_model_specs(config.model).items():
            model = Path(spec) / "model.json"
            known = set(json.loads(model.read_text())["trained_on"]) if model.exists() else None
            rows += [{"model": name, "problem_id": p.id, "sample_index": 0,
                      "correct": answers(p.id, known), "category": p.category,
                      "num_tokens": 10} for p in problems]
        write_rows(config.out / "results.jsonl", rows)
        (config.out / "report.md").write_text("# Evaluation\n")
        self._done("evaluate", config)


def refine_config(tmp_path: Path, **refine: Any) -> PipelineConfig:
    train = tmp_path / "train.jsonl"
    test = tmp_path / "test.jsonl"
    write_rows(train, [{"id": f"p{i:02d}", "question": f"train question {i}", "answer": str(i),
                        "category": "even" if i % 2 == 0 else "odd"} for i in range(40)])
    write_rows(test, [{"id": f"e{i}", "question": f"held out {i}", "answer": str(i),
                       "category": "even" if i % 2 == 0 else "odd"} for i in range(10)])
    return PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": "fake-teacher",
        "problems": train, "eval_problems": test,
        "generate": {"prompt_template": "plain", "n": 2, "temperature": 0.7,
                     "category_field": "category"},
        "students": [{"name": "self", "train": {"epochs": 2}}],
        "evaluate": {"temperature": 0.0, "category_field": "category",
                     "bootstrap_resamples": 50},
        "refine": {"rounds": 2, "validation_fraction": 0.25, "samples": 4, **refine},
    })


# --- the pure core -------------------------------------------------------------------------


def problem(pid: str, category: str | None = None) -> Problem:
    return Problem(id=pid, question=f"q {pid}", gold_answer="1", category=category)


def test_select_round_takes_exactly_the_failed_problems() -> None:
    validation = [problem("v1", "x"), problem("v2", "x"), problem("v3", "y"),
                  problem("v4", "y"), problem("v5", "y")]
    scores = {"v1": 1.0, "v2": 0.25, "v3": 0.0, "v4": 0.5, "v5": 1.0, "other": 0.0}
    pool = [problem(f"t{i}", "y" if i % 2 else "x") for i in range(10)]
    chosen = select_round(validation, scores, pool, fail_below=0.5, weak_category_problems=2,
                          seed=3, round_index=1)
    # v4 has half its samples right: not below 0.5. A score for a problem outside the
    # validation set ("other") is never selected.
    assert chosen.failed == ["v2", "v3"]
    assert [p.id for p in chosen.chosen] == ["v2", "v3"]
    assert [p.id for p in chosen.remaining] == ["v1", "v4", "v5"]
    # x: 0.625, y: 0.5, mean 0.55 -> y is weak; two training problems of y are drawn.
    assert chosen.weak == {"y": 0.5}
    assert len(chosen.extra) == 2 and {p.category for p in chosen.extra} == {"y"}
    assert {p.id for p in chosen.extra} <= {p.id for p in pool}

    capped = select_round(validation, scores, pool, max_problems=1, seed=3)
    assert len(capped.chosen) == 1 and capped.chosen[0].id in {"v2", "v3"}
    assert [p.id for p in capped.remaining] == [p.id for p in validation
                                                if p.id != capped.chosen[0].id]
    with pytest.raises(InputError, match="no validation result"):
        select_round(validation, {"v1": 1.0}, pool)


def test_split_is_seeded_and_stable() -> None:
    ids = [f"p{i}" for i in range(100)]
    held = split_ids(ids, 10, seed=0)
    assert len(held) == 10 and held == split_ids(reversed(ids), 10, seed=0)
    assert held != split_ids(ids, 10, seed=1)
    # Adding problems moves the split only at its margin.
    assert len(held & split_ids([*ids, *(f"n{i}" for i in range(10))], 10, seed=0)) >= 8


def test_paired_difference_interval() -> None:
    from cotdistill.evaluate.measures.metrics import bootstrap_difference

    # Pairing: the same gain on every problem has no spread, whatever the problems' levels.
    same = bootstrap_difference([0.5, 1.0, 0.75], [0.25, 0.75, 0.5], resamples=200)
    assert (same.value, same.low, same.high) == pytest.approx((0.25, 0.25, 0.25))
    mixed = bootstrap_difference([1, 0, 1, 1], [0, 0, 1, 0], resamples=200)
    assert mixed.value == 0.5 and mixed.low < 0.5 < mixed.high
    with pytest.raises(ValueError):
        bootstrap_difference([1.0], [1.0, 0.0])


def test_a_validation_problem_in_the_training_data_is_refused(tmp_path: Path) -> None:
    sft = tmp_path / "sft.jsonl"
    write_rows(sft, [{"messages": [], "problem_id": "a"}, {"messages": [], "problem_id": "v1"}])
    check_held_out([problem("v2")], [sft])
    with pytest.raises(InputError) as info:
        check_held_out([problem("v1")], [sft])
    assert (info.value.file, info.value.line, info.value.field) == (str(sft), 2, "problem_id")


# --- the pipeline --------------------------------------------------------------------------


def test_plan_has_the_rounds_stages_and_folders(tmp_path: Path) -> None:
    the_plan = plan(refine_config(tmp_path))
    run, steps = tmp_path / "run", {s.name: s for s in plan(refine_config(tmp_path)).steps}
    per_round = ["validate", "select", "generate", "filter", "train"]
    assert list(steps) == [
        "refine: split", "generate", "filter", "self: train",
        *[f"self-round-{r}: {s}" for r in (1, 2) for s in per_round], "evaluate"]
    for r in (1, 2):
        for stage in per_round:
            assert steps[f"self-round-{r}: {stage}"].out == run / "refine" / f"round-{r}" / stage
    # The teacher never samples the validation problems for the first training.
    assert steps["generate"].config.problems == run / "refine" / "split" / "train.jsonl"
    assert steps["self-round-1: validate"].config.problems == (
        run / "refine" / "split" / "validation.jsonl")
    assert steps["self-round-2: validate"].config.problems == (
        run / "refine" / "round-1" / "select" / "validation.jsonl")
    assert steps["self-round-2: validate"].config.model == [
        f"self-round-1={run / 'refine' / 'round-1' / 'train'}"]
    generate = steps["self-round-2: generate"].config
    assert (generate.n, generate.problems, generate.seed) == (
        4, run / "refine" / "round-2" / "select" / "problems.jsonl", 2)
    train = steps["self-round-2: train"].config
    assert train.student == str(run / "refine" / "round-1" / "train") and train.epochs == 2
    assert train.data == [run / "filter" / "sft.jsonl",
                          run / "refine" / "round-1" / "filter" / "sft.jsonl",
                          run / "refine" / "round-2" / "filter" / "sft.jsonl"]
    # Each round's student is evaluated with the others, on the evaluation set.
    assert steps["evaluate"].config.model[-2:] == [
        f"self-round-1={run / 'refine' / 'round-1' / 'train'}",
        f"self-round-2={run / 'refine' / 'round-2' / 'train'}"]
    assert the_plan.refinement is not None and list(the_plan.refinement.models) == [
        "self-round-1", "self-round-2"]


@pytest.mark.parametrize(("change", "field"), [
    ({"validation_size": 5}, "refine.validation_size"),  # with validation_fraction
    ({"student": "nobody"}, "refine.student"),
    ({"train": {"data": ["x.jsonl"]}}, "refine.train.data"),
    ({"train": {"epochz": 1}}, "refine.train.epochz"),
])
def test_plan_rejects_bad_refine_keys(tmp_path: Path, change: dict[str, Any],
                                      field: str) -> None:
    with pytest.raises(InputError) as info:
        plan(refine_config(tmp_path, **change))
    assert info.value.field == field


def test_weak_categories_need_categories(tmp_path: Path) -> None:
    config = refine_config(tmp_path, weak_category_problems=2)
    config.generate.pop("category_field")
    with pytest.raises(InputError) as info:
        plan(config)
    assert info.value.field == "refine.weak_category_problems"


def test_run_samples_exactly_the_failed_validation_problems(tmp_path: Path) -> None:
    config = refine_config(tmp_path, weak_category_problems=1)
    fake = FakeStages()
    run_pipeline(config, fake.stages())
    run, refine = tmp_path / "run", tmp_path / "run" / "refine"
    validation = [r["id"] for r in read_rows(refine / "split" / "validation.jsonl")]
    training = [r["id"] for r in read_rows(refine / "split" / "train.jsonl")]
    evaluation = {r["id"] for r in read_rows(config.eval_problems)}  # type: ignore[arg-type]
    assert len(validation) == 10 and not set(validation) & set(training)
    assert set(validation) | set(training) == {f"p{i:02d}" for i in range(40)}
    # The first training never saw a validation problem.
    base = json.loads((run / "students" / "self" / "model" / "model.json").read_text())
    assert not set(base["trained_on"]) & set(validation)

    picked = read_rows(refine / "round-1" / "select" / "problems.jsonl")
    failed = [p for p in picked if p["reason"] == "failed_validation"]
    assert [p["id"] for p in failed] == [v for v in validation if not easy(v)]
    extra = [p for p in picked if p["reason"] != "failed_validation"]
    assert extra and {p["id"] for p in extra} <= set(training)
    assert not {p["id"] for p in picked} & evaluation
    traces = read_rows(refine / "round-1" / "generate" / "traces.jsonl")
    assert len(traces) == 4 * len(picked)  # `samples` per problem
    # Failed problems are training data now; the next round validates on the rest only.
    assert [r["id"] for r in read_rows(refine / "round-1" / "select" / "validation.jsonl")] == [
        v for v in validation if easy(v)]
    round1 = json.loads((refine / "round-1" / "train" / "model.json").read_text())
    assert round1["start"] == str(run / "students" / "self" / "model")
    assert set(round1["trained_on"]) == set(base["trained_on"]) | {p["id"] for p in picked}
    assert not set(round1["trained_on"]) & evaluation
    # Round 2 finds nothing failed: its generate and filter pass with nothing to do, and its
    # training continues on the data kept so far.
    assert read_rows(refine / "round-2" / "select" / "problems.jsonl") == []
    assert not any(out.startswith(str(refine / "round-2" / "generate"))
                   for _, out in fake.calls)
    assert (refine / "round-2" / "filter" / "sft.jsonl").read_text() == ""
    round2 = json.loads((refine / "round-2" / "train" / "model.json").read_text())
    assert round2["trained_on"] == round1["trained_on"]


def test_second_run_does_no_work_and_the_report_shows_each_round(tmp_path: Path) -> None:
    config = refine_config(tmp_path)
    run_pipeline(config, FakeStages().stages())
    run = tmp_path / "run"
    before = {str(p): p.read_text() for p in sorted(run.rglob("manifest.json"))}

    again = FakeStages()
    summary = run_pipeline(config, again.stages())
    assert again.calls == []
    assert all(s["reused"] for s in summary["stages"])
    assert {str(p): p.read_text() for p in sorted(run.rglob("manifest.json"))} == before

    # Evaluation accuracy per round, as the fake models answer (more data, more right).
    def accuracy(model: Path) -> float:
        known = set(json.loads((model / "model.json").read_text())["trained_on"])
        return sum(answers(f"e{i}", known) for i in range(10)) / 10

    expected = [accuracy(run / "students" / "self" / "model"),
                accuracy(run / "refine" / "round-1" / "train"),
                accuracy(run / "refine" / "round-2" / "train")]
    assert expected[1] > expected[0]  # the fakes make round 1 learn something
    report = (run / "report.md").read_text()
    assert "## Refinement" in report
    for index, name in enumerate(["self", "self-round-1", "self-round-2"]):
        row = re.search(rf"^\| {index} \| {name} \|.*$", report, re.MULTILINE)
        assert row is not None, name
        cells = [c.strip() for c in row.group(0).strip("|").split("|")]
        assert cells[7].startswith(f"{expected[index]:.3f}")
        if index:
            assert cells[8].startswith(f"{expected[index] - expected[0]:+.3f}")
    # The per-category change: one row per category of the evaluation problems.
    assert re.search(r"^\| even \| 5 \|", report, re.MULTILINE)
    assert re.search(r"^\| odd \| 5 \|", report, re.MULTILINE)


@pytest.mark.train
def test_a_round_with_the_real_stages(tmp_path: Path, tiny_teacher: Path) -> None:
    """Real split, evaluate, select, filter and training (tiny model; generation and answers
    from the fake backend): the round validates on held-out problems, samples the failed ones
    and continues training from the student's weights."""
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.evaluate.stage import run_evaluate
    from cotdistill.generate.stage import run_generate
    from cotdistill.run.runner import default_stages

    def right_when_even(path: str) -> Any:
        teacher = Path(path) == tiny_teacher

        def answer(question: str, index: int) -> str:
            total = sum(int(x) for x in re.findall(r"\d+", question))
            given = total if teacher or total % 2 == 0 else total + 1
            return f"{total} it is. The answer is \\boxed{{{given}}}."
        return answer

    data = Path(__file__).resolve().parents[2] / "data" / "word_problems"
    config = PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": str(tiny_teacher),
        "problems": data / "train.jsonl", "eval_problems": data / "test.jsonl",
        "generate": {"prompt_template": "plain", "limit": 6, "n": 2, "max_tokens": 32,
                     "temperature": 0.7},
        "students": [{"name": "self", "train": {"max_steps": 2, "batch_size": 2}}],
        "evaluate": {"limit": 4, "temperature": 0.0, "bootstrap_resamples": 50,
                     "latency_prompts": 0},
        "refine": {"rounds": 1, "validation_size": 6, "samples": 2},
    })
    real = default_stages()
    stages = Stages(
        generate=lambda c: run_generate(c, FakeBackend(responder=lambda q, i: right_when_even(
            str(tiny_teacher))(q, 0))),
        filter=real.filter, student_init=real.student_init, train=real.train,
        control_data=real.control_data,
        evaluate=lambda c: run_evaluate(c, lambda path: FakeBackend(
            path, responder=right_when_even(path))))
    run_pipeline(config, stages)
    run = tmp_path / "run"
    validation = read_rows(run / "refine" / "split" / "validation.jsonl")
    odd = [v["id"] for v in validation if int(v["answer"]) % 2]
    assert odd, "the split should hold a problem the student fails"
    picked = read_rows(run / "refine" / "round-1" / "select" / "problems.jsonl")
    assert [p["id"] for p in picked] == odd
    manifest = json.loads((run / "refine" / "round-1" / "train" / "manifest.json").read_text())
    assert manifest["base_model"] == str(run / "students" / "self" / "model")
    kept = read_rows(run / "filter" / "sft.jsonl")
    new = read_rows(run / "refine" / "round-1" / "filter" / "sft.jsonl")
    assert {r["problem_id"] for r in new} == set(odd)  # the filter ran on the new traces
    assert manifest["counts"]["records"] == len(kept) + len(new)  # trained on the union
    summary = json.loads((run / "evaluate" / "summary.json").read_text())
    assert list(summary["models"]) == ["teacher", "self", "self-round-1"]
    assert "| 1 | self-round-1 |" in (run / "report.md").read_text()


def test_a_lora_student_continues_from_its_merged_weights(tmp_path: Path) -> None:
    config = refine_config(tmp_path, rounds=1)
    config.students[0].train.update({"lora": True})
    with pytest.raises(InputError, match="merge: true"):
        plan(config)
    config.students[0].train["merge"] = True
    steps = {s.name: s for s in plan(config).steps}
    assert steps["self-round-1: train"].config.student == str(
        tmp_path / "run" / "students" / "self" / "model" / "merged")


def test_fresh_round_reruns_that_round_only(tmp_path: Path) -> None:
    config = refine_config(tmp_path)
    run_pipeline(config, FakeStages().stages())
    fake = FakeStages()
    run_pipeline(config.model_copy(update={"fresh": ["self-round-1"]}), fake.stages())
    round1 = tmp_path / "run" / "refine" / "round-1"
    assert fake.calls == [(stage, str(round1 / folder)) for stage, folder in (
        ("evaluate", "validate"), ("generate", "generate"), ("filter", "filter"),
        ("train", "train"))]
    assert len(list(round1.parent.glob("round-1.old-*"))) == 1


# --- the override rule of nested sections (PipelineConfig's docstring) -----------------------


def _list_fields(model: type[BaseModel]) -> list[str]:
    """The model's list-valued keys (`list[X]`, `list[X] | str | None`), read off its fields."""
    def is_list(annotation: Any) -> bool:
        return typing.get_origin(annotation) is list or any(
            is_list(a) for a in typing.get_args(annotation))
    return [name for name, f in model.model_fields.items() if is_list(f.annotation)]


def _example(model: type[BaseModel], key: str, tag: str) -> list[Any]:
    """Two valid items for a list key, different for each `tag` (so replace and merge differ)."""
    def item_type(annotation: Any) -> Any:
        if typing.get_origin(annotation) is list:
            return typing.get_args(annotation)[0]
        return next(item_type(a) for a in typing.get_args(annotation)
                    if typing.get_origin(a) is list or typing.get_args(a))
    kind = item_type(model.model_fields[key].annotation)
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        start = 0 if tag == "run" else 2
        return [choices[start % len(choices)], choices[(start + 1) % len(choices)]]
    if kind is Path:
        return [f"{tag}-{key}-1.jsonl", f"{tag}-{key}-2.jsonl"]
    if key == "base_url":
        return [f"http://{tag}-1:8000/v1", f"http://{tag}-2:8000/v1"]
    assert kind is str, (key, kind)
    return [f"{tag}_{key}_1", f"{tag}_{key}_2"]


def _stage_models() -> dict[str, tuple[str, str, type[BaseModel]]]:
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.filter.config import FilterConfig
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.train.config import TrainConfig

    # refine section -> (the run's section it is over, the round's step, its stage config)
    return {"validation": ("evaluate", "validate", EvaluateConfig),
            "generate": ("generate", "generate", GenerateConfig),
            "filter": ("filter", "filter", FilterConfig),
            "train": ("train", "train", TrainConfig)}


OVERRIDES = [(section, key) for section, (_, _, model) in _stage_models().items()
             for key in _list_fields(model) if key not in SET_BY_RUN[section]]


def _as_text(value: Any) -> list[str]:
    return [str(v) for v in ([value] if isinstance(value, str | Path) else value)]


@pytest.mark.parametrize(("section", "key"), OVERRIDES)
def test_nested_sections_replace_lists_and_add_to_decontamination_sets(
        tmp_path: Path, section: str, key: str) -> None:
    """Every list key a refine section can set: the round gets the section's list whole (not
    the run's plus it), except a decontamination set, which adds up with the evaluation set."""
    from cotdistill.config import ADDED_KEYS

    outer, step, model = _stage_models()[section]
    assert ("filter", "decontaminate") in OVERRIDES  # the discovery found the key of issue 19
    base = refine_config(tmp_path)
    run_value, round_value = _example(model, key, "run"), _example(model, key, "round")
    values = base.model_dump()
    if outer == "train":
        values["students"][0]["train"][key] = run_value
    else:
        values[outer][key] = run_value
    values["refine"][section] = {key: round_value}
    steps = {s.name: s for s in plan(PipelineConfig.model_validate(values)).steps}
    got = _as_text(getattr(steps[f"self-round-1: {step}"].config, key))
    if key in ADDED_KEYS:
        assert got == [*run_value, str(base.eval_problems), *round_value]
    else:
        assert got == round_value


@pytest.mark.parametrize(("main", "rounds"), [
    (None, None), (None, []), (None, ["extra.jsonl"]), (["mine.jsonl"], []),
    (["mine.jsonl"], ["extra.jsonl"]),
])
def test_every_filter_decontaminates_against_the_evaluation_set(
        tmp_path: Path, main: list[str] | None, rounds: list[str] | None) -> None:
    """Issue 19: `refine: {filter: {decontaminate: [...]}}` (or `[]`) replaced the evaluation
    set in the rounds' filters; user entries are added to it, never substituted."""
    values = refine_config(tmp_path).model_dump()
    if main is not None:
        values["filter"] = {"decontaminate": main}
    if rounds is not None:
        values["refine"]["filter"] = {"decontaminate": rounds}
    config = PipelineConfig.model_validate(values)
    filters = [s for s in plan(config).steps if s.kind in ("filter", "refine_filter")]
    assert [s.name for s in filters] == ["filter", "self-round-1: filter", "self-round-2: filter"]
    for step in filters:
        sets = step.config.decontaminate  # type: ignore[attr-defined]
        assert config.eval_problems in sets
        assert {Path(p) for p in main or []} <= set(sets)
        assert config.eval_problems in step.depends_on  # a changed evaluation set refilters
        if step.kind == "refine_filter":
            assert {Path(p) for p in rounds or []} <= set(sets)


@pytest.mark.parametrize("key", [k for k in SET_BY_RUN["validation"] if k in PROBLEM_KEYS])
def test_a_round_refuses_keys_that_read_the_problems_the_run_wrote(
        tmp_path: Path, key: str) -> None:
    """The run writes the rounds' problems files in one form: a section that would read them
    otherwise is refused, not silently overridden."""
    with pytest.raises(InputError) as info:
        plan(refine_config(tmp_path, validation={key: None}))
    assert info.value.field == f"refine.validation.{key}"
