"""The openai backend: retry, timeout and concurrency against a local stub server, then the
whole generate stage against a real vLLM OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cotdistill.backends.openai_backend import OpenAIBackend
from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.errors import InputError, ServiceError
from cotdistill.generate.config import GenerateConfig
from cotdistill.records import Message
from tests.helpers.servers import Stub
from tests.helpers.servers import vllm_server as running_vllm

CONVERSATION = [Message(role="user", content="What is 2 + 3?")]


def chat_completion(n: int = 1) -> dict:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": f"2 + 3 = 5 ({i})"},
            "finish_reason": "stop" if i == 0 else "length",
            "logprobs": {"content": [
                {"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
                for t, lp in [("2", -0.5), (" +", -1.0), (" 3", -1.5)]
            ]},
        }
        for i in reversed(range(n))  # out of order on purpose: the backend sorts by index
    ]
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "stub-model",
            "choices": choices}


@pytest.fixture
def stub_factory() -> Iterator[Callable[..., Stub]]:
    made: list[Stub] = []

    def make(reply, delay: float = 0.0) -> Stub:
        made.append(Stub(reply, delay))
        return made[-1]

    yield make
    for stub in made:
        stub.close()


def engine(url: str, **values) -> EngineConfig:
    return EngineConfig(backend="openai", base_url=url, **values)


def test_503_then_429_then_success_is_retried_with_backoff(
    stub_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUB_KEY", "secret-123")
    script = {1: (503, {"error": "busy"}), 2: (429, {"error": "slow down"})}
    stub = stub_factory(lambda number, body: script.get(number, (200, chat_completion(body["n"]))))
    backend = OpenAIBackend("stub-model", engine(stub.url, max_retries=3, api_key_env="STUB_KEY"))
    sampling = SamplingConfig(n=2, temperature=0.4, top_p=0.9, max_tokens=20, stop=["\n\n"],
                              logprobs=2)
    [[first, second]] = backend.generate([CONVERSATION], sampling)

    posts = stub.posts()
    assert len(posts) == 3
    gaps = [b[0] - a[0] for a, b in zip(posts, posts[1:], strict=False)]
    # Backoff 0.5 s * 2**attempt, jittered by a factor 0.5 to 1.5.
    assert gaps[0] >= 0.25 and gaps[1] >= 0.5
    body = posts[-1][2]
    assert body["model"] == "stub-model"
    assert body["messages"] == [{"role": "user", "content": "What is 2 + 3?"}]
    assert (body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == (2, 0.4, 0.9, 20)
    assert body["stop"] == ["\n\n"]
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert posts[-1][3]["authorization"] == "Bearer secret-123"

    assert (first.text, first.finish_reason) == ("2 + 3 = 5 (0)", "stop")
    assert (second.text, second.finish_reason) == ("2 + 3 = 5 (1)", "length")
    assert first.token_logprobs == [-0.5, -1.0, -1.5] and first.num_tokens == 3


def test_token_count_from_usage_when_the_server_sends_no_logprobs(stub_factory) -> None:
    def reply(number, body):
        answer = chat_completion()
        answer["choices"][0]["logprobs"] = None
        answer["usage"] = {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}
        return 200, answer

    stub = stub_factory(reply)
    [[completion]] = OpenAIBackend("stub-model", engine(stub.url)).generate(
        [CONVERSATION], SamplingConfig()
    )
    assert completion.token_logprobs is None and completion.num_tokens == 7


def test_client_errors_are_not_retried(stub_factory) -> None:
    stub = stub_factory(lambda number, body: (400, {"error": {"message": "bad request"}}))
    backend = OpenAIBackend("stub-model", engine(stub.url, max_retries=3))
    with pytest.raises(InputError, match=r"rejected the request \(HTTP 400: bad request\)"):
        backend.generate([CONVERSATION], SamplingConfig())
    assert len(stub.posts()) == 1


def test_retries_give_up_after_max_retries(stub_factory) -> None:
    stub = stub_factory(lambda number, body: (500, {"error": "down"}))
    backend = OpenAIBackend("stub-model", engine(stub.url, max_retries=1))
    with pytest.raises(ServiceError, match="HTTP 500 down .2 tries"):
        backend.generate([CONVERSATION], SamplingConfig())
    assert len(stub.posts()) == 2


def test_per_request_timeout_is_retried_then_raised(stub_factory) -> None:
    stub = stub_factory(lambda number, body: (200, chat_completion()), delay=3.0)
    backend = OpenAIBackend("stub-model", engine(stub.url, max_retries=1, request_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(ServiceError, match="no answer within 0.3 s"):
        backend.generate([CONVERSATION], SamplingConfig())
    assert time.monotonic() - started < 2.5  # did not wait for the slow answers
    assert len(stub.posts()) == 2


def test_connection_errors_are_retried(stub_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stub = stub_factory(lambda number, body: (200, chat_completion()))
    backend = OpenAIBackend("stub-model", engine(stub.url, max_retries=1))
    backend.base_url = f"http://127.0.0.1:{port}/v1"  # the server went away after the check
    attempts = []
    real = backend._client

    def counting_client():
        client = real()
        create = client.chat.completions.create

        async def counted(*args, **kwargs):
            attempts.append(1)
            return await create(*args, **kwargs)

        client.chat.completions.create = counted
        return client

    monkeypatch.setattr(backend, "_client", counting_client)
    with pytest.raises(ServiceError, match="cannot connect"):
        backend.generate([CONVERSATION], SamplingConfig())
    assert len(attempts) == 2


def test_requests_run_concurrently_under_the_limit(stub_factory) -> None:
    stub = stub_factory(lambda number, body: (200, chat_completion()), delay=0.2)
    backend = OpenAIBackend("stub-model", engine(stub.url, concurrency=3))
    conversations = [[Message(role="user", content=f"q{i}")] for i in range(9)]
    started = time.monotonic()
    results = backend.generate(conversations, SamplingConfig())
    assert len(results) == 9 and all(len(r) == 1 for r in results)
    assert stub.max_in_flight == 3
    assert time.monotonic() - started < 9 * 0.2  # faster than one at a time


def test_results_follow_the_order_of_the_conversations(stub_factory) -> None:
    def reply(number, body):
        answer = chat_completion()
        answer["choices"][0]["message"]["content"] = body["messages"][0]["content"]
        return 200, answer

    stub = stub_factory(reply, delay=0.05)
    backend = OpenAIBackend("stub-model", engine(stub.url, concurrency=4))
    conversations = [[Message(role="user", content=f"q{i}")] for i in range(8)]
    results = backend.generate(conversations, SamplingConfig())
    assert [r[0].text for r in results] == [f"q{i}" for i in range(8)]


def test_model_name_comes_from_the_server_when_not_given(stub_factory) -> None:
    stub = stub_factory(lambda number, body: (200, chat_completion()))
    assert OpenAIBackend(None, engine(stub.url)).model == "stub-model"
    assert stub.requests[0][1] == "/v1/models"


def test_generate_stage_over_the_stub(stub_factory, tmp_path: Path) -> None:
    from cotdistill.generate.stage import run_generate

    stub = stub_factory(lambda number, body: (200, chat_completion(body["n"])))
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "question": "2 + 3?", "answer": "5"}\n')
    cfg = GenerateConfig(problems=problems, out=tmp_path / "out", backend="openai",
                         base_url=stub.url, n=2)
    run_generate(cfg)
    traces = [json.loads(x) for x in (cfg.out / "traces.jsonl").read_text().splitlines()]
    assert [t["sample_index"] for t in traces] == [0, 1]
    assert traces[0]["teacher"] == "stub-model"
    assert traces[0]["mean_logprob"] == pytest.approx(-1.0) and traces[0]["min_logprob"] == -1.5


# --- crashes become sentences (issue 14) ----------------------------------------------------


def _cli_generate(tmp_path: Path, url: str, *extra: str) -> list[str]:
    from cotdistill.generate.stage import run_generate  # noqa: F401  (the stage the CLI runs)

    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "question": "2 + 3?", "answer": "5"}\n')
    return ["generate", "--problems", str(problems), "--out", str(tmp_path / "out"),
            "--backend", "openai", "--base-url", url, "--max-retries", "0", *extra]


@pytest.mark.parametrize(
    ("status", "field", "words"),
    [
        (401, "api_key_env", "refused the API key (HTTP 401: Invalid key); put the key in "
                             "$OPENAI_API_KEY"),
        (404, "base_url", "HTTP 404: no such route; check base_url"),
    ],
)
def test_401_and_404_are_one_line_errors_naming_the_fix(
    stub_factory, tmp_path: Path, capsys: pytest.CaptureFixture[str], status: int, field: str,
    words: str,
) -> None:
    from cotdistill.cli import main

    stub = stub_factory(lambda number, body: (200, chat_completion()))
    message = "Invalid key" if status == 401 else "no such route"
    stub.models_reply = (status, {"error": {"message": message}})
    with pytest.raises(InputError) as info:
        OpenAIBackend(None, engine(stub.url))
    assert info.value.field == field and words in info.value.message
    assert main(_cli_generate(tmp_path, stub.url)) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_server_serving_another_model_is_refused_before_any_work(stub_factory) -> None:
    stub = stub_factory(lambda number, body: (200, chat_completion()))
    with pytest.raises(InputError) as info:
        OpenAIBackend("my-teacher", engine(stub.url))
    assert "serves 'stub-model', not 'my-teacher'" in info.value.message
    assert info.value.field == "model" and stub.posts() == []


def test_a_dead_server_is_one_line_with_status_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cotdistill.cli import main

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(_cli_generate(tmp_path, f"http://127.0.0.1:{port}/v1")) == 1
    err = capsys.readouterr().err
    assert "cannot connect" in err and "Traceback" not in err


def test_an_unset_api_key_is_said_once(
    stub_factory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY_14", raising=False)
    stub = stub_factory(lambda number, body: (200, chat_completion()))
    OpenAIBackend(None, engine(stub.url, api_key_env="NO_SUCH_KEY_14"))
    OpenAIBackend(None, engine(stub.url, api_key_env="NO_SUCH_KEY_14"))
    err = capsys.readouterr().err
    assert err.count("$NO_SUCH_KEY_14 is not set") == 1


def test_base_url_credentials_never_reach_the_manifest(stub_factory, tmp_path: Path) -> None:
    from cotdistill.config import public_url
    from cotdistill.generate.stage import run_generate

    stub = stub_factory(lambda number, body: (200, chat_completion(body["n"])))
    secret_url = stub.url.replace("http://", "http://bob:hunter2@")
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "question": "2 + 3?", "answer": "5"}\n')
    cfg = GenerateConfig(problems=problems, out=tmp_path / "out", backend="openai",
                         base_url=secret_url)
    run_generate(cfg)
    manifest = (cfg.out / "manifest.json").read_text()
    assert "hunter2" not in manifest and "bob" not in manifest
    assert json.loads(manifest)["config"]["base_url"] == stub.url
    assert public_url("https://h/v1?api_key=abc&api-version=2024-06&sig=x") == (
        "https://h/v1?api_key=***&api-version=2024-06&sig=***")


def test_run_over_a_server_evaluates_the_model_it_serves(stub_factory, tmp_path: Path) -> None:
    from cotdistill.run.config import PipelineConfig
    from cotdistill.run.plan import plan

    stub = stub_factory(lambda number, body: (200, chat_completion()))
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "question": "2 + 3?", "answer": "5"}\n')
    config = PipelineConfig.model_validate({
        "out": tmp_path / "run", "problems": problems, "eval_problems": problems,
        "engine": {"backend": "openai", "base_url": stub.url},
    })
    evaluate = plan(config).steps[-1].config
    assert evaluate.model == ["teacher=stub-model"]


@pytest.fixture(scope="module")
def vllm_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with running_vllm(tiny_model, log) as url:
        yield url


@pytest.mark.vllm
@pytest.mark.server
def test_generate_against_a_real_vllm_server(
    vllm_server: str, tiny_model: Path, tmp_path: Path
) -> None:
    from cotdistill.generate.stage import run_generate

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(
        json.dumps({"question": f"Sam has {i} cards and gets 3 more.", "answer": str(i + 3)})
        + "\n" for i in range(4)
    ))
    cfg = GenerateConfig(problems=problems, out=tmp_path / "out", backend="openai",
                         base_url=vllm_server, n=2, max_tokens=12, temperature=1.0,
                         concurrency=2, prompt_template="plain")
    manifest = run_generate(cfg)
    traces = [json.loads(x) for x in (cfg.out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 8
    by_problem: dict[str, list[int]] = {}
    for trace in traces:
        by_problem.setdefault(trace["problem_id"], []).append(trace["sample_index"])
    assert len(by_problem) == 4 and all(v == [0, 1] for v in by_problem.values())
    for trace in traces:
        assert trace["teacher"] == str(tiny_model)  # the name the server gives its model
        assert trace["finish_reason"] in {"stop", "length"}
        logprobs = trace["token_logprobs"]
        assert 0 < trace["num_tokens"] == len(logprobs) <= 12
        assert all(x <= 0 and math.isfinite(x) for x in logprobs)
        assert trace["mean_logprob"] == pytest.approx(sum(logprobs) / len(logprobs))
        assert trace["min_logprob"] == min(logprobs)
    assert manifest["counts"]["samples"] == 8 and manifest["counts"]["problems"] == 4


# --- issue 19: token counts and the identity of the served weights ---------------------------


def test_several_samples_without_logprobs_have_no_token_count(stub_factory) -> None:
    """n > 1 and no logprobs: `usage` sums all choices, so no sample has a count of its own.
    None (not 0) makes a length threshold fail with "no num_tokens" instead of rejecting
    every trace as too short."""
    from cotdistill.filter.config import FilterConfig
    from cotdistill.filter.stage import check_lengths_present, filter_traces
    from cotdistill.generate.sample import make_trace, sampling_record
    from cotdistill.prompts import load_template
    from cotdistill.records import Problem

    def reply(number, body):
        answer = chat_completion(body["n"])
        for choice in answer["choices"]:
            choice["logprobs"] = None
        answer["usage"] = {"prompt_tokens": 9, "completion_tokens": 14, "total_tokens": 23}
        return 200, answer

    stub = stub_factory(reply)
    sampling = SamplingConfig(n=2)
    [completions] = OpenAIBackend("stub-model", engine(stub.url)).generate(
        [CONVERSATION], sampling)
    assert [c.num_tokens for c in completions] == [None, None]

    problem = Problem(id="a", question="What is 2 + 3?", gold_answer="5")
    traces = [make_trace(problem, i, c, [m.model_dump() for m in CONVERSATION], "stub-model",
                         load_template("plain"), sampling_record(sampling, None))
              for i, c in enumerate(completions)]
    assert all(t.num_tokens is None for t in traces)
    with pytest.raises(InputError, match="no num_tokens"):
        check_lengths_present(traces[0], FilterConfig(min_tokens=5))
    # Without a threshold nothing is rejected for its length.
    _, rejected, _ = filter_traces(traces, FilterConfig())
    assert not any("too_short" in r["reasons"] for r in rejected)


def served_reply(weights: dict[str, float | None]) -> Callable[[int, dict], tuple[int, dict]]:
    """A server whose 'weights' set its logprobs (None: it sends none); always answers 5."""
    def reply(number: int, body: dict) -> tuple[int, dict]:
        lp = weights["lp"]
        choice = {"index": 0, "message": {"role": "assistant", "content": "So \\boxed{5}."},
                  "finish_reason": "stop",
                  "logprobs": None if lp is None else {"content": [
                      {"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
                      for t in ("So", " \\boxed{5}", ".")]}}
        return 200, {"id": "x", "object": "chat.completion", "created": 0,
                     "model": "stub-model", "choices": [choice],
                     "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}
    return reply


def _evaluate_over(stub: Stub, out: Path, problems: Path) -> dict:
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.evaluate.stage import run_evaluate

    run_evaluate(EvaluateConfig(problems=problems, out=out, model=["teacher=stub-model"],
                                backend="openai", base_url=stub.url, prompt_template="plain",
                                latency_prompts=0, bootstrap_resamples=20), tables=False)
    return json.loads((out / "summary.json").read_text())


def test_a_reserved_changed_model_under_the_same_name_is_not_reused(
    stub_factory, tmp_path: Path
) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "question": "2 + 3?", "answer": "5"}\n')
    weights: dict[str, float | None] = {"lp": -0.5}
    stub = stub_factory(served_reply(weights))

    def evaluation_posts() -> int:
        return sum(r[2]["messages"][-1]["content"] == "2 + 3?" for r in stub.posts())

    _evaluate_over(stub, tmp_path / "eval", problems)
    assert evaluation_posts() == 1
    # Same server, same weights: the samples are reused.
    again = _evaluate_over(stub, tmp_path / "eval", problems)
    assert evaluation_posts() == 1 and again["models"]["teacher"]["cached"] is True
    # Re-served under the same name with other weights: the probe tells, the model runs again.
    weights["lp"] = -0.9
    changed = _evaluate_over(stub, tmp_path / "eval", problems)
    assert evaluation_posts() == 2 and not changed["models"]["teacher"].get("cached")


def test_a_served_model_nothing_identifies_is_never_cached_and_the_report_says_so(
    stub_factory, tmp_path: Path
) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"id": "a", "question": "2 + 3?", "answer": "5"}\n')
    stub = stub_factory(served_reply({"lp": None}))  # no logprobs: the probe cannot tell
    _evaluate_over(stub, tmp_path / "eval", problems)
    summary = _evaluate_over(stub, tmp_path / "eval", problems)
    teacher = summary["models"]["teacher"]
    assert not teacher.get("cached") and "cannot identify" in teacher["cache_off"]
    assert sum(r[2]["messages"][-1]["content"] == "2 + 3?" for r in stub.posts()) == 2
    assert "samples are not cached" in (tmp_path / "eval" / "report.md").read_text()


def test_stable_card_drops_what_the_server_makes_up_per_request() -> None:
    from cotdistill.backends.openai_backend import stable_card

    now = 1_800_000_000.0
    vllm_card = {"id": "m", "object": "model", "created": int(now), "owned_by": "vllm",
                 "root": "/models/m", "max_model_len": 4096,
                 "permission": [{"id": "modelperm-123", "created": int(now)}]}
    assert stable_card(vllm_card, now) == {"id": "m", "owned_by": "vllm", "root": "/models/m",
                                           "max_model_len": 4096}
    dated = {"id": "gpt", "object": "model", "created": 1_700_000_000, "owned_by": "system"}
    assert stable_card(dated, now)["created"] == 1_700_000_000
