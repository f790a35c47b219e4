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
from typing import Protocol

from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.records import Message


@dataclass
class Completion:
    text: str
    finish_reason: str | None
    num_tokens: int
    # Log-probability of each sampled token (raw model distribution); None if unavailable.
    token_logprobs: list[float] | None


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
}


def make_backend(name: str, model: str, engine: EngineConfig) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}' (choose from {', '.join(BACKENDS)})")
    module_name, factory = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module_name), factory)(model, engine)
