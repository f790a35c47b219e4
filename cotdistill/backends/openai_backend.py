"""Any OpenAI-compatible chat endpoint, first of all a vLLM server used as the generator service.

Requests run concurrently under `engine.concurrency`, each with `engine.request_timeout`, and
are retried with exponential backoff on connection errors, timeouts, 429 and 5xx answers.
The API key is read from the environment variable named by `engine.api_key_env` and is never
logged or written.

    python -m vllm.entrypoints.openai.api_server --model DIR --port 8000   # CPU build
    cotdistill generate --backend openai --base-url http://127.0.0.1:8000/v1 ...
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from typing import Any

from cotdistill.backends import Completion, Progress
from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.errors import InputError
from cotdistill.records import Message


class OpenAIBackend:
    name = "openai"

    def __init__(self, model: str | None, engine: EngineConfig) -> None:
        if not engine.base_url:
            raise InputError(
                "the openai backend needs --base-url (e.g. http://127.0.0.1:8000/v1)",
                field="base_url",
            )
        self.engine = engine
        self.base_url = engine.base_url
        self.api_key = os.environ.get(engine.api_key_env) or "EMPTY"
        self.model = model or self._first_served_model()

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        # Retries are ours (with backoff and a per-request timeout), not the client's.
        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.engine.request_timeout,
            max_retries=0,
        )

    def _first_served_model(self) -> str:
        async def first() -> str:
            client = self._client()
            try:
                models = await self._with_retries(client.models.list)
                return models.data[0].id
            finally:
                await client.close()

        return asyncio.run(first())

    async def _with_retries(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        import openai

        # APITimeoutError is a subclass of APIConnectionError.
        retryable = (openai.APIConnectionError,)
        for attempt in range(self.engine.max_retries + 1):
            try:
                return await call(*args, **kwargs)
            except openai.APIStatusError as exc:
                transient = exc.status_code >= 500 or exc.status_code == 429
                if not transient or attempt == self.engine.max_retries:
                    raise
            except retryable:
                if attempt == self.engine.max_retries:
                    raise
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    async def _one(
        self,
        client: Any,
        gate: asyncio.Semaphore,
        messages: list[Message],
        sampling: SamplingConfig,
    ) -> list[Completion]:
        async with gate:
            response = await self._with_retries(
                client.chat.completions.create,
                model=self.model,
                messages=[m.model_dump() for m in messages],
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                stop=sampling.stop or None,
                logprobs=True,
                top_logprobs=max(sampling.logprobs, 0),
            )
        completions = []
        usage = getattr(response, "usage", None)
        for choice in sorted(response.choices, key=lambda c: c.index):
            content = choice.logprobs.content if choice.logprobs is not None else None
            logprobs = [float(t.logprob) for t in content] if content is not None else None
            if logprobs is not None:
                num_tokens = len(logprobs)
            elif usage is not None and len(response.choices) == 1:
                # A server that ignores `logprobs` still reports the token count in `usage`.
                num_tokens = usage.completion_tokens
            else:
                num_tokens = 0
            completions.append(
                Completion(
                    text=choice.message.content or "",
                    finish_reason=choice.finish_reason,
                    num_tokens=num_tokens,
                    token_logprobs=logprobs,
                )
            )
        return completions

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        async def one(client: Any, gate: asyncio.Semaphore, messages: list[Message]) -> Any:
            completions = await self._one(client, gate, messages, sampling)
            if progress is not None:
                progress(len(completions))
            return completions

        async def run_all() -> list[list[Completion]]:
            gate = asyncio.Semaphore(self.engine.concurrency)
            client = self._client()
            try:
                return await asyncio.gather(*(one(client, gate, c) for c in conversations))
            finally:
                await client.close()

        return asyncio.run(run_all())

    def close(self) -> None:
        pass
