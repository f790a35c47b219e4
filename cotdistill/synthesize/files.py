"""synthesize's files: the seeds with their equations, and what an earlier run already wrote.

Seeds are read by `problems.load_problems` (every format generate reads, the same checks), and
their rows once more for the fields the Problem record does not keep: the solution's GSM8K
`<<...>>` annotations and `equation` fields. Only JSONL, JSON and CSV rows are read again;
seeds of other formats are labelled by votes.

Resume: problems.jsonl, rejected.jsonl and written.jsonl are appended line by line (fsync'ed);
a kill -9 leaves at most one partial last line, which `recover` cuts away. traces.jsonl is
written before the rows of its batch, so traces of problems with no row yet are cut too.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.infra.files import dump_line
from cotdistill.problems import ProblemFields, load_problems
from cotdistill.synthesize.config import SynthesizeConfig
from cotdistill.synthesize.equations import seed_equations
from cotdistill.synthesize.variants import Seed


def _raw_rows(path: Path) -> list[dict[str, Any]] | None:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        return data["data"] if isinstance(data, dict) else data
    if suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return list(csv.DictReader(fh))
    return None


def read_seeds(config: SynthesizeConfig) -> list[Seed]:
    path = Path(config.problems)  # type: ignore[arg-type]
    fields = ProblemFields.of(config)
    problems = load_problems(path, fields)  # every bad row is named here, with its line
    rows = _raw_rows(path) or [{} for _ in problems]
    seeds = [Seed(p.id, p.question, p.gold_answer, seed_equations(row, fields.answer))
             for p, row in zip(problems, rows, strict=True)]
    return seeds[: config.limit] if config.limit else seeds


def evaluation_questions(paths: list[Path]) -> list[str]:
    return [p.question for path in paths for p in load_problems(Path(path))]


def _whole_lines(path: Path, keep: set[str] | None = None) -> list[dict[str, Any]]:
    """The whole JSON lines of `path`; the file is rewritten without a partial last line
    (and, with `keep`, without lines of other ids)."""
    if not path.exists():
        return []
    raw = path.read_bytes().split(b"\n")
    rows, damaged = [], raw[-1] != b""
    for lineno, line in enumerate(raw[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            damaged = True  # only a killed write leaves one; it is redone
            continue
        key = "problem_id" if isinstance(row, dict) and "problem_id" in row else "id"
        if not isinstance(row, dict) or key not in row:
            raise InputError("not a synthesize line (no id)", file=path, line=lineno, field="id")
        if keep is not None and row[key] not in keep:
            damaged = True
            continue
        rows.append(row)
    if damaged:
        tmp = path.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(dump_line(r) for r in rows)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    return rows


def recover(out: Path, names: tuple[str, str, str, str]) -> tuple[
        dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(kept rows, rejected rows, written problems) by id, the files repaired."""
    problems, rejected, traces, written = (out / name for name in names)
    kept = {r["id"]: r for r in _whole_lines(problems)}
    set_aside = {r["id"]: r for r in _whole_lines(rejected)}
    _whole_lines(traces, keep=set(kept))
    return kept, set_aside, {r["id"]: r for r in _whole_lines(written)}
