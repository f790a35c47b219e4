"""The run's report shows one yield row per filter stage (refinement rounds' filters too),
read from each filter's report.json."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import run_filter
from cotdistill.run.report import yield_lines
from tests.helpers.traces import trace, write_traces


def filtered(folder: Path, traces: list) -> Path:
    folder.mkdir(parents=True)
    write_traces(folder / "traces.jsonl", traces)
    run_filter(FilterConfig(traces=[folder / "traces.jsonl"], out=folder / "out"))
    return folder / "out"


def test_one_yield_row_per_filter_stage(tmp_path: Path) -> None:
    right, wrong = "so \\boxed{5}", "so \\boxed{4}"
    first = filtered(tmp_path / "a", [trace("p1", 0, wrong, tokens=40),
                                      trace("p1", 1, right, tokens=10),
                                      trace("p2", 0, "and", tokens=64, finish="length")])
    second = filtered(tmp_path / "b", [trace("p1", 0, right, tokens=20)])
    steps = [SimpleNamespace(name="generate", kind="generate", out=tmp_path / "gen"),
             SimpleNamespace(name="filter", kind="filter", out=first),
             SimpleNamespace(name="round 1: filter", kind="refine_filter", out=second),
             SimpleNamespace(name="round 2: filter", kind="refine_filter", out=tmp_path / "x")]
    lines = yield_lines(SimpleNamespace(steps=steps))  # type: ignore[arg-type]
    rows = [line for line in lines if line.startswith("| ") and "filter |" in line]
    assert rows == [
        "| filter | 3 | 114 | 1 | 8.77 | 0.333 | 0.00 | 0.50 (2) | 0.333 | > 64 |",
        "| round 1: filter | 1 | 20 | 1 | 50.00 | 1.000 | 1.00 | 1.00 (1) | 0.000 | 20 |",
    ]
    assert lines[0] == "## Yield"


def test_no_filter_report_no_yield_section(tmp_path: Path) -> None:
    steps = [SimpleNamespace(name="filter", kind="filter", out=tmp_path)]
    assert yield_lines(SimpleNamespace(steps=steps)) == []  # type: ignore[arg-type]
