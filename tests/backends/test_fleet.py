"""The generator fleet: routing, failover and probing against loopback stub servers, then two
real vLLM servers on the tiny model, one killed in the middle of a generate run."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cotdistill import cli
from cotdistill.backends import make_backend
from cotdistill.backends.fleet import FleetBackend, fleet_urls
from cotdistill.backends.openai_backend import OpenAIBackend
from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.errors import InputError, ServiceError
from cotdistill.generate.config import GenerateConfig
from cotdistill.records import Message
from tests.helpers.servers import Server, start_vllm, stop, wait_ready


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(**values) -> Server:
        made.append(Server(**values))
        return made[-1]

    yield make
    for server in made:
        with contextlib.suppress(OSError):
            server.stop()


def engine(*urls: str, **values) -> EngineConfig:
    return EngineConfig(backend="openai", base_url=list(urls), **values)


def conversations(count: int) -> list[list[Message]]:
    return [[Message(role="user", content=f"q{i}")] for i in range(count)]


def test_several_urls_make_a_fleet_and_one_stays_the_plain_backend(servers) -> None:
    a, b = servers(), servers()
    fleet = make_backend("openai", None, engine(a.url, b.url))
    assert isinstance(fleet, FleetBackend) and fleet.model == "m"
    single = make_backend("openai", None, GenerateConfig(base_url=[a.url]))  # --base-url once
    assert isinstance(single, OpenAIBackend) and not isinstance(single.engine.base_url, list)
    assert GenerateConfig(base_url=a.url).base_url == a.url  # YAML `base_url: str` as before


def test_urls_file_adds_to_base_url_and_names_a_bad_line(servers, tmp_path: Path) -> None:
    a, b = servers(), servers()
    listing = tmp_path / "urls.txt"
    listing.write_text(f"# the fleet\n{b.url}\n\n{a.url}  # again: counted once\n")
    assert fleet_urls(EngineConfig(base_url=a.url, base_urls_file=listing)) == [a.url, b.url]
    listing.write_text(f"{a.url}\n127.0.0.1:9/v1\n")
    with pytest.raises(InputError) as info:
        fleet_urls(EngineConfig(base_urls_file=listing))
    assert (info.value.file, info.value.line) == (str(listing), 2)


def test_an_endpoint_serving_another_model_is_refused_before_work(servers) -> None:
    a, b = servers(model="m"), servers(model="other")
    with pytest.raises(InputError, match="all serve one model") as info:
        FleetBackend(None, engine(a.url, b.url))
    assert info.value.file == b.url
    assert a.chats == b.chats == 0


def test_requests_go_to_the_endpoint_with_fewest_in_flight(servers) -> None:
    from cotdistill.infra.progress import progress_bar

    slow, fast = servers(delay=0.4), servers(delay=0.02)
    fleet = FleetBackend("m", engine(slow.url, fast.url, concurrency=2))
    bar = progress_bar(30, "generate")
    results = fleet.generate(conversations(30), SamplingConfig(n=1, max_tokens=8),
                             progress=bar.update)
    bar.close()
    assert bar.n == 30
    # The bar shows each endpoint's rate: host:port/v1 NN tok/s, for both.
    assert bar.postfix.count("tok/s") == 2 and f"127.0.0.1:{fast.port}" in bar.postfix
    assert [r[0].text for r in results] == [f"q{i}|0" for i in range(30)]
    # The fast server frees its slots sooner, so it is the least busy more often.
    assert fast.chats > 2 * slow.chats > 0
    report = {r["url"]: r for r in fleet.endpoint_report()}
    assert report[fast.url]["samples"] == fast.chats and report[fast.url]["up"]


def test_a_dying_endpoint_is_skipped_every_request_answered_once_then_probed_back(
    servers, capsys: pytest.CaptureFixture[str]
) -> None:
    healthy, dying = servers(delay=0.05), servers(delay=0.05, die_after=3)
    fleet = FleetBackend("m", engine(healthy.url, dying.url, concurrency=2, max_retries=1))
    sampling = SamplingConfig(n=2, max_tokens=8, temperature=0.5)
    results = fleet.generate(conversations(20), sampling)
    assert [[c.text for c in r] for r in results] == [[f"q{i}|0", f"q{i}|1"] for i in range(20)]
    report = {r["url"]: r for r in fleet.endpoint_report()}
    assert report[dying.url]["up"] is False and report[dying.url]["outages"] == 1
    assert report[dying.url]["samples"] == 2 * 3  # what it answered before it died
    assert report[healthy.url]["samples"] == 2 * 17
    assert f"{dying.url} out of rotation" in capsys.readouterr().err

    back = servers(delay=0.01, port=dying.port)  # restarted on the same address
    results = fleet.generate(conversations(40), sampling)  # the probe runs meanwhile
    assert len(results) == 40
    assert back.chats > 0 and fleet.endpoint_report()[1]["up"] is True
    assert "answers again: back in rotation" in capsys.readouterr().err


def test_an_endpoint_dead_from_the_start_is_reported_and_the_rest_work(servers) -> None:
    alive = servers()
    dead = servers()
    dead.stop()
    fleet = FleetBackend(None, engine(alive.url, dead.url))
    assert len(fleet.generate(conversations(3), SamplingConfig())) == 3
    assert [r["up"] for r in fleet.endpoint_report()] == [True, False]


def test_all_endpoints_dead_is_one_line_exit_1(servers, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    a, b = servers(), servers()
    a.stop()
    b.stop()
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "1 + 1?", "answer": "2"}\n')
    code = cli.main(["generate", "--backend", "openai", "--base-url", a.url, "--base-url", b.url,
                     "--problems", str(problems), "--out", str(tmp_path / "out")])
    assert code == 1
    assert "no endpoint of the fleet answers" in capsys.readouterr().err
    with pytest.raises(ServiceError):
        FleetBackend(None, engine(a.url, b.url))


@pytest.mark.vllm
@pytest.mark.server
def test_two_vllm_servers_one_killed_mid_run(tiny_model: Path, tmp_path: Path) -> None:
    procs = []
    try:
        for name in ("a", "b"):
            procs.append(start_vllm(tiny_model, tmp_path / f"{name}.log", memory=(),
                                     env={"VLLM_CPU_KVCACHE_SPACE": "1"}))
        deadline = time.monotonic() + 360
        for (proc, url), name in zip(procs, ("a", "b"), strict=True):
            wait_ready(proc, url, tmp_path / f"{name}.log", deadline)
        (_, url_a), (proc_b, url_b) = procs
        problems = tmp_path / "p.jsonl"
        problems.write_text("".join(
            json.dumps({"id": f"p{i}", "question": f"Sam has {i} cards and gets 3 more.",
                        "answer": str(i + 3)}) + "\n" for i in range(60)))
        out = tmp_path / "out"
        run = subprocess.Popen(
            [sys.executable, "-m", "cotdistill", "generate", "--backend", "openai",
             "--base-url", url_a, "--base-url", url_b, "--problems", str(problems),
             "--out", str(out), "--n", "2", "--temperature", "1.0", "--max-tokens", "24",
             "--batch-size", "6", "--concurrency", "2", "--max-retries", "1",
             "--prompt-template", "plain"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            traces = out / "traces.jsonl"
            limit = time.monotonic() + 240
            while not (traces.exists() and traces.read_text().count("\n") >= 12):
                assert run.poll() is None, run.communicate()[0][-3000:]
                assert time.monotonic() < limit, "no traces after 240 s"
                time.sleep(0.2)
            os.killpg(proc_b.pid, signal.SIGKILL)  # server b dies mid-run, engine and all
            proc_b.wait(timeout=30)
            output, _ = run.communicate(timeout=300)
        finally:
            if run.poll() is None:
                run.kill()
        assert run.returncode == 0, output[-3000:]
        rows = [json.loads(x) for x in traces.read_text().splitlines()]
        pairs = sorted((r["problem_id"], r["sample_index"]) for r in rows)
        assert pairs == sorted((f"p{i}", s) for i in range(60) for s in range(2))
        manifest = json.loads((out / "manifest.json").read_text())
        report = {e["url"]: e for e in manifest["endpoints"]}
        assert report[url_b]["up"] is False and report[url_b]["outages"] == 1
        assert report[url_b]["samples"] > 0  # it worked before it died
        assert report[url_a]["up"] is True
        assert report[url_a]["samples"] + report[url_b]["samples"] == 120
        assert f"fleet: {url_b} out of rotation" in output
    finally:
        for proc, _ in procs:
            stop(proc)
