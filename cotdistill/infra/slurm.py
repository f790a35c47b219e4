"""Slurm job arrays: which shard this array task is (`--shard auto`).

Slurm runs one copy of the job script per array index and tells each which it is through the
environment. `--shard auto` turns that into `I/N` for generate and filter, so one sbatch file
covers every shard (see examples/slurm/generate.sbatch):

    #SBATCH --array=0-7
    cotdistill generate --shard auto --out runs/gen/shard-$SLURM_ARRAY_TASK_ID ...

    index, count = array_shard(os.environ)      # (3, 8) in array task 3 of 0-7
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cotdistill.errors import InputError

AUTO = "auto"


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"${name} is {value!r}, not a number", field="shard") from None


def array_shard(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(index, count) of this Slurm array task; an InputError outside an array job.

    Array indices need not start at 0 (`--array=1-8`): the index is counted from
    SLURM_ARRAY_TASK_MIN. Indices with gaps (`--array=0-15:2`, `--array=1,4,9`) cannot be
    numbered 0..N-1 from the environment alone and are refused.
    """
    env = os.environ if env is None else env
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    count = _int(env, "SLURM_ARRAY_TASK_COUNT")
    if task is None or count is None:
        raise InputError(
            "--shard auto needs SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (run it as a "
            "Slurm array task: sbatch --array=0-N-1); elsewhere give --shard I/N",
            field="shard",
        )
    low = _int(env, "SLURM_ARRAY_TASK_MIN")
    high = _int(env, "SLURM_ARRAY_TASK_MAX")
    step = _int(env, "SLURM_ARRAY_TASK_STEP")
    low = 0 if low is None else low
    if (step not in (None, 1)) or (high is not None and high - low + 1 != count):
        raise InputError(
            f"the array's indices are not consecutive (min {low}, max {high}, step {step}, "
            f"count {count}): use --array=0-{count - 1}, or give --shard I/N yourself",
            field="shard",
        )
    index = task - low
    if count < 1 or not 0 <= index < count:
        raise InputError(
            f"SLURM_ARRAY_TASK_ID {task} is outside the array (min {low}, count {count})",
            field="shard",
        )
    return index, count


def resolve_shard(spec: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """`auto` -> `I/N` from the Slurm environment; anything else unchanged."""
    if spec != AUTO:
        return spec
    index, count = array_shard(env)
    return f"{index}/{count}"
