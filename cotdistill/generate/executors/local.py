"""The reference executor: every shard in this process, one after another.

    LocalExecutor().run(shard_configs(config))    # same results as the Ray executor
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cotdistill.generate.config import GenerateConfig


class LocalExecutor:
    """`backend`: one engine reused by every shard (else each shard builds its own)."""

    name = "local"

    def __init__(self, backend: Any = None) -> None:
        self.backend = backend

    def run(self, shards: Sequence[GenerateConfig]) -> list[dict[str, Any]]:
        from cotdistill.generate.single import run_single

        return [run_single(shard, self.backend) for shard in shards]
