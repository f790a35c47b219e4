"""Reasoning-model teachers: `<think>` traces from generation (fake backend, stub OpenAI server
returning `reasoning_content`) through the filter, the SFT record and evaluation summaries."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.backends.openai_backend import OpenAIBackend
from cotdistill.config import EngineConfig, SamplingConfig, load_config
from cotdistill.filter.config import CHECKS, FilterConfig
from cotdistill.filter.decide import sft_row
from cotdistill.filter.stage import filter_traces, run_filter
from cotdistill.generate.config import GenerateConfig
from cotdistill.generate.stage import run_generate
from cotdistill.prompts import load_template
from cotdistill.reasoning import (
    Markers,
    join_reasoning,
    split_reasoning,
    token_split,
    trace_reasoning,
)
from cotdistill.records import Message, Trace
from tests.helpers.servers import Stub

ROOT = Path(__file__).resolve().parents[2]

# The thinking tries \boxed{3}, abandons it, and the answer after the thinking says 5.
THOUGHT = "Maybe it is \\boxed{3}. No wait, 2 + 3 is 5, let me check: yes 5."
FINISHED = f"<think>\n{THOUGHT}\n</think>\n\nThe sum is \\boxed{{5}}."


# --- splitting -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "opened", "reasoning", "answer", "finished"),
    [
        ("2 + 3 = 5, so \\boxed{5}.", False, None, "2 + 3 = 5, so \\boxed{5}.", None),
        (FINISHED, False, THOUGHT, "The sum is \\boxed{5}.", True),
        # R1 distills: `<think>` was in the prompt, only the end marker is in the completion.
        (f"{THOUGHT}\n</think>\n\nSo \\boxed{{5}}.", False, THOUGHT, "So \\boxed{5}.", True),
        (f"{THOUGHT} and then", True, f"{THOUGHT} and then", "", False),
        (f"<think>\n{THOUGHT} and", False, f"{THOUGHT} and", "", False),
        ("<think>\nhm\n</think>\n\n", False, "hm", "", True),
        # A model that repeats the opening marker after a template opened it.
        (f"<think>\n{THOUGHT}\n</think>\nok", True, THOUGHT, "ok", True),
    ],
)
def test_split_reasoning(text: str, opened: bool, reasoning: str | None, answer: str,
                         finished: bool | None) -> None:
    split = split_reasoning(text, Markers(), opened)
    assert (split.reasoning, split.answer_text, split.finished_thinking) == (
        reasoning, answer, finished)


def test_custom_markers() -> None:
    split = split_reasoning("[T]a b[/T] c", Markers("[T]", "[/T]"))
    assert (split.reasoning, split.answer_text, split.finished_thinking) == ("a b", "c", True)
    assert split_reasoning("[T]a b[/T] c").reasoning is None  # default markers: no thinking


def test_token_split_exact_from_token_texts_else_by_characters() -> None:
    tokens = ["<think>", "\n", "a", " b", "</", "think>", "\n\n", "c"]
    assert token_split(8, "".join(tokens), 0, tokens) == (6, 2)
    assert token_split(3, "ab", 0, ["a", "b", "c"]) == (3, 0)  # never closed: all thinking
    # 30 of 40 characters are thinking: 3/4 of the tokens.
    assert token_split(100, "x" * 40, 30) == (75, 25)
    assert token_split(None, "x", 1) == (None, None)


def old_trace(completion: str, num_tokens: int = 40, **extra) -> Trace:
    """A trace as written before reasoning support: no reasoning fields at all."""
    return Trace.model_validate({
        "problem_id": "p1", "sample_index": 0, "question": "What is 2 + 3?",
        "gold_answer": "5", "messages": [{"role": "user", "content": "What is 2 + 3?"}],
        "completion": completion, "finish_reason": extra.pop("finish", "stop"),
        "num_tokens": num_tokens, "mean_logprob": -0.2, "min_logprob": -0.5,
        "teacher": "t", "prompt_template": "r1", "prompt_hash": "h",
        "sampling": {"temperature": 0.6, "top_p": 0.95, "max_tokens": 64, "n": 1}, **extra,
    })


def test_older_traces_read_and_are_split_lazily() -> None:
    trace = old_trace(FINISHED, num_tokens=40)
    assert trace.reasoning is None and trace.answer_text is None
    assert trace.finished_thinking is None and trace.reasoning_tokens is None
    view = trace_reasoning(trace)
    assert view.reasoning == THOUGHT and view.answer_text == "The sum is \\boxed{5}."
    assert view.finished_thinking is True
    assert view.reasoning_tokens + view.answer_tokens == 40
    assert view.reasoning_tokens > view.answer_tokens > 0
    plain = trace_reasoning(old_trace("so \\boxed{5}"))
    assert (plain.reasoning, plain.finished_thinking, plain.answer_tokens) == (None, None, 40)


# --- generate --------------------------------------------------------------------------------


def problems_file(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"id": "a", "question": "What is 2 + 3?", "answer": "5"}) + "\n")
    return path


def generate(tmp_path: Path, responder: Callable[[str, int], str], **values) -> list[dict]:
    cfg = GenerateConfig(problems=problems_file(tmp_path), out=tmp_path / "gen",
                         prompt_template="r1", **values)
    run_generate(cfg, FakeBackend(responder=responder))
    return [json.loads(x) for x in (cfg.out / "traces.jsonl").read_text().splitlines()]


def test_generate_splits_thinking_and_keeps_the_raw_completion(tmp_path: Path) -> None:
    [trace] = generate(tmp_path, lambda q, i: FINISHED)
    assert trace["completion"] == FINISHED
    assert trace["reasoning"] == THOUGHT and trace["answer_text"] == "The sum is \\boxed{5}."
    assert trace["finished_thinking"] is True
    assert trace["reasoning_tokens"] + trace["answer_tokens"] == trace["num_tokens"]
    assert trace["reasoning_tokens"] > trace["answer_tokens"] > 0


def test_generate_non_reasoning_traces_leave_the_fields_null(tmp_path: Path) -> None:
    [trace] = generate(tmp_path, lambda q, i: "2 + 3 = 5. \\boxed{5}")
    assert all(trace[k] is None for k in ("reasoning", "answer_text", "reasoning_tokens",
                                          "answer_tokens", "finished_thinking"))


def test_generate_template_that_opens_the_thinking(tmp_path: Path) -> None:
    # Cut off by max_tokens while thinking, and no marker at all in the completion.
    [trace] = generate(tmp_path, lambda q, i: "Let me think " * 20, max_tokens=10,
                       think_in_prompt="yes")
    assert trace["finish_reason"] == "length" and trace["finished_thinking"] is False
    assert trace["reasoning"] == trace["completion"].strip() and trace["answer_text"] == ""
    assert trace["reasoning_tokens"] == 10 and trace["answer_tokens"] == 0
    [again] = generate(tmp_path / "no", lambda q, i: "Let me think " * 20, max_tokens=10,
                       think_in_prompt="no")
    assert again["reasoning"] is None


def test_r1_template_and_enable_thinking_kwargs() -> None:
    from cotdistill.prompts import chat_template_kwargs

    template = load_template("r1")
    [message] = template.render("What is 2 + 3?")  # no system prompt
    assert message.role == "user" and message.content.startswith("What is 2 + 3?\n")
    assert message.content.endswith(
        "Please reason step by step, and put your final answer within \\boxed{}.")
    assert chat_template_kwargs(None) == {}
    assert chat_template_kwargs(False) == {"enable_thinking": False}


# --- the OpenAI backend: reasoning_content from a stub server --------------------------------


@pytest.fixture
def stub_factory() -> Iterator[Callable[..., Stub]]:
    made: list[Stub] = []

    def make(reply) -> Stub:
        made.append(Stub(reply))
        return made[-1]

    yield make
    for stub in made:
        stub.close()


def reasoning_reply(reasoning: str, content: str | None, tokens: list[str], finish: str,
                    field: str = "reasoning_content") -> dict:
    message = {"role": "assistant", "content": content, field: reasoning}
    return {
        "id": "x", "object": "chat.completion", "created": 0, "model": "stub-model",
        "choices": [{
            "index": 0, "message": message, "finish_reason": finish,
            "logprobs": {"content": [{"token": t, "logprob": -0.5, "bytes": None,
                                      "top_logprobs": []} for t in tokens]},
        }],
    }


def test_reasoning_content_is_kept_and_the_completion_rebuilt(stub_factory) -> None:
    # What vLLM --reasoning-parser deepseek_r1 returns for an R1 distill: the thinking apart.
    tokens = ["Maybe", " 3", ".", " No", ",", " 5", ".", "</think>", "\n\n", "So", " 5", "."]
    stub = stub_factory(lambda n, body: (200, reasoning_reply("Maybe 3. No, 5.", "\n\nSo 5.",
                                                                tokens, "stop")))
    [[done]] = OpenAIBackend("stub-model", EngineConfig(backend="openai", base_url=stub.url)
                             ).generate([[Message(role="user", content="2 + 3?")]],
                                        SamplingConfig())
    assert done.reasoning == "Maybe 3. No, 5."
    assert done.text == "<think>\nMaybe 3. No, 5.\n</think>\n\nSo 5."
    assert done.num_tokens == 12 and done.reasoning_tokens == 8  # through the </think> token
    assert "chat_template_kwargs" not in stub.posts()[0][2]


def test_generate_over_a_stub_server_with_reasoning(stub_factory, tmp_path: Path) -> None:
    replies = [
        # Stopped by the token limit inside the thinking: no content, no </think> token.
        reasoning_reply("I think \\boxed{5} maybe", None, ["I", " think", " \\boxed{5}",
                                                           " maybe"], "length",
                        field="reasoning"),
    ]
    stub = stub_factory(lambda n, body: (200, replies[0]))
    cfg = GenerateConfig(problems=problems_file(tmp_path), out=tmp_path / "out",
                         backend="openai", base_url=stub.url, prompt_template="r1",
                         enable_thinking=True)
    run_generate(cfg)
    [trace] = [json.loads(x) for x in (cfg.out / "traces.jsonl").read_text().splitlines()]
    assert trace["completion"] == "<think>\nI think \\boxed{5} maybe"
    assert trace["reasoning"] == "I think \\boxed{5} maybe" and trace["answer_text"] == ""
    assert trace["finished_thinking"] is False
    assert (trace["reasoning_tokens"], trace["answer_tokens"]) == (4, 0)
    assert stub.posts()[0][2]["chat_template_kwargs"] == {"enable_thinking": True}
    # The filter ignores the \boxed{} inside the abandoned thinking.
    kept, rejected, _ = filter_traces([Trace.model_validate(trace)], FilterConfig())
    assert not kept and rejected[0]["predicted_answer"] is None
    assert rejected[0]["reasons"][0] == "unfinished_thinking"


# --- filter ----------------------------------------------------------------------------------


def reasons(traces: list[Trace], **config) -> list[tuple[list[str], str | None]]:
    kept, rejected, _ = filter_traces(traces, FilterConfig(**config))
    rows = sorted(kept + rejected, key=lambda r: r["problem_id"])
    return [(r["reasons"], r["predicted_answer"]) for r in rows]


def test_answer_comes_from_after_the_thinking_only() -> None:
    # The thinking's \boxed{3} is abandoned; the answer after it says 5.
    assert reasons([old_trace(FINISHED)]) == [([], "5")]
    wrong = FINISHED.replace("\\boxed{5}.", "\\boxed{4}.")
    assert reasons([old_trace(wrong)])[0] == (["wrong"], "4")


def test_unfinished_thinking_is_its_own_reason_before_truncated() -> None:
    text = f"<think>\n{THOUGHT} and \\boxed{{5}}"
    [(why, predicted)] = reasons([old_trace(text, finish="length")])
    assert why[0] == "unfinished_thinking" and "truncated" in why and predicted is None
    assert CHECKS.index("unfinished_thinking") < CHECKS.index("truncated")
    assert reasons([old_trace(text, finish="length")], drop_unfinished_thinking=False,
                   drop_truncated=False, require_correct=False, require_answer=False) == [
        ([], None)]


def test_finished_thinking_with_nothing_after_it() -> None:
    text = "<think>\nWe add: 2 + 3 = 5. So the answer is 5.\n</think>\n"
    [(why, predicted)] = reasons([old_trace(text)])
    assert why[0] == "no_final_answer" and predicted is None
    assert CHECKS.index("no_final_answer") < CHECKS.index("no_answer")
    # Only when asked, the answer is read from the end of the thinking.
    assert reasons([old_trace(text)], answer_from_reasoning=True,
                   require_final_answer=False) == [([], "5")]


def test_reasoning_and_answer_lengths_are_bounded_separately() -> None:
    trace = old_trace(FINISHED).model_copy(update={
        "reasoning": THOUGHT, "answer_text": "The sum is \\boxed{5}.", "finished_thinking": True,
        "reasoning_tokens": 900, "answer_tokens": 30})
    assert reasons([trace], max_reasoning_tokens=1000, max_answer_tokens=50) == [([], "5")]
    assert reasons([trace], max_reasoning_tokens=800)[0][0] == ["reasoning_too_long"]
    assert reasons([trace], max_answer_tokens=20)[0][0] == ["answer_too_long"]
    plain = old_trace("so \\boxed{5}", num_tokens=900)
    assert reasons([plain], max_reasoning_tokens=10, max_answer_tokens=10) == [([], "5")]


def test_non_reasoning_traces_are_read_as_before() -> None:
    # The whole completion is the answer text: the last \boxed{} wins, as always.
    assert reasons([old_trace("try \\boxed{3}, no: \\boxed{5}")]) == [([], "5")]


def test_report_shows_thinking_lengths_of_correct_and_wrong(tmp_path: Path) -> None:
    rows = []
    for i in range(6):
        answer = "5" if i % 2 == 0 else "4"
        thought = "step " * (10 + 40 * (i % 2))  # the wrong ones think longer
        rows.append(old_trace(f"<think>\n{thought}\n</think>\n\nSo \\boxed{{{answer}}}.",
                              num_tokens=20 + 40 * (i % 2), sample_index=i).model_dump())
    rows[0]["problem_id"] = "p0"
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "filter"
    run_filter(FilterConfig(traces=[path], out=out, dedup="off", max_repeat_ngram_share=None))
    report = json.loads((out / "report.json").read_text())["reasoning"]
    assert report["traces_with_thinking"] == 6 and report["unfinished_thinking"] == 0
    correct, wrong = report["correct"]["reasoning_tokens"], report["wrong"]["reasoning_tokens"]
    assert correct["count"] == 3 and wrong["count"] == 3
    assert wrong["p50"] > correct["p50"]
    markdown = (out / "report.md").read_text()
    assert "## Thinking length" in markdown and "reasoning_lengths.png" in markdown
    assert (out / "reasoning_lengths.png").stat().st_size > 0
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert sft and all(r["messages"][-1]["content"].startswith("<think>\n") for r in sft)


def test_non_reasoning_report_has_no_thinking_section(tmp_path: Path) -> None:
    _, _, report = filter_traces([old_trace("so \\boxed{5}")], FilterConfig())
    assert report["reasoning"] is None


def test_sft_record_puts_the_thinking_back_inside_the_markers() -> None:
    # An R1-distill trace: `<think>` was in the prompt, so not in the completion.
    trace = old_trace(f"{THOUGHT}\n</think>\n\nSo \\boxed{{5}}.").model_dump(mode="json")
    row = sft_row(trace)
    assert row["messages"][-1] == {
        "role": "assistant", "content": f"<think>\n{THOUGHT}\n</think>\n\nSo \\boxed{{5}}."}
    assert row["reasoning"] == THOUGHT and row["answer_text"] == "So \\boxed{5}."
    plain = sft_row(old_trace("so \\boxed{5}").model_dump(mode="json"))
    assert plain["messages"][-1]["content"] == "so \\boxed{5}" and "reasoning" not in plain
    assert join_reasoning(None, "x") == "x"


# --- evaluate --------------------------------------------------------------------------------


def test_evaluate_reports_thinking_per_model() -> None:
    from cotdistill.evaluate.report import thinking_section
    from cotdistill.evaluate.score import evaluate_model
    from cotdistill.evaluate.summary import summarize_model
    from cotdistill.records import Problem

    answers = {0: FINISHED, 1: FINISHED.replace("\\boxed{5}.", "\\boxed{4}."),
               2: "<think>\n" + "hmm " * 30}
    problems = [Problem(id=f"p{i}", question=f"q{i}", gold_answer="5") for i in range(3)]
    backend = FakeBackend(responder=lambda q, i: answers[int(q[1])])

    def verify(pairs):
        return ["correct" if pred == gold else "wrong" for gold, pred in pairs]

    template = load_template("plain")
    samples, _ = evaluate_model("m", problems, template, backend,
                                SamplingConfig(max_tokens=1000), verify)
    assert [s.predicted_answer for s in samples] == ["5", "4", None]
    assert [s.finished_thinking for s in samples] == [True, True, False]
    thinking = summarize_model(samples, resamples=10)["thinking"]
    assert thinking["samples_with_thinking"] == 3
    assert thinking["unfinished_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert thinking["accuracy_finished"] == 0.5 and thinking["accuracy_unfinished"] == 0.0
    assert thinking["mean_thinking_tokens"] > thinking["mean_answer_tokens"] > 0
    table = "\n".join(thinking_section({"m": {"thinking": thinking}}))
    assert "## Thinking" in table and "| m | 3 |" in table
    plain, _ = evaluate_model("m", problems[:1], template,
                              FakeBackend(responder=lambda q, i: "\\boxed{5}"),
                              SamplingConfig(), verify)
    assert summarize_model(plain, resamples=10)["thinking"] is None


# --- the shipped GPU config ------------------------------------------------------------------


def test_shipped_reasoning_config_validates() -> None:
    from cotdistill.run.config import PipelineConfig
    from cotdistill.run.plan import plan

    path = ROOT / "configs" / "reasoning_r1_qwen.yaml"
    config = load_config(PipelineConfig, path)
    steps = plan(config.model_copy(update={
        "problems": ROOT / config.problems, "eval_problems": ROOT / config.eval_problems,
    }), path).steps
    generate_cfg, filter_cfg = steps[0].config, steps[1].config
    assert generate_cfg.prompt_template == "r1"
    assert (generate_cfg.temperature, generate_cfg.top_p) == (0.6, 0.95)
    assert generate_cfg.max_tokens >= 16384 and generate_cfg.max_model_len > 16384
    assert filter_cfg.drop_unfinished_thinking and not filter_cfg.answer_from_reasoning
    train = next(s.config for s in steps if s.kind == "train")
    assert train.max_length >= 16384 and train.padding_free and train.gradient_checkpointing
    assert train.reasoning_format == "think"
    assert steps[-1].kind == "evaluate" and steps[-1].config.max_tokens >= 16384


def test_vllm_engine_gets_enable_thinking_as_chat_template_kwargs(monkeypatch) -> None:
    import vllm

    from cotdistill.backends.vllm_backend import VLLMBackend

    seen: list[object] = []

    class FakeLLM:
        def __init__(self, **kwargs) -> None:
            pass

        def chat(self, messages, params, use_tqdm=False, chat_template_kwargs=None):
            seen.append(chat_template_kwargs)
            return []

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    for switch, expected in ((True, {"enable_thinking": True}), (None, None)):
        backend = VLLMBackend("m", EngineConfig(enable_thinking=switch))
        backend.generate([], SamplingConfig())
        assert seen[-1] == expected
