"""Resuming generate: which samples a traces file already holds, and whether it belongs to this
run.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.infra.files import dump_line
from cotdistill.prompts import PromptTemplate
from cotdistill.records import Problem, Sampling


def resume_key(teacher: str, template: PromptTemplate, sampling: Sampling) -> dict[str, Any]:
    """What every trace in one traces.jsonl must share for a rerun to add to it."""
    return {
        "teacher": teacher,
        "prompt_hash": template.hash,
        "sampling": sampling.model_dump(mode="json"),
    }


def drop_duplicate_samples(by_problem: dict[str, list[dict[str, Any]]], path: Path) -> int:
    """Keep the first line of each (problem, sample) pair, in place; returns how many went.

    Two runs that once wrote to the same folder (before it was locked) left each sample
    twice; the first written is kept, as a resume that regenerated nothing would have.
    """
    dropped = 0
    for pid, rows in by_problem.items():
        seen: set[Any] = set()
        unique = []
        for row in rows:
            if row.get("sample_index") in seen:
                dropped += 1
                continue
            seen.add(row.get("sample_index"))
            unique.append(row)
        by_problem[pid] = unique
    if dropped:
        print(f"generate: dropped {dropped} duplicate (problem, sample) lines from {path}, "
              "keeping the first of each")
    return dropped


def recover_traces(
    path: Path,
    n: int,
    expected: dict[str, Any] | None = None,
    problems: Mapping[str, Problem] | None = None,
    adaptive: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Complete problems already in `path`, repairing the file after a crash.

    A kill can leave a partial last line or a problem with fewer than n samples; both are cut
    away (the file is rewritten atomically) so the rerun regenerates them exactly once.
    With `expected` (see `resume_key`), every whole line is checked first and a mismatch is
    refused before the file is touched: a rerun with, say, another n must not cut away
    traces that were complete under the old settings. With `problems` (the problems this run
    selected, by id), a trace whose question or gold answer differs from its problem's now
    (an edited problems file, another answer_format) is refused the same way: old and new
    gold answers must not mix in one dataset, and a trace of a problem the run no longer
    selects is refused too.

    `adaptive` (`--until-correct`): a problem's samples are any run 0..m-1 (its waves so far,
    a wave cut by a kill included: those samples were paid for), so every problem keeps its
    longest such run and the rerun samples on from m. Without it, a problem holding more than
    n samples (made by `--until-correct`) is refused: cutting it to n would throw them away.
    """
    if not path.exists():
        return {}
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    # The last element is b"" when the file ends in a newline, else a partial line.
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    damaged = lines[-1] != b""
    for lineno, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            damaged = True
            continue
        if not isinstance(data, dict) or "problem_id" not in data:
            raise InputError("not a trace line", file=path, line=lineno, field="problem_id")
        if expected is not None:
            _check_resumable_row(data, expected, path, lineno)
        if problems is not None:
            if data["problem_id"] not in problems:
                # Kept, it would stay in the dataset beside the new selection (a validation
                # or a dropped problem's traces going on to training).
                raise InputError(
                    f"a trace of problem {data['problem_id']!r}, which this run does not select "
                    "(the problems file, --limit or --shard changed); generate into a new --out "
                    "(in `cotdistill run`: --fresh generate)", file=path, line=lineno,
                    field="problem_id")
            _check_same_problem(data, problems[data["problem_id"]], path, lineno)
        by_problem[data["problem_id"]].append(data)
    if drop_duplicate_samples(by_problem, path):
        damaged = True  # rewrite the file without them
    if adaptive:
        complete = {pid: kept for pid, rows in by_problem.items()
                    if (kept := _leading_run(rows))}
        if sum(map(len, complete.values())) != sum(map(len, by_problem.values())):
            damaged = True
    else:
        _refuse_adaptive(by_problem, n, path)
        complete = {
            pid: sorted(rows, key=lambda r: r["sample_index"])
            for pid, rows in by_problem.items()
            if sorted(r["sample_index"] for r in rows) == list(range(n))
        }
    if damaged or len(complete) != len(by_problem):
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            for rows in complete.values():
                fh.writelines(dump_line(r) for r in rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return complete


def _leading_run(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The samples 0, 1, ..., m-1 of one problem, up to the first missing index."""
    by_index = {r["sample_index"]: r for r in rows}
    run = []
    while len(run) in by_index:
        run.append(by_index[len(run)])
    return run


def _refuse_adaptive(by_problem: dict[str, list[dict[str, Any]]], n: int, path: Path) -> None:
    for pid, rows in by_problem.items():
        if any(r["sample_index"] >= n for r in rows):
            raise InputError(
                f"problem {pid!r} has {len(rows)} samples, more than n={n}: these traces were "
                "made with --until-correct; rerun with --until-correct K --max-samples M, or "
                f"{_START_OVER}", file=path, field="sample_index")


def _check_resumable_row(
    row: dict[str, Any], expected: dict[str, Any], path: Path, line: int | None
) -> None:
    for key, value in expected.items():
        if row.get(key) != value:
            raise InputError(
                f"existing traces were made with a different {key} "
                f"({row.get(key)!r} != {value!r}); {_START_OVER}",
                file=path,
                line=line,
                field=key,
            )


# How to apply changed settings to a folder that holds traces made with the old ones.
_START_OVER = ("use another --out, or under `cotdistill run` add `--fresh generate` (the old "
               "folder is moved aside)")


def _check_same_problem(row: dict[str, Any], problem: Problem, path: Path, line: int) -> None:
    for key, now in (("question", problem.question), ("gold_answer", problem.gold_answer)):
        if row.get(key) != now:
            raise InputError(
                f"problem {problem.id!r} changed since its traces were made: {key} "
                f"{_short(row.get(key))} then, {_short(now)} now (from {problem.source}; an "
                f"edited problems file or another answer_format); {_START_OVER}",
                file=path, line=line, field=key,
            )


def _short(value: Any, width: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"
