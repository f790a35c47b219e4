"""The unfiltered control: as many traces as the filter kept, drawn without selection."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from cotdistill.config import StrictModel
from cotdistill.errors import InputError
from cotdistill.infra.files import (
    dump_line,
    parse_json_object,
    sha256_file,
    write_manifest,
)

# --- the control student's data: as many traces as were kept, drawn without selection ----------


class ControlDataConfig(StrictModel):
    kept: Path = Field(description="The filter's kept.jsonl.")
    rejected: Path = Field(description="The filter's rejected.jsonl.")
    like: Path = Field(description="The filter's sft.jsonl: the control gets as many rows.")
    out: Path = Field(description="Output folder for the control's sft.jsonl.")
    seed: int = Field(0, description="Seed of the random draw.")


# Rejections that are not a judgement of quality: these traces never enter the control pool.
NOT_A_SELECTION = ("contaminated", "invalid_record")


def draw_unfiltered(rows: list[dict[str, Any]], count: int, seed: int) -> list[dict[str, Any]]:
    """`count` traces drawn uniformly from all rows; output in the rows' original order."""
    pool = [r for r in rows if not set(r.get("reasons") or ()) & set(NOT_A_SELECTION)]
    if count > len(pool):
        raise InputError(f"cannot draw {count} traces from {len(pool)}", field="control")
    chosen = sorted(random.Random(seed).sample(range(len(pool)), count))
    return [pool[i] for i in chosen]


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file, split on "\\n" only: `str.splitlines` also splits on U+2028 and
    U+0085, which `dump_line` writes raw inside strings."""
    with open(path, encoding="utf-8", newline="\n") as fh:
        return [parse_json_object(line, path, lineno)
                for lineno, line in enumerate(fh, start=1) if line.strip()]


def run_control_data(config: ControlDataConfig) -> dict[str, Any]:
    from cotdistill.filter.decide import sft_row

    started = time.time()
    rows = [row for p in (config.kept, config.rejected) for row in _jsonl_rows(Path(p))]
    count = len(_jsonl_rows(Path(config.like)))
    # Rows are keyed for a stable order that does not depend on the kept/rejected split.
    rows.sort(key=lambda r: (str(r.get("problem_id")), r.get("sample_index", 0)))
    drawn = draw_unfiltered(rows, count, config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    path = config.out / "sft.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(dump_line(sft_row(r)) for r in drawn), encoding="utf-8")
    tmp.replace(path)
    correct = sum(1 for r in drawn if r.get("correct"))
    return write_manifest(
        config.out, stage="control_data", config=config,
        inputs={str(p): sha256_file(p) for p in (config.kept, config.rejected, config.like)},
        counts={"pool": len(rows), "drawn": len(drawn), "drawn_correct": correct},
        started=started,
    )
