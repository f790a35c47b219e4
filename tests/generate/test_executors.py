"""generate --executor ray on a real local Ray cluster (`ray start --head` on 127.0.0.1, 2 CPUs):
2 shards as Ray tasks over an OpenAI-compatible stub server, one task's worker killed once;
Ray reruns it, the rerun resumes its shard, and the merged traces hold every problem once.

The shards talk to a loopback stub server (tests/helpers/servers.py) rather than a vLLM engine
each: two CPU vLLM engines inside Ray workers on a 2-core CI machine would take minutes to
start, and what is under test here is Ray's placement, retry and the shard bookkeeping; the
fleet test runs real vLLM servers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.servers import Server, free_port

pytest.importorskip("ray", reason="Ray is not installed (pip install 'cotdistill[ray]')")


@pytest.fixture
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A head node with 2 CPUs on loopback, in its own session so teardown stops all of it."""
    port = free_port()
    # Ray's unix sockets live under the temp dir: keep its path short.
    temp = Path(f"/tmp/ray-test-{os.getpid()}-{port}")
    log = tmp_path_factory.mktemp("ray") / "head.log"
    ray_cli = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    with open(log, "wb") as out:
        head = subprocess.Popen(
            [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(port), "--num-cpus", "2", "--num-gpus", "0",
             "--include-dashboard", "false", "--disable-usage-stats",
             "--object-store-memory", str(100 * 2**20), "--temp-dir", str(temp)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while b"Ray runtime started" not in log.read_bytes():
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def test_ray_shards_survive_a_killed_task_and_cover_every_problem_once(
    ray_cluster: str, tmp_path: Path
) -> None:
    server = Server(model="teacher", delay=0.25)
    try:
        problems = tmp_path / "p.jsonl"
        problems.write_text("".join(
            json.dumps({"id": f"p{i:02d}", "question": f"{i} + 1?", "answer": str(i + 1)})
            + "\n" for i in range(24)))
        out = tmp_path / "out"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        run = subprocess.Popen(
            [sys.executable, "-m", "cotdistill", "generate", "--executor", "ray",
             "--ray-address", ray_cluster, "--shards", "2", "--shard-cpus", "1",
             "--task-retries", "2", "--backend", "openai", "--base-url", server.url,
             "--problems", str(problems), "--out", str(out), "--batch-size", "2",
             "--concurrency", "1", "--prompt-template", "plain"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        shard0 = out / "shard-0-of-2"
        try:
            deadline = time.monotonic() + 180
            while not ((shard0 / "traces.jsonl").exists()
                       and (shard0 / "traces.jsonl").read_text().count("\n") >= 2):
                assert run.poll() is None, run.communicate()[0][-3000:]
                assert time.monotonic() < deadline, "shard 0 wrote nothing in 180 s"
                time.sleep(0.1)
            pid = int((shard0 / ".lock").read_text().split()[0])  # the Ray worker's pid
            assert pid != run.pid
            os.kill(pid, signal.SIGKILL)
            output, _ = run.communicate(timeout=240)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, output[-3000:]
    finally:
        server.stop()

    rows = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    assert sorted(r["problem_id"] for r in rows) == [f"p{i:02d}" for i in range(24)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["executor"] == "ray" and manifest["counts"]["samples"] == 24
    first = json.loads((shard0 / "manifest.json").read_text())
    # The rerun resumed: it generated only what the killed worker had not written.
    assert 0 < first["counts"]["new_samples"] < first["counts"]["samples"]
    assert first["config"]["shard"] == "0/2"
