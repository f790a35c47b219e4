"""`cotdistill run --dry-run`: every planned stage, refinement rounds included, with its resolved
config as one JSON object per line on stdout, and nothing run or written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotdistill.cli import main
from cotdistill.run.config import PipelineConfig
from cotdistill.run.plan import plan


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _nothing_runs(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a dry run must not build stages or load an engine")


def test_dry_run_prints_every_stage_with_its_resolved_config_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("cotdistill.run.runner.default_stages", _nothing_runs)
    monkeypatch.setattr("cotdistill.generate.single.make_backend", _nothing_runs)
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    _write_rows(train, [{"id": f"p{i}", "question": f"train question {i}", "answer": str(i)}
                        for i in range(20)])
    _write_rows(test, [{"id": f"e{i}", "question": f"held out {i}", "answer": str(i)}
                       for i in range(5)])
    values = {"out": str(tmp_path / "run"), "teacher": "fake-teacher", "problems": str(train),
              "eval_problems": str(test), "students": [{"name": "self", "train": {"epochs": 1}}],
              "refine": {"rounds": 2, "validation_size": 4,
                         # issue 19: this used to leave the rounds' filters decontaminating
                         # against nothing
                         "filter": {"decontaminate": []}}}
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(values))
    before = _files(tmp_path)

    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = plan(PipelineConfig.model_validate(values)).steps
    assert [(row["stage"], row["kind"], row["folder"]) for row in lines] == [
        (s.name, s.kind, str(s.out)) for s in expected]
    assert [row["config"] for row in lines] == [s.config.model_dump(mode="json")
                                                for s in expected]
    assert {"self-round-1: train", "self-round-2: filter"} <= {row["stage"] for row in lines}
    filters = [row for row in lines if row["kind"] in ("filter", "refine_filter")]
    assert len(filters) == 3  # the run's filter and one per round
    for row in filters:
        assert str(test) in row["config"]["decontaminate"], row["stage"]
    assert _files(tmp_path) == before  # no folder, lock or log file
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("teacher", [None, "fake-teacher"])
def test_a_student_whose_kd_needs_a_teacher_gets_the_runs_teacher(
        tmp_path: Path, teacher: str | None) -> None:
    """`kd: online` or on-policy in a student's `train:` without its own teacher used to plan a
    train stage with none, which failed only after generation; the run's teacher (the embedded
    one when unset) fills in, and a student's own teacher or SFT student is left as it is."""
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    _write_rows(train, [{"id": "p0", "question": "q", "answer": "1"}])
    _write_rows(test, [{"id": "e0", "question": "q", "answer": "1"}])
    students = [{"name": "sft", "train": {}},
                {"name": "online", "train": {"kd": "online"}},
                {"name": "gkd", "train": {"kd": "on-policy"}},
                {"name": "vllm", "train": {"kd": "on-policy-vllm", "kd_sft_mix": 0.5}},
                {"name": "own", "train": {"kd": "online", "teacher": "other-teacher"}}]
    steps = plan(PipelineConfig.model_validate(
        {"out": str(tmp_path / "run"), "teacher": teacher, "problems": str(train),
         "eval_problems": str(test), "students": students}), ask_server=False).steps
    teachers = {s.name.split(":")[0]: s.config.teacher for s in steps if s.kind == "train"}
    run_teacher = teacher or "embedded"
    assert teachers == {"sft": None, "online": run_teacher, "gkd": run_teacher,
                        "vllm": run_teacher, "own": "other-teacher"}
