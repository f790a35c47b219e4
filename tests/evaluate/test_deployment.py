"""The deployment table: memory arithmetic on a hand config, latency percentiles on hand-made
timings, ratios to the reference, the stage on a fake backend, and batch-1 latency through the
real vLLM engine on the tiny model (the shape of the numbers, not their size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.config import SamplingConfig
from cotdistill.evaluate.config import EvaluateConfig
from cotdistill.evaluate.measures.deployment import (
    DTYPE_BYTES,
    Timing,
    disk_bytes,
    model_memory,
    served_dtype,
)
from cotdistill.evaluate.measures.deployment_table import deployment_table, render_deployment
from cotdistill.evaluate.measures.latency import measure_latency, summarize_latency
from cotdistill.evaluate.sources import parameter_count
from cotdistill.evaluate.stage import run_evaluate
from cotdistill.records import Message

CONFIG = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 100}


def test_model_memory_hand_computed() -> None:
    memory = model_memory(1000, CONFIG, "bfloat16", request_tokens=10)
    assert memory == {
        "weights": 2000,
        # KV per token: 2 (k, v) x 2 layers x 1 kv head x 32 dims x 2 bytes = 256.
        "kv_one_request": 2560,
        # 10 tokens x (4 x 64 + 2 x 128) x 2 bytes + 100 float32 logits.
        "activations": 10 * 512 * 2 + 400,
        "total": 2000 + 2560 + 10640,
    }
    assert model_memory(1000, None, "float32", 10)["weights"] == 4000
    # float32 KV cache, and head_dim from hidden / heads: twice the bytes per token.
    assert model_memory(1000, {**CONFIG, "head_dim": None}, "float32", 10)["kv_one_request"] \
        == 2 * 2 * 1 * 32 * 4 * 10
    assert model_memory(None, CONFIG, "bfloat16", 10)["total"] is None
    assert model_memory(1000, {"hidden_size": 64}, "float16", 10) == {
        "weights": 2000, "kv_one_request": None, "activations": None, "total": None,
    }


@pytest.mark.parametrize(
    ("engine", "stored", "expected"),
    [
        ("auto", "bfloat16", "bfloat16"),
        ("auto", "float16", "float16"),
        ("auto", "float32", "bfloat16"),
        ("float32", "bfloat16", "float32"),
        ("auto", None, None),
    ],
)
def test_served_dtype(engine: str, stored: str | None, expected: str | None) -> None:
    assert served_dtype(engine, {"torch_dtype": stored} if stored else {}) == expected


def test_disk_bytes_counts_the_folder_own_files(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    (tmp_path / "b").write_bytes(b"12345")
    (tmp_path / "checkpoint-1").mkdir()
    (tmp_path / "checkpoint-1" / "c").write_bytes(b"x" * 100)
    assert disk_bytes(tmp_path) == 8
    assert disk_bytes(tmp_path / "missing") is None and disk_bytes(None) is None


def test_latency_percentiles_on_hand_made_timings() -> None:
    timings = [Timing(0.1 * k, float(k), 11, 20 + k) for k in range(1, 6)]
    stats = summarize_latency(timings)
    assert stats["requests"] == 5
    assert stats["e2e_p50_s"] == pytest.approx(3.0)
    assert stats["e2e_p95_s"] == pytest.approx(4.8)  # linear between 4 and 5
    assert stats["ttft_p50_s"] == pytest.approx(0.3)
    # Decode per token after the first: (3 - 0.3) / 10 at the median.
    assert stats["decode_s_per_token_p50"] == pytest.approx(0.27)
    assert stats["mean_output_tokens"] == 11 and stats["max_prompt_tokens"] == 25
    assert len(stats["timings"]) == 5
    unknown = summarize_latency([Timing(None, 2.0, 5, None)])
    assert unknown["ttft_p50_s"] is None and unknown["e2e_p50_s"] == 2.0


def test_any_backend_is_timed_one_request_at_a_time() -> None:
    backend = FakeBackend()
    ticks: list[int] = []
    conversations = [[Message(role="user", content=f"What is {i} + 1?")] for i in range(3)]
    stats = measure_latency(backend, conversations, SamplingConfig(n=4, max_tokens=50),
                            ticks.append)
    assert backend.calls == 4  # one warm-up, then one call per prompt
    assert ticks == [1, 1, 1, 1]
    assert stats["requests"] == 3 and stats["ttft_p50_s"] is None
    assert stats["e2e_p95_s"] >= stats["e2e_p50_s"] > 0
    assert "one generate call per prompt" in stats["method"]
    assert measure_latency(backend, [], SamplingConfig()) is None


def test_table_ratios_to_the_reference(tmp_path: Path) -> None:
    teacher_dir, student_dir = tmp_path / "t", tmp_path / "s"
    for folder, size in ((teacher_dir, 400), (student_dir, 100)):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**CONFIG, "torch_dtype": "bfloat16"}))
        (folder / "model.safetensors").write_bytes(b"0" * size)
    models = {
        "teacher": {"served_path": str(teacher_dir), "parameters": 4000, "accuracy": 0.8,
                    "output_tokens_per_s": 100.0, "peak_memory_mb": 900.0,
                    "latency": {"ttft_p50_s": 0.2, "decode_s_per_token_p50": 0.02,
                                "e2e_p50_s": 2.0, "e2e_p95_s": 3.0,
                                "requests": 8, "max_prompt_tokens": 6, "method": "m",
                                "served_dtype": "bfloat16", "kv_cache_tokens": 1024}},
        "student": {"served_path": str(student_dir), "parameters": 1000, "accuracy": 0.6,
                    "output_tokens_per_s": 300.0, "peak_memory_mb": 800.0,
                    "latency": {"ttft_p50_s": 0.05, "decode_s_per_token_p50": 0.01,
                                "e2e_p50_s": 0.5, "e2e_p95_s": 1.5,
                                "requests": 8, "max_prompt_tokens": 6, "method": "m",
                                "served_dtype": "bfloat16"}},
    }
    table = deployment_table(models, "teacher", max_tokens=4)
    student = table["student"]
    assert student["weights_bytes"] == 2000 and table["teacher"]["weights_bytes"] == 8000
    assert student["model_memory_tokens"] == 10
    assert student["model_memory_bytes"] == model_memory(1000, CONFIG, "bfloat16", 10)["total"]
    assert student["ratios"]["parameters"] == pytest.approx(0.25)
    assert student["ratios"]["weights_bytes"] == pytest.approx(0.25)
    assert student["ratios"]["e2e_p50_s"] == pytest.approx(0.25)
    assert student["ratios"]["throughput_tok_s"] == pytest.approx(3.0)
    assert student["ratios"]["accuracy"] == pytest.approx(0.75)
    assert student["ratios"]["disk_bytes"] == pytest.approx(
        disk_bytes(student_dir) / disk_bytes(teacher_dir)
    )
    assert table["teacher"]["ratios"]["parameters"] == 1.0
    # The engine's reservation: 1024 tokens x 256 bytes; unknown where not reported.
    assert table["teacher"]["engine_kv_reserved_bytes"] == 1024 * 256
    assert student["engine_kv_reserved_bytes"] is None
    text = "\n".join(render_deployment(table, "teacher"))
    assert "| teacher (reference) | 0.0 M |" in text
    assert "| student | 0.0 M (0.25x) |" in text
    assert "500 (0.25x)" in text and "0.600 (0.75x)" in text and "10.0 (0.50x)" in text
    assert "8 evaluation prompts sent one at a time" in text


def fake_problems(tmp_path: Path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(
        json.dumps({"id": f"p{i}", "question": f"What is {i} + 2?", "answer": str(i + 2)}) + "\n"
        for i in range(4)
    ))
    return path


def test_stage_adds_the_deployment_table(tmp_path: Path) -> None:
    built: list[FakeBackend] = []

    def factory(path: str) -> FakeBackend:
        built.append(FakeBackend(path))
        return built[-1]

    config = EvaluateConfig(problems=fake_problems(tmp_path), out=tmp_path / "eval",
                            model=["teacher=a", "student=b"], prompt_template="plain",
                            latency_prompts=2, bootstrap_resamples=50)
    run_evaluate(config, factory)
    # One batch for the evaluation, then a warm-up and two batch-1 requests.
    assert [b.calls for b in built] == [4, 4]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["models"]["student"]["latency"]["requests"] == 2
    assert set(summary["deployment"]) == {"teacher", "student"}
    assert summary["deployment"]["student"]["ratios"]["accuracy"] == pytest.approx(1.0)
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Deployment" in report and "| student |" in report
    assert "2 evaluation prompts sent one at a time" in report

    config = config.model_copy(update={"latency_prompts": 0, "out": tmp_path / "off"})
    built.clear()
    run_evaluate(config, factory)
    assert [b.calls for b in built] == [1, 1]
    summary = json.loads((tmp_path / "off" / "summary.json").read_text())
    assert "latency" not in summary["models"]["student"]
    assert "not measured (`latency_prompts: 0`)" in (tmp_path / "off" / "report.md").read_text()


@pytest.mark.vllm
def test_batch_one_latency_on_the_real_engine(tiny_model: Path, tmp_path: Path) -> None:
    config = EvaluateConfig(
        problems=fake_problems(tmp_path), out=tmp_path / "eval", model=[f"teacher={tiny_model}"],
        prompt_template="plain", n=1, max_tokens=8, latency_prompts=3, bootstrap_resamples=50,
        max_model_len=512,
    )
    run_evaluate(config)
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    latency = summary["models"]["teacher"]["latency"]
    assert latency["method"].startswith("vllm engine step loop")
    assert latency["requests"] == 3 and len(latency["timings"]) == 3
    for timing in latency["timings"]:
        assert 0 < timing["ttft_s"] <= timing["e2e_s"]
        assert 1 <= timing["output_tokens"] <= 8
        assert timing["prompt_tokens"] > 0
    assert latency["ttft_p50_s"] <= latency["ttft_p95_s"]
    assert latency["e2e_p50_s"] <= latency["e2e_p95_s"]
    assert latency["served_dtype"] in DTYPE_BYTES

    row = summary["deployment"]["teacher"]
    parameters = parameter_count(tiny_model)
    assert row["parameters"] == parameters
    assert row["weights_bytes"] == parameters * DTYPE_BYTES[latency["served_dtype"]]
    assert row["model_memory_bytes"] > row["weights_bytes"]
    assert row["disk_bytes"] >= (tiny_model / "model.safetensors").stat().st_size
    assert row["ttft_p50_s"] == latency["ttft_p50_s"] and row["throughput_tok_s"] > 0
    # The engine holds room for far more than one request's KV cache.
    assert latency["kv_cache_tokens"] > latency["max_prompt_tokens"] + 8
    assert row["engine_kv_reserved_bytes"] > row["model_memory_parts"]["kv_one_request"]
    assert "| teacher (reference) |" in (tmp_path / "eval" / "report.md").read_text()


# --- issue 19: latency on prompts the engine has not seen ---------------------------------------


class RecordingBackend(FakeBackend):
    """Keeps the user turns of every `generate` call, in order."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.sent: list[list[str]] = []

    def generate(self, conversations, sampling, progress=None):
        self.sent.append([c[-1].content for c in conversations])
        return super().generate(conversations, sampling, progress)


def test_latency_prompts_differ_from_the_evaluation_and_the_warmup_is_not_timed(
    tmp_path: Path
) -> None:
    built: list[RecordingBackend] = []

    def factory(path: str) -> RecordingBackend:
        built.append(RecordingBackend(path))
        return built[-1]

    config = EvaluateConfig(problems=fake_problems(tmp_path), out=tmp_path / "eval",
                            model=["teacher=a"], prompt_template="plain", latency_prompts=3,
                            bootstrap_resamples=20)
    run_evaluate(config, factory)
    [evaluation, [warmup], *timed] = built[0].sent
    timed_prompts = [p for [p] in timed]
    assert len(timed_prompts) == 3
    # None of the timed prompts (nor the warm-up) is one the engine has just served ...
    assert not set(timed_prompts + [warmup]) & set(evaluation)
    # ... the warm-up is not timed again, and each timed prompt is the same question, tagged.
    assert warmup not in timed_prompts and len(set(timed_prompts)) == 3
    for prompt, question in zip(timed_prompts, evaluation[:3], strict=True):
        assert prompt.endswith("] " + question) and prompt != question
    latency = json.loads((tmp_path / "eval" / "summary.json").read_text())[
        "models"]["teacher"]["latency"]
    assert latency["unseen_prompts"] is True and latency["requests"] == 3


class FakeEngine:
    """The parts of vLLM's LLMEngine the step loop uses; one output token per request."""

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.pending: list[str] = []

    def add_request(self, request_id, prompt, params) -> None:
        self.events.append(f"add {request_id}")
        self.pending.append(request_id)

    def has_unfinished_requests(self) -> bool:
        return bool(self.pending)

    def step(self):
        from types import SimpleNamespace

        self.pending.pop()
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[1])])]


class FakeLLM:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.llm_engine = FakeEngine(self.events)

    def get_tokenizer(self):
        from types import SimpleNamespace

        return SimpleNamespace(
            apply_chat_template=lambda messages, **kw: messages[-1]["content"],
            encode=lambda text, **kw: list(range(len(text))),
        )

    def reset_prefix_cache(self) -> bool:
        self.events.append("reset")
        return True


def test_vllm_latency_resets_the_prefix_cache_before_each_timed_request() -> None:
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    llm = FakeLLM()
    conversations = [[Message(role="user", content=f"What is {i} + 1?")] for i in range(2)]
    stats = measure_latency(SimpleNamespace(llm=llm), conversations, SamplingConfig(max_tokens=4))
    assert llm.events == ["add latency-warmup", "reset", "add latency-0", "reset",
                          "add latency-1"]
    assert stats["prefix_cache_reset"] is True and stats["requests"] == 2
