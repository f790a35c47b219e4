"""Generation against 1 vs 2 vLLM servers through the fleet backend, and the client's cost.

Two OpenAI-compatible vLLM servers on the tiny test model (tests/tiny.py), each pinned to one
of the machine's cores (taskset + VLLM_CPU_OMP_THREADS_BIND), so "two servers" uses the same
total cores as "each alone" plus the other idle. The same prompts and sampling go to:

  (a) server A alone, (b) server B alone (the plain openai backend, one URL each),
  (c) the fleet backend over A and B (`--base-url A --base-url B`).

Figure: output tokens/s over the wall time of the generate call (requests concurrent, up to
`--concurrency` per server). The fleet should give about (a) + (b); the client's own CPU time
(process time of this driver during the call, per request) says whether the client could be
what limits it. Results: bench/results/fleet.md and .json.

    .venv/bin/python bench/bench_fleet.py                  # about 5 min on the 2-core box
    .venv/bin/python bench/bench_fleet.py --prompts 32 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, core: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_CPU_OMP_THREADS_BIND": str(core)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(core), sys.executable, "-m",
             "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
             "--port", str(port), "--enforce-eager", "--max-model-len", "512", "--seed", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/v1"


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"server not ready:\n{log.read_text()[-3000:]}")
        time.sleep(1)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure(urls: list[str], prompts: int, max_tokens: int, concurrency: int) -> dict:
    from cotdistill.backends import make_backend
    from cotdistill.config import EngineConfig, SamplingConfig
    from cotdistill.records import Message

    engine = EngineConfig(backend="openai", base_url=urls, concurrency=concurrency)
    backend = make_backend("openai", None, engine)
    sampling = SamplingConfig(n=1, max_tokens=max_tokens, temperature=1.0)
    conversations = [[Message(role="user", content=f"Sam has {i} apples and gets {i % 7 + 2} "
                              "more. How many apples does Sam have?")] for i in range(prompts)]
    backend.generate(conversations[:4], sampling)  # warm-up: not timed
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = backend.generate(conversations, sampling)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    tokens = sum(c.num_tokens for r in results for c in r)
    report = {"urls": len(urls), "requests": prompts, "output_tokens": tokens,
              "wall_s": round(wall, 2), "output_tokens_per_s": round(tokens / wall, 1),
              "client_cpu_s": round(cpu, 3),
              "client_cpu_ms_per_request": round(1000 * cpu / prompts, 2),
              "client_cpu_share_of_wall": round(cpu / wall, 3)}
    if hasattr(backend, "endpoint_report"):
        report["endpoints"] = backend.endpoint_report()
    backend.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per server")
    args = parser.parse_args()

    from tests.helpers.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        servers = [start_server(model, core, Path(tmp) / f"s{core}.log") for core in (0, 1)]
        try:
            for (proc, url), core in zip(servers, (0, 1), strict=True):
                wait_ready(proc, url, Path(tmp) / f"s{core}.log")
            (_, a), (_, b) = servers
            runs = {}
            for name, urls in (("A alone", [a]), ("B alone", [b]), ("fleet A+B", [a, b])):
                runs[name] = measure(urls, args.prompts, args.max_tokens, args.concurrency)
                print(name, json.dumps({k: v for k, v in runs[name].items()
                                        if k != "endpoints"}), flush=True)
        finally:
            for proc, _ in servers:
                stop(proc)

    alone = runs["A alone"]["output_tokens_per_s"] + runs["B alone"]["output_tokens_per_s"]
    fleet = runs["fleet A+B"]["output_tokens_per_s"]
    summary = {"settings": vars(args), "runs": runs, "sum_of_alone_tok_s": round(alone, 1),
               "fleet_over_sum": round(fleet / alone, 3),
               "loadavg_at_end": os.getloadavg()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps(summary, indent=2) + "\n")
    rows = "\n".join(
        f"| {name} | {r['output_tokens']} | {r['wall_s']} | {r['output_tokens_per_s']} | "
        f"{r['client_cpu_ms_per_request']} | {r['client_cpu_share_of_wall']} |"
        for name, r in runs.items())
    (RESULTS / "fleet.md").write_text(
        "# Generator fleet: 1 vs 2 vLLM servers (tiny model, one core each)\n\n"
        f"`.venv/bin/python bench/bench_fleet.py --prompts {args.prompts} --max-tokens "
        f"{args.max_tokens} --concurrency {args.concurrency}`; T=1.0, n=1.\n\n"
        "| run | output tokens | wall s | output tok/s | client CPU ms/request | "
        "client CPU / wall |\n|---|---|---|---|---|---|\n" + rows + "\n\n"
        f"Fleet / (A alone + B alone): **{summary['fleet_over_sum']}** "
        f"({fleet} vs {round(alone, 1)} tok/s). Load average at the end: "
        f"{', '.join(f'{x:.1f}' for x in summary['loadavg_at_end'])} (the machine is shared).\n")
    print(f"fleet/sum {summary['fleet_over_sum']} -> {RESULTS / 'fleet.md'}")


if __name__ == "__main__":
    main()
