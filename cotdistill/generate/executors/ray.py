"""Generate's shards as Ray tasks: one task per shard, each with its own engine.

Each task declares the resources its engine needs (`num_cpus` here; on a GPU cluster
`num_gpus` = the engine's tensor x data parallel size), so Ray places the shards and runs as
many at once as the cluster holds. A task whose worker dies (a killed process, a lost node) is
run again by Ray (`max_retries`); the rerun resumes its shard, because generate keeps the
problems already finished in the shard's folder. The shards write to the folder given as
`--out`, which every node must see (shared storage).

    cotdistill generate --executor ray --ray-address 10.0.0.1:6379 --shards 8 \
        --shard-gpus 1 --problems /shared/train.jsonl --out /shared/runs/gen

Needs `pip install 'cotdistill[ray]'`. Without an address (and no RAY_ADDRESS), a local Ray
instance is started for the run and stopped after it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cotdistill.errors import InputError, ServiceError
from cotdistill.generate.config import GenerateConfig


def generate_shard(values: dict[str, Any]) -> dict[str, Any]:
    """The task body: one shard's generate, from its config as JSON-able values."""
    from cotdistill.generate.single import run_single

    return run_single(GenerateConfig.model_validate(values))


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        max_retries: int = 2,
    ) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise InputError("--executor ray needs Ray: pip install 'cotdistill[ray]'",
                             field="executor") from None
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_retries": max_retries,
                        # a shard that raised (bad input, a dead server) fails the same way
                        # again: only a dead worker is worth a rerun
                        "retry_exceptions": False}

    def run(self, shards: Sequence[GenerateConfig]) -> list[dict[str, Any]]:
        import ray

        # The shards' configs travel as plain JSON values (no pickled pydantic classes), and
        # credentials do not travel at all: a worker reads the API key from its environment.
        payloads = [s.model_dump(mode="json") for s in shards]
        for payload, shard in zip(payloads, shards, strict=True):
            payload["base_url"] = shard.base_url  # the serializer masks credentials
        started_here = not ray.is_initialized()
        if started_here:
            # Joining a cluster takes no resource settings; a local instance gets no dashboard.
            local = {} if self.address else {"include_dashboard": False}
            ray.init(address=self.address, log_to_driver=False, configure_logging=False,
                     **local)
        try:
            task = ray.remote(generate_shard).options(**self.options)
            refs = [task.remote(p) for p in payloads]
            try:
                return ray.get(refs)
            except ray.exceptions.RayTaskError as exc:
                # A shard's bad input or dead server is reported as itself, as without Ray.
                if isinstance(exc.cause, InputError | ServiceError):
                    raise exc.cause from None
                raise
            except ray.exceptions.WorkerCrashedError as exc:
                raise ServiceError(
                    f"a shard's Ray worker died {self.options['max_retries'] + 1} times "
                    f"(task_retries): {exc}") from exc
        finally:
            if started_here:
                ray.shutdown()
