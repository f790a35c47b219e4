"""The synthesize stage end to end with the fake backend: exact labels from equations, labels
by votes with their agreeing traces, every set-aside problem with its reason, decontamination,
teacher-written problems, and a resume after a kill."""

from __future__ import annotations

import json
import re
from fractions import Fraction
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend, add_numbers
from cotdistill.errors import InputError
from cotdistill.records import Trace
from cotdistill.synthesize import SynthesizeConfig, run_synthesize
from cotdistill.traces import read_traces

NATALIA = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many "
           "clips in May. How many clips did Natalia sell altogether in April and May?")
SEEDS = [
    {"id": "natalia", "question": NATALIA,
     "answer": "48/2 = <<48/2=24>>24 in May.\n48+24 = <<48+24=72>>72 in all.\n#### 72"},
    {"id": "ann", "question": "Ann has 3 pens and gets 4 more. How many pens does she have?",
     "answer": "#### 7"},
    {"id": "marbles", "question": "Bo has 5 marbles and finds 6 more. How many marbles now?",
     "answer": "#### 11"},
    {"id": "leak", "question": "A shop sells 8 cakes on Monday and 9 on Tuesday. How many cakes "
     "did it sell on both days together?", "answer": "#### 17"},
]
EVAL = [{"id": "e1", "question": "A shop sells 20 cakes on Monday and 31 on Tuesday. How many "
         "cakes did it sell on both days together?", "answer": "#### 51"}]


def responder(question: str, index: int) -> str:
    """Sums the numbers (the fake teacher), except that it never agrees about marbles."""
    if "marbles" in question:
        return f"The answer is \\boxed{{{index}}}."
    return add_numbers(question, index)


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def config(tmp_path: Path) -> SynthesizeConfig:
    return SynthesizeConfig(
        problems=write(tmp_path / "seeds.jsonl", SEEDS), out=tmp_path / "synth", count=3, n=4,
        min_votes=3, min_margin=1, prompt_template="plain",
        decontaminate=[write(tmp_path / "eval.jsonl", EVAL)],
    )


def test_labels_reasons_traces_and_manifest(config: SynthesizeConfig) -> None:
    backend = FakeBackend(responder=responder)
    manifest = run_synthesize(config, backend=backend)
    out = Path(config.out)
    kept, rejected = rows(out / "problems.jsonl"), rows(out / "rejected.jsonl")
    # every made problem is kept or set aside, exactly once
    assert sorted(r["id"] for r in kept + rejected) == sorted(
        f"{s['id']}~numbers-{k}" for s in SEEDS for k in range(3))
    by_seed = {s["id"]: [r for r in kept if r["synthetic_from"] == s["id"]] for s in SEEDS}
    # natalia: exact golds from the equations, recomputed from the new number
    for row in by_seed["natalia"]:
        assert row["label_source"] == "equation" and row["strategy"] == "numbers"
        new = Fraction(re.search(r"to (\d+) of", row["question"]).group(1))
        assert row["question"] != NATALIA and Fraction(row["answer"]) == new * 3 / 2
    # ann: no equations, labelled by the teacher's unanimous votes
    for row in by_seed["ann"]:
        a, b = map(int, re.findall(r"\d+", row["question"]))
        assert (row["label_source"], row["answer"], row["votes"], row["margin"]) == (
            "votes", str(a + b), 4, 4)
        assert "equation_note" not in row  # no equations: nothing to explain
    # marbles: the votes never agree; leak: other numbers of an evaluation problem
    reasons = {r["synthetic_from"]: r["reason"] for r in rejected}
    assert not by_seed["marbles"] and reasons["marbles"].startswith("only 1 of 4 samples agree")
    assert not by_seed["leak"] and reasons["leak"].startswith("exact duplicate of an evaluation")
    # the agreeing samples are a traces file the filter reads, labelled with the vote
    lines = list(read_traces([out / "traces.jsonl"]))
    traces = [Trace.model_validate(json.loads(line.text)) for line in lines]
    assert len(traces) == 3 * 4 and {t.problem_id for t in traces} == {r["id"] for r in
                                                                        by_seed["ann"]}
    assert all(t.gold_answer == next(r["answer"] for r in kept if r["id"] == t.problem_id)
               for t in traces)
    assert manifest["counts"]["kept_by_label"] == {"equation": 3, "votes": 3}
    assert manifest["counts"]["rejected"] == 6 and (out / "manifest.json").exists()
    assert manifest["near_duplicate_threshold"] == 0.3


def test_nothing_kept_still_writes_empty_files_a_run_reads(tmp_path: Path) -> None:
    """Every variant a copy of an evaluation problem: problems.jsonl and traces.jsonl exist,
    empty (a run's synth_problems step hashes and joins them)."""
    from cotdistill.run.plan_synthesize import SynthProblemsConfig, run_synth_problems

    seeds = write(tmp_path / "seeds.jsonl", [SEEDS[3]])
    config = SynthesizeConfig(problems=seeds, out=tmp_path / "synth", count=2, n=2,
                              min_votes=2, prompt_template="plain",
                              decontaminate=[write(tmp_path / "eval.jsonl", EVAL)])
    manifest = run_synthesize(config, backend=FakeBackend(responder=responder))
    out = Path(config.out)
    assert manifest["counts"]["kept"] == 0 and manifest["counts"]["rejected"] == 2
    assert (out / "problems.jsonl").read_text() == (out / "traces.jsonl").read_text() == ""
    joined = SynthProblemsConfig(
        seeds=seeds, synthetic=out / "problems.jsonl", mode="join", limit=None,
        out=tmp_path / "joined", question_field=["question"], answer_field=["answer"],
        id_field="id", question_template=None, category_field=None, answer_format="auto")
    assert run_synth_problems(joined)["counts"] == {"seeds": 1, "synthetic": 0, "problems": 1}


def test_resume_after_a_kill_redoes_only_what_is_missing(config: SynthesizeConfig) -> None:
    run_synthesize(config, backend=FakeBackend(responder=responder))
    out = Path(config.out)
    whole = {r["id"]: r for r in rows(out / "problems.jsonl") + rows(out / "rejected.jsonl")}
    # a kill -9 mid-batch: the last problem line half written, its traces already there
    lines = (out / "problems.jsonl").read_text().splitlines(keepends=True)
    last = json.loads(lines[-1])
    (out / "problems.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20])
    (out / "manifest.json").unlink()
    again = FakeBackend(responder=responder)
    run_synthesize(config, backend=again)
    assert again.calls == 1  # only the lost problem is voted on again
    redone = {r["id"]: r for r in rows(out / "problems.jsonl") + rows(out / "rejected.jsonl")}
    assert redone == whole
    traces = rows(out / "traces.jsonl")
    assert sum(t["problem_id"] == last["id"] for t in traces) == (
        4 if last["label_source"] == "votes" else 0)
    assert len(traces) == len({(t["problem_id"], t["sample_index"]) for t in traces})
    # a complete folder: nothing is voted again
    idle = FakeBackend(responder=responder)
    run_synthesize(config, backend=idle)
    assert idle.calls == 0


def test_vote_all_measures_votes_against_exact_labels(config: SynthesizeConfig) -> None:
    config = config.model_copy(update={"vote_all": True, "count": 2})
    manifest = run_synthesize(config, backend=FakeBackend(responder=responder))
    exact = [r for r in rows(Path(config.out) / "problems.jsonl")
             if r["label_source"] == "equation"]
    # the fake teacher sums the numbers: 48 -> 48, never one and a half times it
    assert exact and all(r["vote_passes"] and r["vote_agrees"] is False for r in exact)
    assert manifest["counts"]["vote_precision"] == 0.0


def teacher_writes(question: str, index: int) -> str:
    if "Rewrite the following" in question:
        seed = question.split("Problem:")[1].split("New problem:")[0]
        return "Sure! New problem: " + seed.strip().replace("has", "owns") + "\nSolution: ..."
    if "similar" in question:
        return "I cannot help with that."
    return add_numbers(question, index)


def test_teacher_written_problems(config: SynthesizeConfig) -> None:
    config = config.model_copy(update={"strategy": ["rephrase", "similar"], "count": 1})
    run_synthesize(config, backend=FakeBackend(responder=teacher_writes))
    out = Path(config.out)
    kept = {r["id"]: r for r in rows(out / "problems.jsonl")}
    rejected = {r["id"]: r for r in rows(out / "rejected.jsonl")}
    assert kept["ann~rephrase-0"]["question"].startswith("Ann owns 3 pens")
    assert kept["ann~rephrase-0"]["label_source"] == "votes"
    assert rejected["ann~similar-0"]["reason"].startswith("the teacher wrote no problem")
    assert len(rows(out / "written.jsonl")) == 8
    # a rerun reuses what the teacher wrote: nothing is asked again
    idle = FakeBackend(responder=teacher_writes)
    run_synthesize(config, backend=idle)
    assert idle.calls == 0


def test_bad_input_stops_before_any_model(config: SynthesizeConfig, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="min_votes 9 is more than n 4"):
        run_synthesize(config.model_copy(update={"min_votes": 9}))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "1 + 1?"}\n{"id": "b"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2"):
        run_synthesize(config.model_copy(update={"problems": bad}))


def test_strategy_flag_takes_a_comma_list() -> None:
    assert SynthesizeConfig(strategy="numbers,backward").strategy == ["numbers", "backward"]
    assert SynthesizeConfig(strategy=["numbers,rephrase"]).strategy == ["numbers", "rephrase"]


def test_cli_dry_run_shows_problems_and_writes_nothing(
        config: SynthesizeConfig, capsys: pytest.CaptureFixture[str]) -> None:
    from cotdistill.cli import main

    status = main(["synthesize", "--problems", str(config.problems), "--out", str(config.out),
                   "--strategy", "numbers,rephrase", "--count", "2", "--decontaminate",
                   str(config.decontaminate[0]), "--dry-run"])
    printed = capsys.readouterr().out
    assert status == 0 and "natalia~numbers-0" in printed
    assert "8 problems made by numbers" in printed
    assert not Path(config.out).exists()
