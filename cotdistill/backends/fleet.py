"""A generator fleet: several OpenAI-compatible servers of one model behind one backend.

Each request goes to the endpoint with the fewest requests in flight (at most
`engine.concurrency` on each). An endpoint that refuses a connection, times out or answers 5xx
is taken out of rotation at once and the request is sent to another; a background probe asks
the dead one (`/health`, then `/v1/models`) every second and brings it back when it answers with
the same model. Before any work, every endpoint must serve the model: one serving another
model is an error, never a silent mix of teachers. The request and response code is the
openai backend's (cotdistill/backends/openai_backend.py), called once per try.

    cotdistill generate --backend openai --base-url http://10.0.0.1:8000/v1 \
        --base-url http://10.0.0.2:8000/v1 ...           # or --base-urls-file urls.txt
    backend = make_backend("openai", None, engine)     # engine.base_url a list: a FleetBackend

Progress bars show each endpoint's output tokens per second; `endpoint_report()` (in the
generate manifest) says what each endpoint did and which ones died.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.backends import Completion, Progress
from cotdistill.backends.openai_backend import OpenAIBackend
from cotdistill.config import EngineConfig, SamplingConfig, public_url
from cotdistill.errors import InputError, ServiceError
from cotdistill.records import Message

PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 5.0


def fleet_urls(engine: EngineConfig) -> list[str]:
    """base_url (one or several) plus the lines of base_urls_file, first mention kept."""
    urls = [engine.base_url] if isinstance(engine.base_url, str) else list(engine.base_url or [])
    if engine.base_urls_file is not None:
        path = Path(engine.base_urls_file)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise InputError(f"cannot read: {exc}", file=path, field="base_urls_file") from exc
        for lineno, line in enumerate(lines, start=1):
            url = line.split("#", 1)[0].strip()
            if not url:
                continue
            if not url.startswith(("http://", "https://")):
                raise InputError(f"not an http(s) URL: {url!r}", file=path, line=lineno,
                                 field="base_urls_file")
            urls.append(url)
    unique = list(dict.fromkeys(u.rstrip("/") for u in urls))
    if not unique:
        raise InputError("the openai backend needs --base-url (several for a fleet) or "
                         "--base-urls-file", field="base_url")
    return unique


def is_fleet(engine: EngineConfig) -> bool:
    """More than one server, or a file of them: the fleet backend, not the plain one."""
    return isinstance(engine.base_url, list) or engine.base_urls_file is not None


@dataclass
class Endpoint:
    url: str
    backend: OpenAIBackend | None = None  # None until it has answered once
    up: bool = False
    in_flight: int = 0
    requests: int = 0
    samples: int = 0
    tokens: int = 0
    failures: int = 0
    outages: int = 0
    busy_s: float = 0.0  # wall time with at least one request in flight (for tok/s)
    busy_since: float = 0.0
    last_error: str | None = None
    wrong_model: str | None = None

    @property
    def where(self) -> str:
        return public_url(self.url) or self.url

    def rate(self) -> float:
        return self.tokens / self.busy_s if self.busy_s > 0 else 0.0


class FleetBackend:
    name = "openai"

    def __init__(self, model: str | None, engine: EngineConfig) -> None:
        self.engine = engine
        self.endpoints = [Endpoint(url) for url in fleet_urls(engine)]
        self.model = model
        # Every endpoint is asked what it serves before any work (one try each: a dead one is
        # not waited for, it starts out of rotation and is probed like any other).
        for endpoint in self.endpoints:
            self._connect(endpoint)
        if not any(e.up for e in self.endpoints):
            raise ServiceError("no endpoint of the fleet answers: " + "; ".join(
                f"{e.where}: {e.last_error}" for e in self.endpoints))
        for endpoint in self.endpoints:
            if not endpoint.up:
                self._say(f"{endpoint.where} does not answer ({endpoint.last_error}); out of "
                          "rotation until it does")

    # --- endpoints ---------------------------------------------------------------------------

    def _connect(self, endpoint: Endpoint) -> bool:
        """Ask the endpoint what it serves; up if it serves our model. A different model is
        an InputError (before work starts) or keeps it out for good (when it comes back)."""
        one_try = self.engine.model_copy(update={"base_url": endpoint.url, "max_retries": 0,
                                                 "base_urls_file": None})
        try:
            endpoint.backend = OpenAIBackend(self.model, one_try)
        except ServiceError as exc:
            endpoint.last_error = str(exc)
            return False
        except InputError as exc:
            if "serves" not in str(exc):
                raise
            endpoint.wrong_model = str(exc)
            raise InputError(f"the fleet's endpoints must all serve one model: {exc.message}",
                             file=endpoint.where, field="base_url") from None
        if self.model is None:
            self.model = endpoint.backend.model  # the first to answer names the model
        endpoint.up = True
        return True

    async def _probe(self, endpoint: Endpoint, client: Any) -> None:
        """Bring a dead endpoint back if /health (when it has one) and /v1/models answer."""
        root = endpoint.url[: -len("/v1")] if endpoint.url.endswith("/v1") else endpoint.url
        headers = {"Authorization": f"Bearer {endpoint.backend.api_key}"} if endpoint.backend \
            else {}
        try:
            health = await client.get(root + "/health", headers=headers)
            if health.status_code >= 500:
                return
            listed = await client.get(endpoint.url + "/models", headers=headers)
        except Exception as exc:  # noqa: BLE001  any network failure: still dead
            endpoint.last_error = f"probe: {type(exc).__name__}"
            return
        if listed.status_code != 200:
            return
        served = [m.get("id") for m in listed.json().get("data", [])]
        if self.model not in served:
            endpoint.wrong_model = f"now serves {served}, not {self.model!r}"
            self._say(f"{endpoint.where} came back serving {served}, not {self.model!r}: "
                      "kept out of rotation")
            return
        # Dead since the start: its backend is made now, in a thread (the openai backend's
        # own check runs an event loop of its own).
        if endpoint.backend is None and not await asyncio.to_thread(self._connect, endpoint):
            return
        endpoint.up = True
        self._say(f"{endpoint.where} answers again: back in rotation")

    async def _probe_loop(self, wake: asyncio.Condition) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
            while True:
                await asyncio.sleep(PROBE_INTERVAL_S)
                dead = [e for e in self.endpoints if not e.up and e.wrong_model is None]
                for endpoint in dead:
                    await self._probe(endpoint, client)
                if any(e.up for e in dead):
                    async with wake:
                        wake.notify_all()

    def _take_out(self, endpoint: Endpoint, exc: Exception) -> None:
        endpoint.failures += 1
        endpoint.last_error = str(exc)
        if endpoint.up:
            endpoint.up = False
            endpoint.outages += 1
            self._say(f"{endpoint.where} out of rotation ({exc}); its requests go to the others")

    def _say(self, text: str) -> None:
        print(f"fleet: {text}", file=sys.stderr)

    # --- requests ----------------------------------------------------------------------------

    def _longest_outage_s(self) -> float:
        """How long a request waits for any endpoint to come back: the single-server
        backend's backoff over its retries, and at least a few probes."""
        retries = self.engine.max_retries
        return max(5.0, sum(min(30.0, 0.5 * 2**k) for k in range(retries)))

    async def _acquire(self, wake: asyncio.Condition) -> Endpoint:
        deadline = time.monotonic() + self._longest_outage_s()
        async with wake:
            while True:
                free = [e for e in self.endpoints
                        if e.up and e.in_flight < self.engine.concurrency]
                if free:
                    endpoint = min(free, key=lambda e: (e.in_flight, e.requests))
                    if endpoint.in_flight == 0:
                        endpoint.busy_since = time.monotonic()
                    endpoint.in_flight += 1
                    endpoint.requests += 1
                    return endpoint
                if any(e.up for e in self.endpoints):
                    # All busy: a finished request wakes one waiter (waking every waiter on
                    # every release costs the client CPU quadratic in the requests queued).
                    await wake.wait()
                    deadline = time.monotonic() + self._longest_outage_s()
                    continue
                if time.monotonic() > deadline:
                    raise ServiceError(
                        f"every endpoint of the fleet is down for {self._longest_outage_s():g} "
                        "s: " + "; ".join(f"{e.where}: {e.last_error}" for e in self.endpoints))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=0.5)

    async def _request(
        self,
        clients: dict[str, Any],
        wake: asyncio.Condition,
        messages: list[Message],
        sampling: SamplingConfig,
        show: Any,
    ) -> list[Completion]:
        unlimited = asyncio.Semaphore(1 << 30)  # the fleet limits in-flight requests itself
        tries = self.engine.max_retries + len(self.endpoints)
        for attempt in range(tries):
            endpoint = await self._acquire(wake)
            backend: OpenAIBackend = endpoint.backend  # type: ignore[assignment]
            if endpoint.url not in clients:  # made inside the running loop, as openai wants
                clients[endpoint.url] = backend._client()
            try:
                completions = await backend._one(clients[endpoint.url], unlimited, messages,
                                                 sampling)
            except ServiceError as exc:
                self._take_out(endpoint, exc)
                if attempt == tries - 1:
                    raise
                continue
            finally:
                endpoint.in_flight -= 1
                if endpoint.in_flight == 0:
                    endpoint.busy_s += time.monotonic() - endpoint.busy_since
                async with wake:
                    # A freed slot wakes one waiter; an endpoint just taken out wakes them all
                    # (they may have to wait for the probe now, with a deadline).
                    wake.notify(1) if endpoint.up else wake.notify_all()
            endpoint.samples += len(completions)
            # Unknown counts (no logprobs, n > 1) add nothing rather than fail the request.
            endpoint.tokens += sum(c.num_tokens or 0 for c in completions)
            show(len(completions))
            return completions
        raise AssertionError("unreachable")

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        bar = getattr(progress, "__self__", None)  # a tqdm bar's update: show rates on it
        shown = [0.0]

        def show(k: int) -> None:
            if progress is not None:
                progress(k)
            now = time.monotonic()
            if bar is not None and hasattr(bar, "set_postfix_str") and now - shown[0] > 0.5:
                shown[0] = now
                bar.set_postfix_str(self.rates(), refresh=False)

        async def run_all() -> list[list[Completion]]:
            wake = asyncio.Condition()
            clients: dict[str, Any] = {}  # one client per endpoint, made on first use
            probe = asyncio.create_task(self._probe_loop(wake))
            try:
                return await asyncio.gather(
                    *(self._request(clients, wake, c, sampling, show) for c in conversations))
            finally:
                probe.cancel()
                for client in clients.values():
                    await client.close()

        return asyncio.run(run_all())

    def rates(self) -> str:
        return " | ".join(
            f"{e.where.split('//')[-1]} " + (f"{e.rate():.0f} tok/s" if e.up else "DOWN")
            for e in self.endpoints)

    def weights_fingerprint(self) -> str | None:
        """The weights' identity when every endpoint that answers serves the same ones (each
        probed as the plain backend does); None when one cannot tell or they differ."""
        prints = {e.backend.weights_fingerprint() for e in self.endpoints
                  if e.up and e.backend is not None}
        return prints.pop() if len(prints) == 1 else None

    def endpoint_report(self) -> list[dict[str, Any]]:
        return [{"url": e.where, "up": e.up, "requests_ok": e.requests - e.failures,
                 "failed_tries": e.failures, "outages": e.outages, "samples": e.samples,
                 "output_tokens": e.tokens, "output_tokens_per_s": round(e.rate(), 1),
                 "last_error": e.last_error if (e.failures or not e.up) else None,
                 "wrong_model": e.wrong_model} for e in self.endpoints]

    def close(self) -> None:
        for e in self.endpoints:
            state = "up" if e.up else "DOWN"
            note = f", last error: {e.last_error}" if e.failures or not e.up else ""
            self._say(f"{e.where}: {state}, {e.samples} samples, {e.tokens} tokens "
                      f"({e.rate():.0f} tok/s), {e.failures} failed tries{note}")
