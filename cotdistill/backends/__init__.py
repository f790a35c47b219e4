"""Generation backends: conversations in, completions with token logprobs out.

A backend is anything with `generate(conversations, sampling) -> list[list[Completion]]`
(one inner list of `sampling.n` completions per conversation; `progress(k)` is called as
requests finish) and `close()`. They are built by
name from `BACKENDS`; each implementation imports its heavy library inside its module, so
importing cotdistill stays instant.

    backend = make_backend("vllm", model_path, engine_config)
    completions = backend.generate([[Message(role="user", content="1+1?")]], sampling)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cotdistill.backends.sizing import Workload
from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.records import Message


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    # None when the backend cannot count them (a server without logprobs, n > 1).
    num_tokens: int | None
    # Log-probability of each sampled token (raw model distribution); None if unavailable.
    token_logprobs: list[float] | None
    # Thinking returned apart from the text (a server's `reasoning_content`); `text` is then
    # already whole, markers included (see cotdistill/reasoning.py).
    reasoning: str | None = None
    # Tokens of the thinking when the backend can count them exactly; None: estimated later.
    reasoning_tokens: int | None = None
    # The K most likely tokens at each step, when asked for (`topk_logprobs`); else None.
    topk: TopkTokens | None = None


@dataclass
class TopkTokens:
    """Per completion token: the K best candidates (best first) and the sampled token.

    numpy arrays: ids (T, K) int32 (-1 where fewer than K came back), logprobs (T, K) float16
    (raw, before temperature), sampled (T,) int32, sampled_lp (T,) float16.
    """

    ids: Any
    logprobs: Any
    sampled: Any
    sampled_lp: Any


# Called with the number of samples just finished, as requests finish (drives progress bars).
Progress = Callable[[int], None]


class Backend(Protocol):
    name: str

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> list[list[Completion]]: ...

    def close(self) -> None: ...


# name -> "module:factory"; the factory takes (model, EngineConfig).
BACKENDS: dict[str, str] = {
    "vllm": "cotdistill.backends.vllm_backend:VLLMBackend",
    "openai": "cotdistill.backends.openai_backend:OpenAIBackend",
    # Several servers of one model (`--base-url` given twice, or `--base-urls-file`);
    # `--backend openai` picks it by itself (see make_backend).
    "fleet": "cotdistill.backends.fleet:FleetBackend",
}
# Backends that run the model in this process and size their memory for the workload.
SIZED_BACKENDS = {"vllm"}


def make_backend(
    name: str, model: str, engine: EngineConfig, workload: Workload | None = None
) -> Backend:
    """`workload` (batch x n, max_tokens, prompt length) sizes an in-process engine's KV
    cache; a server backend has its own and does not take it."""
    if name == "openai" and (isinstance(getattr(engine, "base_url", None), list)
                             or getattr(engine, "base_urls_file", None) is not None):
        name = "fleet"
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    module_name, factory = BACKENDS[name].split(":")
    extra = {"workload": workload} if workload is not None and name in SIZED_BACKENDS else {}
    return getattr(importlib.import_module(module_name), factory)(model, engine, **extra)
