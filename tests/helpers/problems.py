"""Problem files for generate tests, and reading the traces a run wrote."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_problems(path: Path, count: int = 10) -> Path:
    rows = [
        {"id": f"p{i:02d}", "question": f"Ann has {i} pens and gets {i + 1} more. How many?",
         "answer": f"#### {2 * i + 1}"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_problems(path: Path, rows: list[dict]) -> Path:
    """`rows` as a JSONL problems file at `path`."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_traces(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
