"""One answer-reading rule per run: `fallback_last_number` drives the filter and the evaluation
alike, through `cotdistill run` as well; and JSONL written by `dump_line` (U+2028 kept raw) is
read back line by line on "\\n" only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.evaluate.config import EvaluateConfig
from cotdistill.evaluate.stage import run_evaluate
from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import filter_traces
from cotdistill.infra.files import dump_line
from cotdistill.run.config import PipelineConfig
from cotdistill.run.control import ControlDataConfig, run_control_data
from cotdistill.run.plan import plan
from tests.helpers.traces import trace

# An answer said in words only: found by the last-number fallback, by nothing else.
IN_WORDS = "Sam had 5 apples and got 7 more, so Sam has 12 apples now"


def evaluate_in_words(tmp_path: Path, fallback: bool) -> dict:
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p1", "question": "5 + 7?", "answer": "12"}) + "\n")
    config = EvaluateConfig(problems=problems, out=tmp_path / f"eval-{fallback}",
                            model=["teacher=fake"], n=1, prompt_template="plain",
                            bootstrap_resamples=10, fallback_last_number=fallback)
    run_evaluate(config, lambda path: FakeBackend(path, responder=lambda q, i: IN_WORDS))
    rows = (config.out / "results.jsonl").read_text(encoding="utf-8").split("\n")
    return json.loads(rows[0])


@pytest.mark.parametrize("fallback", [True, False])
def test_filter_and_evaluate_read_answers_by_the_same_setting(
    tmp_path: Path, fallback: bool
) -> None:
    kept, rejected, _ = filter_traces(
        [trace(completion=IN_WORDS, gold="12")], FilterConfig(fallback_last_number=fallback))
    filtered = (kept + rejected)[0]["predicted_answer"]
    evaluated = evaluate_in_words(tmp_path, fallback)["predicted_answer"]
    assert filtered == evaluated == ("12" if fallback else None)


def run_config(tmp_path: Path, filter_section: dict, evaluate_section: dict) -> PipelineConfig:
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p1", "question": "q", "answer": "1"}) + "\n")
    return PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": "fake", "problems": problems,
        "eval_problems": problems, "filter": filter_section, "evaluate": evaluate_section,
    })


@pytest.mark.parametrize(
    ("filter_section", "evaluate_section", "expected"),
    [
        ({"fallback_last_number": False}, {}, False),  # the filter's setting reaches evaluate
        ({}, {}, True),  # the shared default
        ({"fallback_last_number": False}, {"fallback_last_number": True}, True),  # explicit wins
    ],
)
def test_run_passes_the_filter_setting_to_evaluate(
    tmp_path: Path, filter_section: dict, evaluate_section: dict, expected: bool
) -> None:
    steps = {s.name: s for s in plan(run_config(tmp_path, filter_section, evaluate_section)).steps}
    assert steps["evaluate"].config.fallback_last_number is expected
    assert steps["filter"].config.fallback_last_number is filter_section.get(
        "fallback_last_number", True)


def test_the_setting_is_documented_once() -> None:
    filter_field = FilterConfig.model_fields["fallback_last_number"]
    evaluate_field = EvaluateConfig.model_fields["fallback_last_number"]
    assert filter_field.description == evaluate_field.description
    assert filter_field.default is evaluate_field.default is True


def test_control_data_keeps_lines_with_unicode_line_separators(tmp_path: Path) -> None:
    def row(pid: str, index: int, reasons: list[str]) -> dict:
        return {"problem_id": pid, "sample_index": index, "teacher": "t",
                "messages": [{"role": "user", "content": "q\u2028with a break"}],
                "completion": f"line one\u2028line two\u0085{pid}-{index}",
                "correct": not reasons, "reasons": reasons}

    kept, rejected, sft = (tmp_path / n for n in ("kept.jsonl", "rejected.jsonl", "sft.jsonl"))
    kept.write_text(dump_line(row("a", 0, [])), encoding="utf-8")
    rejected.write_text(dump_line(row("a", 1, ["wrong"])) + dump_line(row("b", 0, ["wrong"])),
                        encoding="utf-8")
    sft.write_text(dump_line({"messages": [{"role": "user", "content": "x\u2028y"}]}) * 2,
                   encoding="utf-8")
    assert "\u2028" in kept.read_text(encoding="utf-8")  # written raw, as dump_line does
    out = tmp_path / "control"
    manifest = run_control_data(ControlDataConfig(kept=kept, rejected=rejected, like=sft,
                                                  out=out, seed=0))
    assert manifest["counts"]["pool"] == 3 and manifest["counts"]["drawn"] == 2
    lines = (out / "sft.jsonl").read_text(encoding="utf-8").split("\n")
    drawn = [json.loads(line) for line in lines if line]
    assert len(drawn) == 2
    assert all("line one\u2028line two\u0085" in r["messages"][-1]["content"] for r in drawn)
