"""The generate stage: `run_generate` runs here, or in shards that an executor runs and merges.

    cotdistill generate --problems data/train.jsonl --out runs/gen --n 4
"""

from __future__ import annotations

from typing import Any

from cotdistill.backends import Backend
from cotdistill.generate.config import GenerateConfig, check_adaptive
from cotdistill.generate.single import run_single
from cotdistill.infra.locking import locks_output


@locks_output("generate")
def run_generate(config: GenerateConfig, backend: Backend | None = None) -> dict[str, Any]:
    """Generate (or finish generating) `traces.jsonl` in `config.out`; returns the manifest.

    Without `backend`, the configured one is built (after all input checks) and closed at the
    end; a backend passed in is used as it is and left open for the caller.
    """
    check_adaptive(config)  # before any shard starts
    if config.shard == "auto":  # a Slurm array task: which shard it is comes from Slurm
        from cotdistill.infra.slurm import resolve_shard

        config = config.model_copy(update={"shard": resolve_shard(config.shard)})
    if config.executor != "local" or config.shards > 1:  # the shards run elsewhere, then merge
        from cotdistill.generate.shards import run_sharded

        return run_sharded(config, backend)
    return run_single(config, backend)
