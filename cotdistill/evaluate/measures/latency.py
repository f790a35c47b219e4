"""Batch-1 latency on prompts the engine has not seen (no prefix-cache hits), warm-up untimed.
"""

from __future__ import annotations

import secrets
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from cotdistill.config import SamplingConfig
from cotdistill.evaluate.measures.deployment import Timing
from cotdistill.records import Message

# --- latency -----------------------------------------------------------------------------------


def unseen(conversation: list[Message], tag: str) -> list[Message]:
    """The conversation with `tag` opening its first message. vLLM caches prefixes by blocks
    chained on everything before them, so a new token at the very start leaves no cached block
    of the prompt beyond the chat template's opening tokens."""
    first, *rest = conversation
    return [first.model_copy(update={"content": f"[{tag}] {first.content}"}), *rest]


def fresh_tag() -> str:
    """A tag no earlier request can have carried (a server outlives evaluation runs); letters
    only, so no number joins a math question."""
    return "ref " + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))


def latency_prompts(
    conversations: Sequence[list[Message]], tag: Callable[[], str] = fresh_tag
) -> tuple[list[Message], list[list[Message]]]:
    """(warm-up, timed): every prompt tagged apart, so none of them, the warm-up included,
    was seen by the engine before, and the warm-up is not one of the timed prompts."""
    return unseen(conversations[0], tag()), [unseen(c, tag()) for c in conversations]


def _vllm_timings(
    llm: Any, warmup: list[Message], conversations: Sequence[list[Message]],
    sampling: SamplingConfig, progress: Callable[[int], None],
    template_kwargs: Mapping[str, Any],
) -> tuple[list[Timing], dict[str, Any]]:
    """Batch-1 requests through the in-process engine's add_request/step loop, the prefix
    cache reset before each timed one; also returns the served dtype, the tokens the engine's
    KV cache reservation holds and whether every reset succeeded."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(
        n=1, temperature=sampling.temperature, top_p=sampling.top_p,
        max_tokens=sampling.max_tokens, stop=sampling.stop or None,
        output_kind=RequestOutputKind.DELTA,
    )

    def one(request_id: str, conversation: list[Message]) -> Timing:
        text = tokenizer.apply_chat_template(
            [m.model_dump() for m in conversation], tokenize=False, add_generation_prompt=True,
            **template_kwargs,
        )
        # The template already holds any BOS token; do not add a second one.
        ids = tokenizer.encode(text, add_special_tokens=False)
        first = None
        tokens = 0
        tick = time.perf_counter()
        engine.add_request(request_id, {"prompt_token_ids": ids}, params)
        while engine.has_unfinished_requests():
            for output in engine.step():
                new = sum(len(c.token_ids) for c in output.outputs)
                if new and first is None:
                    first = time.perf_counter() - tick
                tokens += new
        timing = Timing(first, time.perf_counter() - tick, tokens, len(ids))
        progress(1)
        return timing

    def reset() -> bool:
        # False when the engine refused (requests in flight) or has no prefix cache to reset.
        clear = getattr(llm, "reset_prefix_cache", None)
        return bool(clear()) if callable(clear) else False

    if engine.has_unfinished_requests():
        raise RuntimeError("latency needs an idle engine, and this one has requests in flight")
    one("latency-warmup", warmup)  # pays for lazy initialisation; never timed
    timings, resets = [], []
    for i, conversation in enumerate(conversations):
        resets.append(reset())
        timings.append(one(f"latency-{i}", conversation))
    dtype = getattr(getattr(engine, "model_config", None), "dtype", None)
    # The engine core reports its KV blocks back to the front end's config (core_client.py).
    cache = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
    blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    return timings, {
        "served_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "kv_cache_tokens": blocks * block_size if blocks and block_size else None,
        "prefix_cache_reset": all(resets),
    }


def _generic_timings(
    backend: Any, warmup: list[Message], conversations: Sequence[list[Message]],
    sampling: SamplingConfig, progress: Callable[[int], None],
) -> list[Timing]:
    """Any backend: one `generate` call per prompt, end to end only."""
    backend.generate([warmup], sampling)  # never timed
    progress(1)
    timings = []
    for conversation in conversations:
        tick = time.perf_counter()
        [[completion]] = backend.generate([conversation], sampling)
        timings.append(Timing(None, time.perf_counter() - tick, completion.num_tokens, None))
        progress(1)
    return timings


def _percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else None


def summarize_latency(timings: Sequence[Timing]) -> dict[str, Any]:
    """p50/p95 of time to first token and end to end, and the per-request records."""
    ttft = [t.ttft_s for t in timings if t.ttft_s is not None]
    e2e = [t.e2e_s for t in timings]
    # Decode time per token after the first, where both ends are known.
    per_token = [(t.e2e_s - t.ttft_s) / (t.output_tokens - 1) for t in timings
                 if t.ttft_s is not None and t.output_tokens is not None and t.output_tokens > 1]
    prompts = [t.prompt_tokens for t in timings if t.prompt_tokens is not None]
    outputs = [t.output_tokens for t in timings if t.output_tokens is not None]
    return {
        "requests": len(timings),
        "ttft_p50_s": _percentile(ttft, 50),
        "ttft_p95_s": _percentile(ttft, 95),
        "e2e_p50_s": _percentile(e2e, 50),
        "e2e_p95_s": _percentile(e2e, 95),
        "decode_s_per_token_p50": _percentile(per_token, 50),
        "mean_output_tokens": sum(outputs) / len(outputs) if outputs else None,
        "max_prompt_tokens": max(prompts) if prompts else None,
        "timings": [asdict(t) for t in timings],
    }


def measure_latency(
    backend: Any,
    conversations: Sequence[list[Message]],
    sampling: SamplingConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any] | None:
    """Batch-1 latency over `conversations` (one sample each, `sampling`'s other settings),
    each sent as a prompt the engine has not seen (`latency_prompts`); `progress(1)` after each
    request, the warm-up included (len + 1 calls)."""
    if not conversations:
        return None
    progress = progress or (lambda count: None)
    single = sampling.model_copy(update={"n": 1})
    warmup, timed = latency_prompts(conversations)
    llm = getattr(backend, "llm", None)
    if getattr(llm, "llm_engine", None) is not None:
        # The backend's chat-template settings (thinking on/off), so the prompts are the same.
        template_kwargs = getattr(backend, "template_kwargs", None) or {}
        timings, engine = _vllm_timings(llm, warmup, timed, single, progress, template_kwargs)
        method = "vllm engine step loop (wall clock)"
    else:
        timings = _generic_timings(backend, warmup, timed, single, progress)
        # A server's prefix cache cannot be reset from here; the tags keep the prompts unseen.
        engine = {"served_dtype": None, "kv_cache_tokens": None, "prefix_cache_reset": None}
        method = f"{getattr(backend, 'name', 'backend')}: one generate call per prompt"
    return {"method": method, **engine, "max_tokens": single.max_tokens,
            "temperature": single.temperature, "unseen_prompts": True,
            **summarize_latency(timings)}
