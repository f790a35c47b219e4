"""Evaluating one model: samples (or the cache), latency, memory, its summary."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from cotdistill.backends import Backend
from cotdistill.config import SamplingConfig
from cotdistill.evaluate.config import EvaluateConfig, ModelRun, Verifier
from cotdistill.evaluate.engines import Engines
from cotdistill.evaluate.score import evaluate_model
from cotdistill.evaluate.sources import (
    ModelSource,
    adapter_base,
    merge_adapter,
    parameter_count,
    quantized_scheme,
)
from cotdistill.evaluate.summary import summarize_model
from cotdistill.infra.memory import PeakMemory
from cotdistill.infra.progress import progress_bar
from cotdistill.prompts import PromptTemplate
from cotdistill.reasoning import (
    Markers,
    template_opens_thinking,
)
from cotdistill.records import Problem


def stage_memory(config: EvaluateConfig) -> PeakMemory | None:
    """What this evaluation can measure: the engine's memory (GPU memory on GPU) while a model
    is loaded and generating; math-verify's workers excluded. Nothing for a remote server."""
    if config.backend == "openai":
        return None
    import torch

    return PeakMemory(children=True, gpu="device" if torch.cuda.is_available() else None)


# --- the edges: files, progress, report --------------------------------------------------------


def batch_one_latency(
    name: str,
    backend: Backend,
    problems: Sequence[Problem],
    template: PromptTemplate,
    config: EvaluateConfig,
) -> dict[str, Any] | None:
    """Single-request latency on the first `latency_prompts` problems, greedy so that every
    run sends the same requests; None when disabled."""
    from cotdistill.evaluate.measures.latency import measure_latency

    chosen = problems[: config.latency_prompts]
    if not chosen:
        return None
    sampling = SamplingConfig(
        **config.model_dump(include=set(SamplingConfig.model_fields)) | {"temperature": 0.0}
    )
    bar = progress_bar(len(chosen) + 1, f"latency {name} (batch 1)", unit="request",
                       leave=False)
    try:
        return measure_latency(
            backend, [template.render(p.question) for p in chosen], sampling, bar.update
        )
    finally:
        bar.close()


def served_path(source: ModelSource, config: EvaluateConfig) -> str:
    """The folder (or id) the engine serves for `source`: its adapter merged into its base."""
    if source.adapter:
        return str(merge_adapter(source.adapter, config.trust_remote_code))
    return source.path


def run_model(
    source: ModelSource,
    problems: Sequence[Problem],
    template: PromptTemplate,
    config: EvaluateConfig,
    engines: Engines,
    verify: Verifier,
) -> ModelRun:
    """Load one model (a fresh engine, or new weights in the running one), generate, check,
    measure. The engine stays open for the next model; `engines.close()` releases it."""
    path = served_path(source, config)
    bar = progress_bar(len(problems) * config.n, f"evaluate {source.name}")
    memory = stage_memory(config)
    with memory or nullcontext():
        tick = time.perf_counter()
        backend, how = engines.open(path)
        load_s = time.perf_counter() - tick
        try:
            samples, seconds = evaluate_model(
                source.name, problems, template, backend, config, verify, config.batch_size,
                bar.update, markers=Markers(config.think_start, config.think_end),
                fallback_last_number=config.fallback_last_number,
                opened=config.backend == "vllm" and template_opens_thinking(
                    path, [m.model_dump() for m in template.render("1 + 1")],
                    Markers(config.think_start, config.think_end), config.enable_thinking,
                    config.trust_remote_code),
            )
            bar.close()
            latency = batch_one_latency(source.name, backend, problems, template, config)
        except BaseException:
            engines.close()
            raise
        finally:
            bar.close()
    extra: dict[str, Any] = {"model": source.spec, "served_path": path, "engine": how}
    if source.adapter is not None:
        extra["adapter"] = {"path": str(source.adapter), "base": adapter_base(source.adapter),
                            "merged_into": path}
    if memory is not None:
        extra["peak_memory_what"] = memory.what
    if latency is not None:
        extra["latency"] = latency
    return ModelRun(samples, seconds, load_s, memory.peak_mb if memory else None, extra)


def model_summary(run: ModelRun, config: EvaluateConfig) -> dict[str, Any]:
    summary = summarize_model(
        run.samples,
        bins=config.calibration_bins,
        resamples=config.bootstrap_resamples,
        seed=config.bootstrap_seed,
        level=config.confidence,
    )
    counts = [s.num_tokens for s in run.samples]
    # Unknown lengths (a server without logprobs) leave throughput unknown, not understated.
    tokens = None if None in counts else sum(c for c in counts if c is not None)
    problems = summary["problems"]
    served = Path(run.extra.get("served_path", ""))
    parameters = parameter_count(served) if run.extra.get("served_path") else None
    summary.update(
        {
            **run.extra,
            "parameters": parameters,
            "quantization": quantized_scheme(served) if run.extra.get("served_path") else None,
            "output_tokens": tokens,
            "output_tokens_per_s": (
                tokens / run.generation_s if tokens is not None and run.generation_s > 0
                else None
            ),
            "seconds_per_problem": run.generation_s / problems if problems else None,
            "generation_s": round(run.generation_s, 3),
            "load_s": round(run.load_s, 3),
            "peak_memory_mb": run.peak_memory_mb,
        }
    )
    return summary
