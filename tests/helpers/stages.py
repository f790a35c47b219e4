"""Stage functions for `run` tests: they record their calls and write what the next stage reads,
so a whole chain plans and runs in milliseconds. Subclasses give filter, train and evaluate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cotdistill.infra.files import write_manifest
from cotdistill.run.control import run_control_data
from cotdistill.run.runner import Stages


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def read_rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RecordingStages:
    """`calls` lists (stage, out folder) in the order the run called them."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def stages(self) -> Stages:
        return Stages(self.generate, self.filter, self.student_init, self.train,
                      run_control_data, self.evaluate)

    def _done(self, stage: str, config: Any, counts: dict[str, Any] | None = None) -> None:
        self.calls.append((stage, str(config.out)))
        write_manifest(config.out, stage=stage, config=config, inputs={}, counts=counts or {},
                       started=time.time())

    def generate(self, config: Any) -> None:
        """`n` traces per selected problem; completion `<id>-<sample>`."""
        from cotdistill.generate.config import problem_fields, select_problems
        from cotdistill.problems import load_problems

        problems = select_problems(load_problems(config.problems, problem_fields(config)), config)
        write_rows(config.out / "traces.jsonl", [
            {"problem_id": p.id, "sample_index": j, "question": p.question,
             "completion": f"{p.id}-{j}", "messages": [{"role": "user", "content": p.question}]}
            for p in problems for j in range(config.n)])
        self._done("generate", config)

    def student_init(self, config: Any) -> None:
        raise AssertionError("no student is cut here")

    def filter(self, config: Any) -> None:
        raise NotImplementedError

    def train(self, config: Any) -> None:
        raise NotImplementedError

    def evaluate(self, config: Any) -> None:
        raise NotImplementedError
