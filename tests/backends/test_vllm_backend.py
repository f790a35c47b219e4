"""The vLLM backend: config conversion (no engine), then a real CPU engine on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cotdistill.backends.sizing import EnginePlan, GiB, MiB, Workload
from cotdistill.backends.vllm_backend import engine_kwargs
from cotdistill.config import EngineConfig, SamplingConfig, read_yaml
from cotdistill.generate.config import GenerateConfig
from cotdistill.records import Message


def test_engine_kwargs_pass_every_engine_setting() -> None:
    engine = EngineConfig(
        tensor_parallel_size=2, data_parallel_size=4, dtype="bfloat16", max_model_len=2048,
        gpu_memory_utilization=0.5, enforce_eager=False, seed=123, trust_remote_code=True,
    )
    assert engine_kwargs("/models/m", engine) == {
        "model": "/models/m",
        "tensor_parallel_size": 2,
        "data_parallel_size": 4,
        "dtype": "bfloat16",
        "max_model_len": 2048,
        "gpu_memory_utilization": 0.5,
        "enforce_eager": False,
        "seed": 123,
        "trust_remote_code": True,
    }


def test_engine_kwargs_memory_on_gpu_and_cpu() -> None:
    # GPU (no CPU plan): a fraction of the device, or the KV cache in bytes when asked.
    kwargs = engine_kwargs("m", EngineConfig())
    assert kwargs["gpu_memory_utilization"] == 0.9 and "kv_cache_memory_bytes" not in kwargs
    assert kwargs["enforce_eager"] is True and kwargs["trust_remote_code"] is False
    assert "max_model_len" not in kwargs and "data_parallel_size" not in kwargs
    sized = engine_kwargs("m", EngineConfig(kv_cache_gb=1.5))
    assert sized["kv_cache_memory_bytes"] == int(1.5 * GiB)
    assert "gpu_memory_utilization" not in sized

    # CPU: the plan's byte size, never a fraction of node memory unless the user set one.
    def plan(**kw: object) -> EnginePlan:
        return EnginePlan(**{"model": "m", "kv_cache_bytes": 300 * MiB, "kv_source": "auto",
                             "weights_bytes": 0, "floor_bytes": 256 * MiB, **kw})

    cpu = engine_kwargs("m", EngineConfig(), plan())
    assert cpu["kv_cache_memory_bytes"] == 300 * MiB and "gpu_memory_utilization" not in cpu
    fraction = engine_kwargs("m", EngineConfig(gpu_memory_utilization=0.3), plan(
        kv_cache_bytes=None, kv_source="gpu_memory_utilization", gpu_memory_utilization=0.3))
    assert fraction["gpu_memory_utilization"] == 0.3 and "kv_cache_memory_bytes" not in fraction
    # vLLM reads VLLM_CPU_KVCACHE_SPACE itself; passing bytes as well would be a second truth.
    env = engine_kwargs("m", EngineConfig(), plan(kv_source="VLLM_CPU_KVCACHE_SPACE"))
    assert "kv_cache_memory_bytes" not in env and "gpu_memory_utilization" not in env


def test_sampling_params_conversion() -> None:
    from cotdistill.backends.vllm_backend import sampling_params

    params = sampling_params(
        SamplingConfig(temperature=0.7, top_p=0.9, max_tokens=33, n=3, stop=["\n\n"], logprobs=2)
    )
    assert (params.n, params.temperature, params.top_p, params.max_tokens) == (3, 0.7, 0.9, 33)
    assert params.stop == ["\n\n"] and params.logprobs == 2
    assert params.seed is None  # per-request seeds kill vLLM's CPU engine


DEMO = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def demo_engine() -> EngineConfig:
    """The engine section of configs/demo.yaml, as `make demo` builds it."""
    section = read_yaml(DEMO)["engine"]
    return EngineConfig(**section)


@pytest.fixture(scope="module")
def backend(tiny_model: Path):
    from cotdistill.backends.vllm_backend import VLLMBackend

    # Started as the demo starts its teacher: its engine section and generate workload.
    demo = read_yaml(DEMO)["generate"]
    workload = Workload.of(demo["batch_size"], demo["n"], demo["max_tokens"])
    backend = VLLMBackend(str(tiny_model), demo_engine(), workload)
    yield backend
    backend.close()


@pytest.mark.vllm
def test_the_cpu_engine_starts_with_a_kv_cache_sized_in_bytes(backend, tiny_model: Path) -> None:
    from cotdistill.backends.sizing import plan_cpu_engine

    assert "gpu_memory_utilization" not in read_yaml(DEMO)["engine"]  # the default sizing
    cache = backend.llm.llm_engine.vllm_config.cache_config
    demo = read_yaml(DEMO)["generate"]
    workload = Workload.of(demo["batch_size"], demo["n"], demo["max_tokens"])
    plan = plan_cpu_engine(str(tiny_model), demo_engine(), workload)
    assert cache.kv_cache_memory_bytes == plan.kv_cache_bytes >= plan.floor_bytes
    [[completion]] = backend.generate(
        [[Message(role="user", content="What is 2 + 3?")]], SamplingConfig(max_tokens=8)
    )
    assert completion.num_tokens > 0


@pytest.mark.vllm
def test_generate_with_the_real_engine(backend, tiny_model: Path, tmp_path: Path) -> None:
    from cotdistill.generate.stage import run_generate

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(
        json.dumps({"id": f"p{i}", "question": f"Tom has {i} apples and gets 2 more.",
                    "answer": f"#### {i + 2}"}) + "\n"
        for i in range(3)
    ))
    cfg = GenerateConfig(problems=problems, out=tmp_path / "out", n=2, max_tokens=12,
                         temperature=1.0, teacher=str(tiny_model), prompt_template="plain")
    manifest = run_generate(cfg, backend=backend)

    traces = [json.loads(x) for x in (cfg.out / "traces.jsonl").read_text().splitlines()]
    assert [(t["problem_id"], t["sample_index"]) for t in traces] == [
        (f"p{i}", k) for i in range(3) for k in range(2)
    ]
    for trace in traces:
        logprobs = trace["token_logprobs"]
        assert trace["finish_reason"] in {"stop", "length"}
        assert 0 < trace["num_tokens"] <= 12
        assert len(logprobs) == trace["num_tokens"]
        assert all(x <= 0 and math.isfinite(x) for x in logprobs)
        assert trace["mean_logprob"] == pytest.approx(sum(logprobs) / len(logprobs))
        assert trace["min_logprob"] == min(logprobs)
        assert trace["teacher"] == str(tiny_model)
    # A random model rarely stops early: most samples use the whole budget.
    assert any(t["finish_reason"] == "length" for t in traces)
    # Two samples at T=1 from a random model over a 512-token vocabulary differ.
    assert traces[0]["completion"] != traces[1]["completion"]
    assert manifest["counts"]["samples"] == 6
    assert manifest["counts"]["output_tokens"] == sum(t["num_tokens"] for t in traces)
    assert manifest["output_tokens_per_s"] > 0
    assert (cfg.out / "manifest.json").exists()


@pytest.mark.vllm
def test_greedy_samples_agree_and_stop_strings_apply(backend) -> None:
    conversation = [Message(role="user", content="What is 2 + 3?")]
    greedy = SamplingConfig(temperature=0.0, max_tokens=10, n=1)
    [[first], [second]] = backend.generate([conversation, conversation], greedy)
    assert first.text == second.text and first.token_logprobs == second.token_logprobs

    # Stop at a piece of the greedy continuation: the same text comes back, cut before it.
    text = first.text
    stop = next(text[i : i + 2] for i in range(1, len(text) - 1) if text[i : i + 2].strip())
    [[cut]] = backend.generate(
        [conversation], SamplingConfig(temperature=0.0, max_tokens=10, n=1, stop=[stop])
    )
    assert cut.finish_reason == "stop"
    assert cut.text == text[: text.index(stop)]
    assert cut.num_tokens <= first.num_tokens


@pytest.mark.vllm
def test_progress_is_reported_per_finished_request(backend) -> None:
    conversations = [[Message(role="user", content=f"What is {i} + 3?")] for i in range(3)]
    calls: list[int] = []
    results = backend.generate(
        conversations, SamplingConfig(max_tokens=8, n=2), progress=calls.append
    )
    assert len(results) == 3
    # One call per finished request, each with that request's samples: a live bar, not a jump.
    assert calls == [2, 2, 2]


@pytest.mark.vllm
def test_topk_logprobs_are_captured_beside_the_traces(backend, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    """`--topk-logprobs K` with the real engine: K ranked candidates per token, fp16 on disk."""
    import numpy as np

    from cotdistill.generate.stage import run_generate
    from cotdistill.topk_store import TopkStore

    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(
        json.dumps({"id": f"p{i}", "question": f"Tom has {i} apples.", "answer": f"#### {i}"})
        + "\n" for i in range(2)))
    cfg = GenerateConfig(problems=problems, out=tmp_path / "out", n=2, max_tokens=10,
                         temperature=1.0, teacher=str(tiny_model), prompt_template="plain",
                         topk_logprobs=5)
    manifest = run_generate(cfg, backend=backend)
    traces = [json.loads(x) for x in (cfg.out / "traces.jsonl").read_text().splitlines()]
    store = TopkStore.open([cfg.out])
    assert manifest["topk"]["k"] == 5 and manifest["topk"]["vocab_size"] == 512
    for trace in traces:
        rows = store.get((trace["problem_id"], trace["sample_index"]))
        assert rows is not None and len(rows["sampled"]) == trace["num_tokens"]
        ids, logprobs = rows["ids"], rows["logprobs"].astype(np.float32)
        assert ids.shape == (trace["num_tokens"], 5) and (ids >= 0).all() and (ids < 512).all()
        assert (np.diff(logprobs, axis=1) <= 1e-3).all() and (logprobs <= 0).all()  # by rank
        # The sampled token's stored logprob is the trace's own (to float16 precision).
        assert np.allclose(rows["sampled_lp"].astype(np.float32), trace["token_logprobs"],
                           atol=2e-2, rtol=1e-2)
        # A sampled token in the top 5 is stored with the same logprob there.
        for step, token in enumerate(rows["sampled"]):
            hit = np.flatnonzero(ids[step] == token)
            if hit.size:
                assert logprobs[step, hit[0]] == pytest.approx(
                    float(rows["sampled_lp"][step]), abs=1e-3)


@pytest.mark.vllm
def test_close_stops_the_engine_processes(backend) -> None:
    # Runs last in this module: it shuts the shared engine down.
    import psutil

    me = psutil.Process()
    # multiprocessing's resource tracker lives as long as this process, and a forkserver may be
    # left by math-verify's worker pool in an earlier test: neither is the engine's.
    helpers = ("resource_tracker", "forkserver")
    before = [p for p in me.children(recursive=True)
              if not any(h in " ".join(p.cmdline()) for h in helpers)]
    assert before  # the engine core runs in its own process
    backend.close()
    gone, alive = psutil.wait_procs(before, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert not hasattr(backend, "llm")
    backend.close()  # a second close is harmless
