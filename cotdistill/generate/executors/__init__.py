"""Executors run generate's shards: here (local), on Ray; Slurm arrays run shards themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from cotdistill.errors import InputError
from cotdistill.generate.config import GenerateConfig


class Executor(Protocol):
    """Runs one generate per config (in any order, anywhere that sees the same files)."""

    name: str

    def run(self, shards: Sequence[GenerateConfig]) -> list[dict[str, Any]]: ...


def make_executor(config: GenerateConfig, backend: Any = None) -> Executor:
    """`backend`: an engine the local executor reuses for every shard (none is built)."""
    if config.executor == "ray":
        from cotdistill.generate.executors.ray import RayExecutor

        if backend is not None:
            raise InputError("a backend built here cannot travel to Ray tasks", field="executor")
        return RayExecutor(config.ray_address, num_cpus=config.shard_cpus,
                           num_gpus=config.shard_gpus, max_retries=config.task_retries)
    from cotdistill.generate.executors.local import LocalExecutor

    return LocalExecutor(backend)
