"""The problems every self-training round samples: those of the run's generate that have a
gold answer (a round keeps only traces it can verify), written once in the one format the
run's problem files use (`refine.stages.problem_row`), so each round's generate reads them
with `normalized_fields`.

    run_rounds_problems(RoundsProblemsConfig(problems=..., out=..., **generate's problem keys))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import Field

from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_file, write_jsonl, write_manifest
from cotdistill.problems import ProblemFields, load_problems
from cotdistill.run.config import ProblemFileKeys
from cotdistill.run.refine.stages import problem_row

PROBLEMS = "problems.jsonl"


class RoundsProblemsConfig(ProblemFileKeys):
    problems: Path = Field(description="The problems the run's generate samples (after any "
                           "validation split; seeds and synthetic problems with synthesize).")
    out: Path = Field(description="Folder for problems.jsonl.")
    limit: int | None = Field(description="Only the first K problems (generate's limit).")


def run_rounds_problems(config: RoundsProblemsConfig) -> dict[str, Any]:
    """Write problems.jsonl: the problems with a gold answer, in the file's order."""
    started = time.time()
    problems = load_problems(config.problems, ProblemFields.of(config))[: config.limit]
    gold = [p for p in problems if p.gold_answer is not None]
    if not gold:
        raise InputError("self-training rounds sample problems with a gold answer (their "
                         "traces are verified against it); none of these has one",
                         file=config.problems, field="rounds")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / PROBLEMS, (problem_row(p) for p in gold))
    return write_manifest(
        out, stage="rounds_problems", config=config,
        inputs={str(config.problems): sha256_file(Path(config.problems))},
        counts={"problems": len(problems), "with_gold": len(gold)}, started=started,
        extra={"summary": f"{len(gold)} of {len(problems)} training problems have a gold "
                          "answer: every round samples them"},
    )
