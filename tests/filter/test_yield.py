"""The yield report: solved@k, truncation and the max_tokens advice, what each problem cost,
kept traces per 1,000 teacher tokens; in the filter's report.json, report.md and yield.png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import filter_traces, run_filter
from cotdistill.filter.summary import Summary
from cotdistill.filter.yield_report import percentiles, solved_at_k, truncation, yield_line
from tests.helpers.traces import trace, write_traces


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ({}, []),
        # sample order, not file order, decides: c's right answer is its third sample
        ({"a": [(0, True)], "b": [(0, False), (1, True)], "c": [(2, True), (0, False),
                                                              (1, False)]},
         [0.3333, 0.6667, 1.0]),
        # a problem stopped early (until-correct) counts with the samples it has
        ({"a": [(0, True)], "b": [(i, False) for i in range(4)]}, [0.5, 0.5, 0.5, 0.5]),
    ],
)
def test_solved_at_k_reads_each_problems_first_success(outcomes, expected) -> None:
    assert solved_at_k(outcomes) == expected


def summaries(lengths: list[int], cut: int, limit: int = 128) -> list[Summary]:
    done = [Summary(problem_id="p", num_tokens=n, finish_reason="stop", max_tokens=limit)
            for n in lengths]
    return done + [Summary(problem_id="p", num_tokens=limit, finish_reason="length",
                           max_tokens=limit)] * cut


@pytest.mark.parametrize(
    ("lengths", "cut", "suggested", "advice"),
    [
        # 100 finished, 1..100 tokens: 1 may be cut (< 2 of 100): 99 cuts the 100-token one
        (list(range(1, 101)), 0, 99, "max_tokens 99 would cut 1.0% of samples (< 2 %)"),
        # 1 already cut of 100: none more may go, so the longest finished one sets it
        (list(range(1, 100)), 1, 99, "max_tokens 99 would cut 1.0% of samples"),
        # 3 cut of 100: no limit at or below 128 can do; the line says to raise it
        (list(range(1, 98)), 3, None, "3.0% of samples hit max_tokens 128: no max_tokens"),
    ],
)
def test_the_max_tokens_advice_cuts_under_two_percent(lengths, cut, suggested, advice) -> None:
    t = truncation(summaries(lengths, cut))
    assert t["suggested_max_tokens"] == suggested
    assert t["advice"].startswith(advice)
    assert t["truncated"] == cut and t["samples"] == len(lengths) + cut
    assert t["finished_tokens"] == percentiles(lengths)
    assert sum(t["histogram"]["counts"]) == len(lengths)


def test_percentiles_by_nearest_rank() -> None:
    q = percentiles(list(range(1, 101)))
    assert (q["p50"], q["p90"], q["p98"], q["max"], q["mean"]) == (50, 90, 98, 100, 50.5)
    assert percentiles([]) is None


def three_problems() -> list:
    right = "So 5. The answer is \\boxed{5}."
    return [
        trace("p1", 0, "I get \\boxed{4}.", tokens=10),
        trace("p1", 1, right, tokens=20),
        trace("p2", 0, right, tokens=30),
        trace("p3", 0, "Let me think and think", tokens=64, finish="length"),
        trace("p3", 1, "Still thinking and", tokens=64, finish="length"),
    ]


def test_the_filter_report_carries_its_yield() -> None:
    kept, _, report = filter_traces(three_problems(), FilterConfig(require_correct=True))
    y = report["yield"]
    assert len(kept) == y["kept"] == 2
    assert y["samples"] == 5 and y["teacher_tokens"] == 188
    assert y["kept_per_1k_tokens"] == round(2000 / 188, 4)
    assert y["kept_per_sample"] == 0.4
    assert y["solved_at_k"] == [0.3333, 0.6667]  # p2 at k=1, p1 at k=2, p3 never
    assert y["kept_at_k"] == [0.3333, 0.6667]
    assert y["per_problem"] == {"p1": {"samples": 2, "tokens": 30, "kept": 1},
                                "p2": {"samples": 1, "tokens": 30, "kept": 1},
                                "p3": {"samples": 2, "tokens": 128, "kept": 0}}
    assert y["cost"]["without"] == {"problems": 1, "samples": 2, "tokens": 128}
    assert y["truncation"]["share"] == 0.4 and y["truncation"]["max_tokens"] == [64]
    assert yield_line(y).startswith("2 kept of 5 samples, 10.64 per 1,000 teacher tokens")


def test_run_filter_writes_the_yield_section_and_its_plot(tmp_path: Path) -> None:
    write_traces(tmp_path / "traces.jsonl", three_problems())
    run_filter(FilterConfig(traces=[tmp_path / "traces.jsonl"], out=tmp_path / "out"))
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["yield"]["plot"] == "yield.png"
    assert (out / "yield.png").stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "## Yield" in md and "![yield](yield.png)" in md
    assert "40.0% of samples hit max_tokens 64: no max_tokens at or below it" in md
    assert "| 2 | 0.6667 | 0.6667 |" in md


def test_a_truncated_trace_that_ends_on_the_right_number_does_not_solve() -> None:
    traces = [trace("p1", 0, "so far 5", finish="length"), trace("p1", 1, "so \\boxed{5}")]
    _, _, report = filter_traces(traces, FilterConfig(drop_truncated=False))
    assert report["yield"]["solved_at_k"] == [0.0, 1.0]
    assert report["yield"]["correct_with_gold"] == 1


def test_traces_that_do_not_say_how_they_ended_get_no_advice() -> None:
    t = truncation([Summary(problem_id="p", num_tokens=10)])
    assert t["share"] is None and t["suggested_max_tokens"] is None
    assert t["advice"].startswith("no trace says how it ended")
