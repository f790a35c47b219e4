"""Servers for backend tests: a real vLLM server process, a stub OpenAI server, a free port."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Server:
    """An OpenAI-compatible stub serving `model`: answers echo the question, after `delay`.

    `die_after` chat requests it stops answering (the connection is dropped, then the port
    closed), as a killed server does; `start()` again on the same port brings it back.
    """

    def __init__(self, model: str = "m", delay: float = 0.0, die_after: int | None = None,
                 port: int = 0) -> None:
        self.model, self.delay, self.die_after = model, delay, die_after
        self.chats = 0
        self.lock = threading.Lock()
        self.port = port
        self.start()

    def start(self) -> None:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": stub.model}]})
                else:
                    self._send(200, {})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.chats += 1
                    dying = stub.die_after is not None and stub.chats > stub.die_after
                if dying:
                    threading.Thread(target=stub.stop, daemon=True).start()
                    self.close_connection = True
                    self.connection.close()  # no answer at all: a dead server
                    return
                time.sleep(stub.delay)
                question = body["messages"][-1]["content"]
                self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                                 "model": stub.model, "choices": [
                    {"index": i, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": f"{question}|{i}"},
                     "logprobs": {"content": [{"token": "a", "logprob": -0.5, "bytes": None,
                                               "top_logprobs": []}] * 3}}
                    for i in range(body.get("n", 1))]})

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- two real vLLM servers ------------------------------------------------------------------


def free_port() -> int:

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stub:
    """A scripted OpenAI-compatible server: `reply(request_number, body) -> (status, payload)`."""

    def __init__(self, reply: Callable[[int, dict], tuple[int, dict]], delay: float = 0.0):
        self.reply = reply
        self.delay = delay
        self.models_reply: tuple[int, dict] | None = None  # GET /v1/models; None: stub-model
        self.requests: list[tuple[float, str, dict, dict]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _headers(self) -> dict[str, str]:
                return {k.lower(): v for k, v in self.headers.items()}

            def do_GET(self) -> None:
                stub.requests.append((time.monotonic(), self.path, {}, self._headers()))
                self._answer(*(stub.models_reply or (200, {"object": "list", "data": [
                    {"id": "stub-model", "object": "model", "created": 0, "owned_by": "me"}]})))

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stub.lock:
                    stub.requests.append((time.monotonic(), self.path, body, self._headers()))
                    number = len(stub.posts())  # the model check's GET is not counted
                    stub.in_flight += 1
                    stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                try:
                    time.sleep(stub.delay)
                    status, payload = stub.reply(number, body)
                    self._answer(status, payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def posts(self) -> list[tuple[float, str, dict, dict]]:
        return [r for r in self.requests if r[1].endswith("/chat/completions")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_vllm(model: Path, log: Path, *extra: str,
               memory: tuple[str, ...] = ("--gpu-memory-utilization", "0.1"),
               env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """A real vLLM OpenAI-compatible server on a free loopback port, in its own session (so
    `stop` can signal the engine core process too); returns it and its base URL."""
    port = free_port()
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", **(env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
             "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", *memory,
             "--max-model-len", "512", "--seed", "0", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    return proc, f"http://127.0.0.1:{port}/v1"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, deadline: float) -> None:
    """Until the server lists its models; fails the test if it exits or the deadline passes."""
    import pytest

    while True:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"vLLM server not ready in time:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    """Signal the server's process group (engine core included); kill it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def vllm_server(model: Path, log: Path, *extra: str, timeout: float = 600) -> Iterator[str]:
    """A ready vLLM server for the duration of the block; yields its base URL. The deadline
    only guards against a hang: on 2 loaded cores one took over 240 s to start."""
    proc, url = start_vllm(model, log, *extra)
    try:
        wait_ready(proc, url, log, time.monotonic() + timeout)
        yield url
    finally:
        stop(proc)
