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
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import Any

from cotdistill.backends import Completion, Progress
from cotdistill.config import EngineConfig, SamplingConfig, public_url
from cotdistill.errors import InputError, ServiceError
from cotdistill.prompts import chat_template_kwargs
from cotdistill.reasoning import (
    Markers,
    join_reasoning,
    reasoning_chars,
    split_reasoning,
    token_split,
)
from cotdistill.records import Message


def _template_options(engine: EngineConfig) -> dict[str, Any]:
    """vLLM servers read chat template variables (Qwen3's `enable_thinking`) from the body."""
    kwargs = chat_template_kwargs(engine.enable_thinking)
    return {"extra_body": {"chat_template_kwargs": kwargs}} if kwargs else {}


# The weights probe (`OpenAIBackend.weights_fingerprint`): one fixed greedy request whose tokens
# and log-probabilities change when the weights behind a served name change.
PROBE_MESSAGES = [{"role": "user", "content": "Count from 1 to 5, then name three colours."}]
PROBE_TOKENS = 12
# Log-probabilities are compared at this many decimals: batch and kernel noise stays below it,
# a changed checkpoint does not; a difference only costs a cache miss.
PROBE_DECIMALS = 2
# Card fields that say nothing about the weights: `permission` holds ids made per request.
CARD_VOLATILE = ("permission", "object")
# vLLM stamps `created` with the time of each /v1/models request; a real creation date (OpenAI's
# own models) is older than this, and only then does it identify anything.
CARD_CREATED_MIN_AGE_S = 86_400.0


def stable_card(card: dict[str, Any], now: float) -> dict[str, Any]:
    """The parts of a /v1/models card that identify what is served (id, root, parent,
    owned_by, max_model_len, a creation date that is not the request's own time)."""
    kept = {k: v for k, v in card.items() if k not in CARD_VOLATILE}
    created = kept.get("created")
    if isinstance(created, int | float) and now - created < CARD_CREATED_MIN_AGE_S:
        kept.pop("created")
    return kept


def message_completion(
    message: Any,
    finish_reason: str | None,
    num_tokens: int | None,
    logprobs: list[float] | None,
    tokens: list[str] | None,
) -> Completion:
    """One choice as a Completion; thinking returned apart is put back inside the markers.

    A server run with `--reasoning-parser` (vLLM: deepseek_r1, qwen3, ...) returns the thinking
    as `reasoning_content` (newer servers: `reasoning`) and only the answer as `content`.
    The sampled tokens' texts (from logprobs) say exactly where the thinking ended; without
    them, an answer present, or a stop that was not the token limit, means it did end.
    """
    content = message.content
    reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None)
    if not isinstance(reasoning, str):
        return Completion(text=content or "", finish_reason=finish_reason,
                          num_tokens=num_tokens, token_logprobs=logprobs)
    markers = Markers()
    if tokens:
        finished = markers.end in "".join(tokens)
    else:
        finished = content is not None or finish_reason != "length"
    text = join_reasoning(reasoning.strip(), (content or "").strip(), markers, finished)
    split = split_reasoning(text, markers)
    reasoning_tokens, _ = token_split(num_tokens, text, reasoning_chars(text, split, markers),
                                      tokens, markers.end)
    return Completion(text=text, finish_reason=finish_reason, num_tokens=num_tokens,
                      token_logprobs=logprobs, reasoning=reasoning.strip(),
                      reasoning_tokens=reasoning_tokens)


# Environment variables already reported unset in this process (say it once, not per model).
_WARNED_NO_KEY: set[str] = set()


def _message(exc: Any) -> str:
    """The server's own error text, on one line."""
    body = getattr(exc, "body", None)
    if isinstance(body, str) and body.strip():
        return " ".join(body.split())
    if isinstance(body, dict):
        inner = body.get("error", body)
        text = inner.get("message") if isinstance(inner, dict) else inner
        if text:
            return " ".join(str(text).split())
    return " ".join(str(getattr(exc, "message", exc)).split())


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
        self.where = public_url(engine.base_url)  # what errors may show
        key = os.environ.get(engine.api_key_env)
        if not key and engine.api_key_env not in _WARNED_NO_KEY:
            _WARNED_NO_KEY.add(engine.api_key_env)
            print(f"openai backend: ${engine.api_key_env} is not set; sending no API key",
                  file=sys.stderr)
        self.api_key = key or "EMPTY"  # the client wants a string; local servers ignore it
        self.card: dict[str, Any] = {}
        self.model = self._check_served(model)

    def _client(self) -> Any:
        from openai import AsyncOpenAI

        # Retries are ours (with backoff and a per-request timeout), not the client's.
        return AsyncOpenAI(
            base_url=self.base_url,
            api_key=self.api_key,
            timeout=self.engine.request_timeout,
            max_retries=0,
        )

    def _check_served(self, model: str | None) -> str:
        """Ask the server what it serves (GET /v1/models) before any work: `model` must be one
        of them; without one, the first is taken."""

        async def listed() -> list[Any]:
            client = self._client()
            try:
                return list((await self._with_retries(client.models.list)).data)
            finally:
                await client.close()

        cards = asyncio.run(listed())
        served = [m.id for m in cards]
        if not served:
            raise InputError("the server serves no model", file=self.where, field="base_url")
        if model is not None and model not in served:
            raise InputError(
                f"the server serves {', '.join(map(repr, served))}, not {model!r}: start it "
                f"with that model (vLLM: --served-model-name {model}) or name one it serves",
                file=self.where, field="model",
            )
        chosen = served[0] if model is None else model
        # Kept for `weights_fingerprint`: the card is what the server says about the model.
        self.card = next(m for m in cards if m.id == chosen).model_dump()
        return chosen

    def weights_fingerprint(self) -> str | None:
        """What identifies the weights behind the served name, or None when nothing does.

        A name is not enough (a server restarted on a retrained checkpoint keeps it) and
        neither is vLLM's card (its `root` is the path, whatever the files hold now). So one
        greedy probe is sent and its tokens and log-probabilities, with the card's stable
        fields, are hashed; a server that returns no log-probabilities cannot tell two close
        checkpoints apart, so it gives None.
        """

        async def probe() -> Any:
            client = self._client()
            try:
                return await self._with_retries(
                    client.chat.completions.create, model=self.model, messages=PROBE_MESSAGES,
                    n=1, temperature=0.0, max_tokens=PROBE_TOKENS, logprobs=True,
                    **_template_options(self.engine),
                )
            finally:
                await client.close()

        response = asyncio.run(probe())
        choice = response.choices[0]
        content = choice.logprobs.content if choice.logprobs is not None else None
        if not content:
            return None
        tokens = [[t.token, round(float(t.logprob), PROBE_DECIMALS)] for t in content]
        identity = {"card": stable_card(self.card, time.time()), "probe": tokens}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    async def _with_retries(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        import openai

        # APITimeoutError is a subclass of APIConnectionError.
        retryable = (openai.APIConnectionError,)
        tries = self.engine.max_retries + 1
        for attempt in range(tries):
            try:
                return await call(*args, **kwargs)
            except openai.APIStatusError as exc:
                transient = exc.status_code >= 500 or exc.status_code == 429
                if not transient:
                    raise self._refused(exc) from exc
                if attempt == self.engine.max_retries:
                    raise ServiceError(
                        f"{self.where}: HTTP {exc.status_code} {_message(exc)} "
                        f"({tries} tries)"
                    ) from exc
            except retryable as exc:
                if attempt == self.engine.max_retries:
                    what = (f"no answer within {self.engine.request_timeout:g} s "
                            "(request_timeout)" if isinstance(exc, openai.APITimeoutError)
                            else f"cannot connect ({exc.__cause__ or exc})")
                    raise ServiceError(f"{self.where}: {what} ({tries} tries)") from exc
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _refused(self, exc: Any) -> InputError:
        """A 4xx answer (not 429): the request or the settings are wrong; retrying won't help."""
        status, message = exc.status_code, _message(exc)
        if status in (401, 403):
            return InputError(
                f"the server refused the API key (HTTP {status}: {message}); put the key in "
                f"${self.engine.api_key_env}", file=self.where, field="api_key_env",
            )
        if status == 404:
            return InputError(
                f"HTTP 404: {message}; check base_url (an OpenAI-compatible server's usually "
                f"ends in /v1) and the model name {getattr(self, 'model', None)!r}",
                file=self.where, field="base_url",
            )
        return InputError(f"the server rejected the request (HTTP {status}: {message})",
                          file=self.where)

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
                **_template_options(self.engine),
            )
        completions = []
        usage = getattr(response, "usage", None)
        for choice in sorted(response.choices, key=lambda c: c.index):
            content = choice.logprobs.content if choice.logprobs is not None else None
            logprobs = [float(t.logprob) for t in content] if content is not None else None
            num_tokens: int | None
            if logprobs is not None:
                num_tokens = len(logprobs)
            elif usage is not None and len(response.choices) == 1:
                # A server that ignores `logprobs` still reports the token count in `usage`.
                num_tokens = usage.completion_tokens
            else:
                # `usage` sums all n choices: no count per sample. None, not 0, so a length
                # threshold downstream says "no token counts" instead of rejecting everything.
                num_tokens = None
            tokens = [t.token for t in content] if content is not None else None
            completions.append(
                message_completion(choice.message, choice.finish_reason, num_tokens, logprobs,
                                   tokens)
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
