"""SFT records for training tests."""

from __future__ import annotations

import json
from pathlib import Path


def sft_record(i: int, teacher: str = "t1") -> dict:
    a, b = i % 7 + 1, i % 5 + 2
    return {
        "messages": [
            {"role": "system", "content": "Solve the problem."},
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant",
             "content": f"{a} + {b} = {a + b}. The answer is \\boxed{{{a + b}}}."},
        ],
        "problem_id": f"p{i}",
        "teacher": teacher,
    }


def write_sft(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
