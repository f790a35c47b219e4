"""Benchmark reading traces files: what `traces_in` costs over the plain read it replaced.

    .venv/bin/python bench/bench_traces_in.py [--traces 40000]

The filter reads its inputs twice. Before `traces_in`, pass 1 was `json.loads` plus
`Trace.model_validate` per line and pass 2 only split the file into lines. Now pass 1 also
checks field-given ids against their questions (a hash per line) and counts missing fields, and
pass 2 parses each line's JSON to tell cotdistill's own traces from other tools'. Measured on
the filter benchmark's synthetic traces (cotdistill's own shape), and on the same traces as
another tool would publish them (one record per problem with a `generations` list, no logprobs).

Writes bench/results/traces_in.md and bench/results/traces_in.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_filter import write_traces  # noqa: E402

from cotdistill.infra.files import parse_line  # noqa: E402
from cotdistill.records import Trace  # noqa: E402
from cotdistill.traces import ReadStats, TraceFields, read_traces  # noqa: E402


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def plain_pass1(path: Path) -> None:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                parse_line(line, Trace, path, lineno)


def plain_pass2(path: Path) -> None:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                pass


def new_pass(path: Path, validate: bool) -> None:
    stats = ReadStats() if validate else None
    for _ in read_traces([path], TraceFields(), validate=validate, stats=stats):
        pass


def as_foreign(path: Path, target: Path) -> int:
    """The same traces grouped as one published record per problem: problem, answer, list."""
    groups: dict[str, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            group = groups.setdefault(row["problem_id"], {
                "problem": row["question"], "answer": row["gold_answer"], "generations": []})
            group["generations"].append(row["completion"])
    with open(target, "w", encoding="utf-8") as fh:
        for group in groups.values():
            fh.write(json.dumps(group) + "\n")
    return len(groups)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=40_000)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        own = Path(tmp) / "own.jsonl"
        write_traces(own, args.traces)
        foreign = Path(tmp) / "foreign.jsonl"
        records = as_foreign(own, foreign)
        rows = {
            "own, pass 1: before (json + validate)": timed(lambda: plain_pass1(own)),
            "own, pass 1: traces_in": timed(lambda: new_pass(own, True)),
            "own, pass 2: before (lines only)": timed(lambda: plain_pass2(own)),
            "own, pass 2: traces_in": timed(lambda: new_pass(own, False)),
            "generations list, pass 1: traces_in": timed(lambda: new_pass(foreign, True)),
            "generations list, pass 2: traces_in": timed(lambda: new_pass(foreign, False)),
        }
        size_mb = own.stat().st_size / 1e6
    result = {
        "traces": args.traces, "foreign_records": records, "file_mb": round(size_mb, 1),
        "seconds": {k: round(v, 3) for k, v in rows.items()},
        "traces_per_s": {k: round(args.traces / v) for k, v in rows.items()},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_1min_start": round(load, 2),
                    "load_1min_end": round(os.getloadavg()[0], 2)},
    }
    out = ROOT / "bench" / "results"
    (out / "traces_in.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Reading traces: traces_in against the plain read it replaced",
        "",
        f"Command: `.venv/bin/python bench/bench_traces_in.py --traces {args.traces}`",
        f"Machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}; 1-minute load average {result['machine']['load_1min_start']}"
        f" at the start, {result['machine']['load_1min_end']} at the end (a shared CPU: compare "
        "ratios, not absolute rates).",
        "",
        f"{args.traces} synthetic traces ({size_mb:.1f} MB, the filter benchmark's), and the same "
        f"as {records} records with a `generations` list.",
        "",
        "| read | seconds | traces/s |",
        "|---|---:|---:|",
        *(f"| {k} | {v:.3f} | {args.traces / v:,.0f} |" for k, v in rows.items()),
        "",
    ]
    (out / "traces_in.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
