"""Reasoning traces on real components and tiny models: the student's chat template must keep
the thinking (TRL training stops otherwise), the label mask covers thinking and answer, a 16k
token trace trains padding-free with gradient checkpointing, and a real vLLM server started
with `--reasoning-parser deepseek_r1` feeds the generate stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cotdistill.errors import InputError
from cotdistill.train.config import TrainConfig
from cotdistill.train.data import load_examples, tokenize_example
from cotdistill.train.prepare import prepare
from cotdistill.train.stage import run_train
from tests.helpers.tiny import STRIPPING

THOUGHT = "We add 2 and 3. Maybe 6? No: 2 + 3 = 5."
ANSWER = "The answer is \\boxed{5}."


def with_template(model: Path, out: Path, template: str, extra_tokens: list[str] = ()) -> Path:
    """A copy of `model` whose tokenizer has another chat template (and maybe more tokens)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shutil.copytree(model, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = template
    if extra_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_tokens)})
        weights = AutoModelForCausalLM.from_pretrained(out)
        weights.resize_token_embeddings(len(tokenizer))
        weights.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def reasoning_sft(path: Path, count: int = 4, thought: str = THOUGHT) -> Path:
    """sft.jsonl rows as the filter writes them for a reasoning teacher."""
    from cotdistill.filter.decide import sft_row

    rows = []
    for i in range(count):
        trace = {"problem_id": f"p{i}", "sample_index": 0, "teacher": "r1",
                 "question": "What is 2 + 3?",
                 "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                 # An R1-distill completion: its <think> was in the prompt.
                 "completion": f"{thought}\n</think>\n\n{ANSWER}"}
        rows.append(sft_row(trace))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_template_that_drops_the_thinking_stops_before_training(
    tiny_model: Path, tmp_path: Path
) -> None:
    student = with_template(tiny_model, tmp_path / "r1like", STRIPPING)
    data = reasoning_sft(tmp_path / "sft.jsonl")
    with pytest.raises(InputError) as caught:
        prepare(TrainConfig(data=[data], student=str(student), out=tmp_path / "out"))
    message = str(caught.value)
    assert "--chat-template FILE" in message and "reasoning_format: plain" in message
    assert caught.value.field == "chat_template"
    # Either fix named in the error works.
    from tests.helpers.tiny import CHATML

    keep = tmp_path / "keep.jinja"
    keep.write_text(CHATML)
    fixed = prepare(TrainConfig(data=[data], student=str(student), chat_template=keep))
    assert fixed.stats.records == 4
    plain = prepare(TrainConfig(data=[data], student=str(student), reasoning_format="plain"))
    row = plain.train_rows[0]
    trained = plain.tokenizer.decode([t for t, m in zip(row.input_ids, row.completion_mask,
                                                        strict=True) if m])
    assert trained.startswith(f"{THOUGHT}\n\n{ANSWER}") and "<think>" not in trained


def test_label_mask_covers_thinking_and_answer_and_nothing_of_the_prompt(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    [example] = load_examples([reasoning_sft(tmp_path / "sft.jsonl", count=1)])
    row = tokenize_example(tokenizer, example, max_length=1024)

    rendered = tokenizer.apply_chat_template(example.prompt + example.completion, tokenize=False)
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    assert row.input_ids == encoded["input_ids"]
    # Trained: exactly the tokens from the assistant turn's first character on.
    turn = rendered.index("<think>")
    assert rendered[:turn].endswith("<|im_start|>assistant\n")
    expected = [int(start >= turn) for start, _ in encoded["offset_mapping"]]
    assert row.completion_mask == expected
    trained = [t for t, m in zip(row.input_ids, row.completion_mask, strict=True) if m]
    assert tokenizer.decode(trained) == f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}<|im_end|>\n"
    prompt_ids = tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True,
                                               return_dict=True)["input_ids"]
    assert row.input_ids[: len(prompt_ids)] == list(prompt_ids)
    assert sum(row.completion_mask) == len(row.input_ids) - len(prompt_ids)


def test_teacher_template_opening_the_thinking_is_detected(tiny_model: Path,
                                                           tmp_path: Path) -> None:
    from cotdistill.reasoning import template_opens_thinking

    messages = [{"role": "user", "content": "1 + 1"}]
    r1like = with_template(tiny_model, tmp_path / "r1like", STRIPPING)
    assert template_opens_thinking(str(r1like), messages)
    assert not template_opens_thinking(str(tiny_model), messages)
    assert not template_opens_thinking(str(tmp_path / "missing"), messages)


@pytest.mark.train
def test_16k_token_trace_trains_padding_free_with_gradient_checkpointing(
    tiny_model: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    sentence = "Sam has 12 apples and gets 7 more, so 12 + 7 = 19 apples. "
    per = len(tokenizer(sentence)["input_ids"])
    thought = sentence * (16000 // per)
    data = reasoning_sft(tmp_path / "sft.jsonl", count=2, thought=thought)
    out = tmp_path / "student"
    manifest = run_train(TrainConfig(
        data=[data], student=str(tiny_model), out=out, max_length=16384, padding_free=True,
        gradient_checkpointing=True, batch_size=2, max_steps=1, logging_steps=1,
        save_steps=100, learning_rate=1e-3,
    ))
    counts = manifest["counts"]
    assert counts["truncated"] == 0 and counts["steps"] == 1
    assert counts["tokens"] / counts["records"] > 15000  # whole traces, not cut
    assert counts["completion_tokens"] > 0.99 * counts["tokens"]
    [logged] = [e for e in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())
                if "loss" in e]
    assert logged["loss"] > 0 and logged["num_tokens"] >= counts["tokens"]


# --- a real vLLM server with a reasoning parser ----------------------------------------------


@pytest.fixture(scope="module")
def r1_server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model, with <think> tokens and an R1-like template, behind a real server."""

    from tests.helpers.servers import vllm_server

    model = with_template(tiny_model, tmp_path_factory.mktemp("r1") / "model", STRIPPING,
                          ["<think>", "</think>"])
    log = tmp_path_factory.mktemp("server") / "server.log"
    with vllm_server(model, log, "--reasoning-parser", "deepseek_r1") as url:
        yield url, model


@pytest.mark.vllm
@pytest.mark.server
def test_generate_filter_against_a_real_server_with_a_reasoning_parser(
    r1_server: tuple[str, Path], tmp_path: Path
) -> None:
    from cotdistill.filter.config import FilterConfig
    from cotdistill.filter.stage import run_filter
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate

    url, model = r1_server
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(
        json.dumps({"question": f"Sam has {i} cards and gets 3 more.", "answer": str(i + 3)})
        + "\n" for i in range(3)
    ))
    cfg = GenerateConfig(problems=problems, out=tmp_path / "gen", backend="openai",
                         base_url=url, n=2, max_tokens=16, temperature=1.0, prompt_template="r1")
    run_generate(cfg)
    traces = [json.loads(x) for x in (cfg.out / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 6
    for trace in traces:
        # The prompt opened the thinking, so the parser returned it as reasoning_content.
        assert trace["reasoning"] is not None
        assert trace["completion"].startswith("<think>\n")
        assert trace["finished_thinking"] in (True, False)
        assert trace["reasoning_tokens"] + trace["answer_tokens"] == trace["num_tokens"]
        assert 0 < trace["num_tokens"] == len(trace["token_logprobs"]) <= 16
        if not trace["finished_thinking"]:
            assert trace["reasoning_tokens"] == trace["num_tokens"] and trace["answer_text"] == ""
    report = run_filter(FilterConfig(traces=[cfg.out / "traces.jsonl"], out=tmp_path / "f"))
    unfinished = sum(not t["finished_thinking"] for t in traces)
    steps = {s["check"]: s["rejected"] for s in report["funnel"]}
    assert steps["unfinished_thinking"] == unfinished
