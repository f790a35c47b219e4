"""The filter stage: one test per check (each fails if the check is removed), the exactly-once
partition of inputs into kept and rejected, bad input, the CLI and the report files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cotdistill.cli import main as cli_main
from cotdistill.errors import InputError
from cotdistill.filter.config import FilterConfig
from cotdistill.filter.contamination import Contamination, similarity, text_sketch
from cotdistill.filter.stage import filter_traces, run_filter
from cotdistill.records import Trace
from cotdistill.textstats import repeat_share
from tests.helpers.traces import reasons_of, trace, write_traces

LONG_Q = (
    "Mia has 13 marbles and gets 7 more from her friend at the park today. "
    "How many marbles does Mia have now?"
)


# One case per check: (traces, config that enables the check, config that disables it, reason).
CHECK_CASES = {
    "truncated": (
        [trace(completion="Adding 2 and 3 gives 5 and then", finish="length")],
        {"drop_truncated": True}, {"drop_truncated": False},
    ),
    "no_answer": (
        [trace(completion="I am not sure how to solve this one.", gold="5")],
        {"require_answer": True, "require_correct": False},
        {"require_answer": False, "require_correct": False},
    ),
    "too_short": (
        [trace(tokens=3)], {"min_tokens": 4}, {"min_tokens": 0},
    ),
    "too_long": (
        [trace(tokens=300)], {"max_tokens": 200}, {"max_tokens": None},
    ),
    "repetition": (
        [trace(completion="so we add one more " * 20 + "\\boxed{5}")],
        {"max_repeat_ngram_share": 0.5}, {"max_repeat_ngram_share": None},
    ),
    "wrong": (
        [trace(completion="The answer is \\boxed{6}.", gold="5")],
        {"require_correct": True}, {"require_correct": False},
    ),
    "unverifiable": (
        [trace(completion="The answer is \\boxed{)(}.", gold="5")],
        {"require_correct": True}, {"require_correct": False},
    ),
    "no_label": (
        [trace(gold=None)], {"require_correct": True}, {"require_correct": False},
    ),
    "low_mean_logprob": (
        [trace(logprobs=[-2.0, -2.5])], {"min_mean_logprob": -1.0}, {},
    ),
    "low_token_logprob": (
        [trace(logprobs=[-0.1, -0.1, -6.0])], {"min_token_logprob": -5.0}, {},
    ),
    "low_agreement": (
        [trace(index=0, completion="so \\boxed{5}"), trace(index=1, completion="hmm \\boxed{6}"),
         trace(index=2, completion="or \\boxed{7}")],
        {"min_agreement": 0.5, "require_correct": False},
        {"min_agreement": 0.0, "require_correct": False},
    ),
}


@pytest.mark.parametrize("reason", sorted(CHECK_CASES))
def test_each_check_rejects_with_its_reason(reason: str) -> None:
    traces, enabled, disabled = CHECK_CASES[reason]
    on = reasons_of(traces, **enabled)
    off = reasons_of(traces, **disabled)
    first = (traces[0].problem_id, traces[0].sample_index)
    assert reason in on[first]
    assert reason not in off[first]


def test_decontamination_drops_leaked_questions() -> None:
    leaked = trace("p1", question=LONG_Q)
    clean = trace("p2", question="Tom has 3 coins and buys 2 more. How many coins now?")
    evals = ("Mia has 13 marbles and gets 7 more from her friend at the park today. "
             "How many are there?",)
    got = reasons_of([leaked, clean], evals, decontaminate_ngram=13)
    assert got[("p1", 0)] == ["contaminated"]
    assert got[("p2", 0)] == []
    assert reasons_of([leaked, clean])[("p1", 0)] == []  # no evaluation set, nothing dropped


def test_short_evaluation_questions_must_appear_whole() -> None:
    index = Contamination(["What is two plus two?"], n=13)
    assert index("Quick one: what is two plus two? Show work.")
    assert not index("What is two plus three?")


def test_verify_timeout_is_recorded_and_the_run_finishes() -> None:
    hung = trace("p1", completion="\\boxed{5}", gold="2^{2^{2^{2^{2^{100}}}}}")
    fine = trace("p2", completion="\\boxed{0.5}", gold="\\frac{1}{2}")
    kept, rejected, report = filter_traces([hung, fine], FilterConfig(verify_timeout_s=1.0))
    assert [r["problem_id"] for r in kept] == ["p2"]
    assert rejected[0]["reasons"] == ["verify_timeout"]
    assert rejected[0]["correct"] is None
    assert report["verification"]["timeouts"] == 1


def test_majority_answer_stands_in_for_missing_gold() -> None:
    traces = [
        trace("p1", 0, "first 2 plus 3 \\boxed{5}", gold=None),
        trace("p1", 1, "then 3 plus 2 gives \\boxed{5}", gold=None),
        trace("p1", 2, "I guess \\boxed{6}", gold=None),
    ]
    kept, rejected, _ = filter_traces(traces, FilterConfig(dedup="off"))
    assert sorted(r["sample_index"] for r in kept) == [0, 1]
    assert rejected[0]["reasons"] == ["wrong"] and rejected[0]["label"] == "majority"
    assert kept[0]["agreement"] == pytest.approx(2 / 3)
    no_majority = reasons_of(traces, use_majority_when_no_gold=False, dedup="off")
    assert all(r == ["no_label"] for r in no_majority.values())


def test_agreement_groups_answers_equal_to_gold() -> None:
    traces = [trace("p1", 0, "half: \\boxed{0.5}", gold="\\frac{1}{2}"),
              trace("p1", 1, "so \\boxed{\\frac{1}{2}}", gold="\\frac{1}{2}"),
              trace("p1", 2, "so \\boxed{2}", gold="\\frac{1}{2}")]
    kept, rejected, _ = filter_traces(traces, FilterConfig(min_agreement=0.6))
    assert [r["agreement"] for r in kept + rejected] == [pytest.approx(2 / 3)] * 3
    assert len(kept) == 2


def test_majority_needs_agreement() -> None:
    traces = [trace("p1", i, f"try {i} \\boxed{{{i}}}", gold=None) for i in range(3)]
    assert all(r == ["no_label"] for r in reasons_of(traces, dedup="off").values())


def test_exact_and_near_duplicates_collapse_to_one() -> None:
    body = " ".join(f"w{i}" for i in range(300))
    traces = [
        trace("p1", 0, body + " so \\boxed{5}"),
        trace("p1", 1, body + "  so \\boxed{5}"),  # identical after whitespace
        trace("p1", 2, body.replace("w30 ", "x30 ") + " so \\boxed{5}"),  # near
        trace("p1", 3, "A different argument: 2 plus 3 makes \\boxed{5}"),
        trace("p2", 0, body + " so \\boxed{5}"),  # same text, other problem: kept
    ]
    near = reasons_of(traces, dedup="near", selection_order=["input_order"])
    assert near == {("p1", 0): [], ("p1", 1): ["duplicate"], ("p1", 2): ["duplicate"],
                    ("p1", 3): [], ("p2", 0): []}
    exact = reasons_of(traces, dedup="exact", selection_order=["input_order"])
    assert exact[("p1", 1)] == ["duplicate"] and exact[("p1", 2)] == []
    assert all(r == [] for r in reasons_of(traces, dedup="off").values())


def test_sketch_similarity() -> None:
    a = " ".join(f"word{i}" for i in range(200))
    b = a.replace("word100", "other")
    assert similarity(text_sketch(a), text_sketch(a)) == 1.0
    assert similarity(text_sketch(a), text_sketch(b)) > 0.8
    assert similarity(text_sketch(a), text_sketch("nothing in common here at all")) == 0.0
    assert repeat_share("a b c a b c a b c", 3) == pytest.approx(4 / 7)


def test_selection_keeps_the_most_confident_then_shortest() -> None:
    traces = [
        trace("p1", 0, "a long and winding path of reasoning leads to \\boxed{5}", logprobs=[-0.5]),
        trace("p1", 1, "confident: \\boxed{5}", logprobs=[-0.1]),
        trace("p1", 2, "also confident, longer: so \\boxed{5}", logprobs=[-0.1]),
    ]
    got = reasons_of(traces, max_per_problem=1, selection_order=["mean_logprob", "shortest"])
    assert got == {("p1", 0): ["over_limit"], ("p1", 1): [], ("p1", 2): ["over_limit"]}
    longest = reasons_of(traces, max_per_problem=1, selection_order=["longest"])
    assert longest[("p1", 0)] == []
    assert all(r == [] for r in reasons_of(traces).values())  # no limit by default


def test_all_failing_reasons_recorded_and_funnel_counts_first() -> None:
    bad = trace("p1", completion="zzz " * 40 + "\\boxed{6}", finish="length", gold="5")
    kept, rejected, report = filter_traces([bad, trace("p2")], FilterConfig())
    assert rejected[0]["reasons"] == ["truncated", "repetition", "wrong"]
    steps = {s["check"]: s for s in report["funnel"]["steps"]}
    assert steps["truncated"]["rejected"] == 1 and steps["wrong"]["rejected"] == 0
    assert report["funnel"]["reasons_any"] == {"truncated": 1, "repetition": 1, "wrong": 1}
    assert steps["over_limit"]["out"] == report["funnel"]["kept"] == 1


def test_output_row_fields() -> None:
    kept, _, _ = filter_traces([trace(logprobs=[-0.5, -1.0])], FilterConfig())
    row = kept[0]
    assert row["predicted_answer"] == "5" and row["correct"] is True
    assert row["mean_logprob"] == pytest.approx(-0.75)
    assert row["min_prob"] == pytest.approx(0.36788, rel=1e-4)
    assert row["agreement"] is None  # one sample only
    assert row["reasons"] == []


def test_confidence_threshold_without_logprobs_is_an_error() -> None:
    with pytest.raises(InputError, match="no token logprobs"):
        filter_traces([trace(logprobs=[])], FilterConfig(min_mean_logprob=-1.0))
    filter_traces([trace(logprobs=[])], FilterConfig())  # fine without a threshold


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def mixed_traces() -> tuple[list[Trace], list[Trace]]:
    shard_a = [
        trace("p1", 0, "2 plus 3 is \\boxed{5}"),
        trace("p1", 1, "2 plus 3 is \\boxed{5}"),  # duplicate
        trace("p1", 2, "it is \\boxed{4}"),  # wrong
        trace("p2", 0, "half is \\boxed{0.5}", gold="\\frac{1}{2}"),
        trace("p3", 0, "loop loop", finish="length", gold="9"),
    ]
    shard_b = [
        trace("p4", 0, "so \\boxed{7}", gold="7", teacher="teacher-b"),
        trace("p5", 0, "so \\boxed{8}", gold=None, teacher="teacher-b", question=LONG_Q),
    ]
    return shard_a, shard_b


def test_run_filter_partitions_every_trace_exactly_once(tmp_path: Path) -> None:
    shard_a, shard_b = mixed_traces()
    a = write_traces(tmp_path / "a.jsonl", shard_a)
    b = write_traces(tmp_path / "b.jsonl", shard_b)
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"id": "e1", "question": LONG_Q, "answer": "20"}) + "\n")
    out = tmp_path / "out"
    manifest = run_filter(FilterConfig(traces=[a, b], out=out, decontaminate=[evals]))

    kept, rejected = read(out / "kept.jsonl"), read(out / "rejected.jsonl")
    ids = [(r["teacher"], r["problem_id"], r["sample_index"]) for r in kept + rejected]
    expected = [(t.teacher, t.problem_id, t.sample_index) for t in shard_a + shard_b]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    assert {(r["problem_id"], r["sample_index"]) for r in kept} == {
        ("p1", 0), ("p2", 0), ("p4", 0)}
    why = {(r["problem_id"], r["sample_index"]): r["reasons"] for r in rejected}
    assert why == {("p1", 1): ["duplicate"], ("p1", 2): ["wrong"],
                   ("p3", 0): ["truncated", "no_answer"], ("p5", 0): ["contaminated", "no_label"]}

    sft = read(out / "sft.jsonl")
    assert len(sft) == 3
    assert sft[0]["messages"][-1] == {"role": "assistant", "content": "2 plus 3 is \\boxed{5}"}
    assert sft[0]["messages"][0]["role"] == "user"
    assert {r["teacher"] for r in sft} == {"teacher-a", "teacher-b"}
    # sample_index: with problem_id, the key of the teacher's stored top-k rows (topk.py).
    assert set(sft[0]) == {"messages", "problem_id", "sample_index", "teacher"}
    assert {(r["problem_id"], r["sample_index"]) for r in sft} == {
        (r["problem_id"], r["sample_index"]) for r in kept}

    report = json.loads((out / "report.json").read_text())
    assert report["coverage"] == {"problems_with_kept_trace": 3, "share": 0.6}
    assert report["teacher_accuracy"]["teacher-a"]["correct"] == 3
    assert report["teacher_accuracy"]["teacher-a"]["wrong"] == 1
    assert report["confidence"]["correct"]["mean_logprob"]["count"] == 4
    assert (out / "confidence.png").stat().st_size > 1000
    assert "| wrong |" in (out / "report.md").read_text()
    assert manifest["counts"]["kept"] == 3 and (out / "manifest.json").exists()


def test_malformed_line_stops_with_file_and_line(tmp_path: Path) -> None:
    path = write_traces(tmp_path / "t.jsonl", [trace("p1"), trace("p2")], {1: '{"problem_id": 3'})
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        run_filter(FilterConfig(traces=[path], out=out))
    assert info.value.file == str(path) and info.value.line == 2
    assert not out.exists()


def test_skip_invalid_puts_the_line_in_rejected(tmp_path: Path) -> None:
    bad = json.dumps({"problem_id": "p9", "completion": "no other fields"})
    path = write_traces(tmp_path / "t.jsonl", [trace("p1"), trace("p2")], {1: bad})
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[path], out=out, skip_invalid=True))
    rejected = read(out / "rejected.jsonl")
    assert len(rejected) == 1 and rejected[0]["reasons"] == ["invalid_record"]
    assert rejected[0]["source"] == f"{path}:2" and "field" in rejected[0]["error"]
    assert len(read(out / "kept.jsonl")) == 2


def test_dry_run_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_traces(tmp_path / "t.jsonl", [trace("p1"), trace("p2", completion="\\boxed{1}")])
    out = tmp_path / "out"
    result = run_filter(FilterConfig(traces=[path], out=out, dry_run=True))
    assert not out.exists()
    assert result["funnel"]["kept"] == 1
    assert "| wrong | 2 | 1 | 1 |" in capsys.readouterr().out


def test_cli_flags_and_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_traces(tmp_path / "t.jsonl", [trace("p1", logprobs=[-3.0]), trace("p2")])
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("filter:\n  min_mean_logprob: -1.0\n  selection_order: [shortest]\n")
    out = tmp_path / "out"
    assert cli_main(["filter", "--traces", str(path), "--out", str(out),
                     "--config", str(cfg)]) == 0
    assert [r["problem_id"] for r in read(out / "kept.jsonl")] == ["p2"]
    # A threshold on traces without logprobs: one clear line, exit status 2.
    bare = write_traces(tmp_path / "bare.jsonl", [trace("p1", logprobs=[])])
    assert cli_main(["filter", "--traces", str(bare), "--out", str(out),
                     "--min-token-logprob", "-2"]) == 2
    assert f"{bare}:1, field 'min_logprob': min_token_logprob is set" in capsys.readouterr().err


def test_filters_what_generate_writes(tmp_path: Path) -> None:
    from cotdistill.backends.fake import FakeBackend
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate

    def responder(question: str, index: int) -> str:
        total = sum(int(x) for x in re.findall(r"\d+", question))
        return f"Adding gives {total + index}.\nThe answer is \\boxed{{{total + index}}}."

    gen = tmp_path / "gen"
    run_generate(
        GenerateConfig(problems=Path("data/word_problems/train.jsonl"), out=gen, n=2, limit=5),
        backend=FakeBackend(responder=responder),
    )
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[gen / "traces.jsonl"], out=out))
    kept, rejected = read(out / "kept.jsonl"), read(out / "rejected.jsonl")
    # Sample 0 answers the sum (correct), sample 1 is off by one (wrong).
    assert [r["sample_index"] for r in kept] == [0] * 5
    assert {tuple(r["reasons"]) for r in rejected} == {("wrong",)}
    assert all(r["agreement"] == 0.5 for r in kept + rejected)
    assert len(read(out / "sft.jsonl")) == 5
