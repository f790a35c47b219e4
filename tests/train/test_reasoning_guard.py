"""Thinking in training data, whatever its format (issue 19, items 2 and 3).

A chat record's assistant turn may give its thinking apart (`reasoning_content`, vLLM /
DeepSeek; `reasoning`, newer servers) or inline in `<think>` markers (chat datasets, other
tools' raw traces). `train` must carry the first into the turn, and its template guard must
check every record with thinking, not only the filter's records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.errors import InputError
from cotdistill.reasoning import join_reasoning
from cotdistill.records import Message
from cotdistill.train.config import TrainConfig
from cotdistill.train.data import load_examples
from cotdistill.train.prepare import prepare
from tests.helpers.tiny import CHATML, STRIPPING

THOUGHT = "We add 2 and 3. Maybe 6? No: 2 + 3 = 5."
ANSWER = "The answer is \\boxed{5}."
WHOLE = join_reasoning(THOUGHT, ANSWER)  # what generate writes for a reasoning teacher



def chat(assistant: dict, i: int = 0) -> dict:
    return {"messages": [{"role": "user", "content": f"What is 2 + 3? ({i})"},
                         {"role": "assistant", **assistant}],
            "problem_id": f"p{i}"}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def template_file(tmp_path: Path, text: str, name: str = "t.jinja") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def trained_text(prepared, index: int = 0) -> str:
    row = prepared.train_rows[index]
    return prepared.tokenizer.decode(
        [t for t, m in zip(row.input_ids, row.completion_mask, strict=True) if m])


# ---------------------------------------------------------------- item 2: reasoning_content


@pytest.mark.parametrize(("turn", "content"), [
    ({"content": ANSWER, "reasoning_content": THOUGHT}, WHOLE),
    ({"content": ANSWER, "reasoning": THOUGHT}, WHOLE),
    ({"content": ANSWER, "reasoning_content": THOUGHT, "reasoning": THOUGHT}, WHOLE),
    # Padding around the parts, as servers return them, is trimmed the way generate does.
    ({"content": f"\n\n{ANSWER}", "reasoning_content": f"\n{THOUGHT}\n"}, WHOLE),
    # Null content: the output stopped inside the thinking; it stays unfinished.
    ({"content": None, "reasoning_content": THOUGHT},
     join_reasoning(THOUGHT, "", finished=False)),
    # Already inline and the same: kept as it is, not doubled.
    ({"content": WHOLE, "reasoning_content": THOUGHT}, WHOLE),
    # `datasets` give every turn every key, null where unset; empty means none.
    ({"content": ANSWER, "reasoning_content": None, "reasoning": None}, ANSWER),
    ({"content": ANSWER, "reasoning_content": ""}, ANSWER),
])
def test_reasoning_content_is_carried_into_the_assistant_turn(turn: dict, content: str) -> None:
    message = Message.model_validate({"role": "assistant", **turn})
    assert message.content == content
    assert set(message.model_dump()) == {"role", "content"}


@pytest.mark.parametrize(("turn", "words"), [
    ({"role": "user", "content": "2 + 3?", "reasoning_content": THOUGHT}, "only an assistant"),
    ({"role": "assistant", "content": ANSWER, "reasoning_content": THOUGHT,
      "reasoning": "Something else."}, "different thinking"),
    ({"role": "assistant", "content": join_reasoning("Other.", ANSWER),
      "reasoning_content": THOUGHT}, "they differ"),
    ({"role": "assistant", "content": ANSWER, "reasoning_content": ["not", "text"]},
     "must be text"),
])
def test_reasoning_content_that_cannot_be_carried_is_refused(turn: dict, words: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=words):
        Message.model_validate(turn)


def test_train_keeps_reasoning_content_of_chat_records(tiny_model: Path, tmp_path: Path) -> None:
    """vLLM / DeepSeek chat records: the student learns the thinking, not the bare answer."""
    data = write_jsonl(tmp_path / "chat.jsonl", [
        chat({"content": ANSWER, "reasoning_content": THOUGHT}, 0),
        chat({"content": ANSWER, "reasoning": THOUGHT}, 1),
    ])
    for example in load_examples([data]):
        assert example.completion == [{"role": "assistant", "content": WHOLE}]
        assert example.reasoning == THOUGHT and example.answer_text == ANSWER
    prepared = prepare(TrainConfig(data=[data], student=str(tiny_model)))
    assert trained_text(prepared).startswith(WHOLE)


def test_train_keeps_reasoning_content_of_a_datasets_folder(tiny_model: Path,
                                                            tmp_path: Path) -> None:
    """A `datasets` chat dataset: every turn has a null `reasoning_content` but the
    assistant's; the thinking is trained, the nulls are ignored."""
    from datasets import Dataset

    rows = [chat({"content": ANSWER, "reasoning_content": THOUGHT}, i) for i in range(2)]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    [first, _] = load_examples([tmp_path / "ds"])
    assert first.prompt[0]["content"].startswith("What is 2 + 3?")
    assert first.completion[0]["content"] == WHOLE
    assert trained_text(prepare(TrainConfig(data=[tmp_path / "ds"],
                                            student=str(tiny_model)))).startswith(WHOLE)


def test_misplaced_reasoning_content_names_file_line_and_field(tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "chat.jsonl", [
        chat({"content": ANSWER, "reasoning_content": THOUGHT}, 0),
        {"messages": [{"role": "user", "content": "2 + 3?", "reasoning_content": THOUGHT},
                      {"role": "assistant", "content": ANSWER}]},
    ])
    with pytest.raises(InputError) as caught:
        load_examples([data])
    assert caught.value.line == 2 and caught.value.field == "messages.0"
    assert "chat.jsonl" in str(caught.value)


# ---------------------------------------------------------------- item 3: the template guard


@pytest.mark.parametrize("row", [
    pytest.param(chat({"content": WHOLE}), id="chat-inline-think"),
    # R1-distill output: its <think> was in the prompt, only </think> is in the text.
    pytest.param(chat({"content": f"{THOUGHT}\n</think>\n\n{ANSWER}"}), id="chat-r1-opened"),
    pytest.param(chat({"content": ANSWER, "reasoning_content": THOUGHT}),
                 id="chat-reasoning-content"),
    pytest.param({"question": "What is 2 + 3?", "completion": WHOLE, "id": "q1"},
                 id="raw-foreign-trace"),
])
def test_template_guard_checks_records_without_a_reasoning_field(
    row: dict, tiny_model: Path, tmp_path: Path
) -> None:
    """Chat datasets and raw traces carry their thinking in the turn only; a template that
    strips it must stop the run as it does for the filter's records."""
    data = write_jsonl(tmp_path / "data.jsonl", [row])
    strip = template_file(tmp_path, STRIPPING)
    with pytest.raises(InputError) as caught:
        prepare(TrainConfig(data=[data], student=str(tiny_model), chat_template=strip))
    assert caught.value.field == "chat_template" and "data.jsonl:1" in str(caught.value)
    # A template that keeps it trains the thinking; `plain` survives the stripping one.
    kept = prepare(TrainConfig(data=[data], student=str(tiny_model),
                               chat_template=template_file(tmp_path, CHATML, "keep.jinja")))
    assert " ".join(THOUGHT.split()) in " ".join(trained_text(kept).split())
    plain = prepare(TrainConfig(data=[data], student=str(tiny_model), chat_template=strip,
                                reasoning_format="plain"))
    assert trained_text(plain).startswith(f"{THOUGHT}\n\n{ANSWER}")


def test_template_guard_checks_every_record_not_only_the_first(tiny_model: Path,
                                                               tmp_path: Path) -> None:
    """A template that drops only long thinking: the first record passes, the third does
    not; the error counts and names the ones that lose it."""
    only_long = STRIPPING.replace("'</think>' in content",
                                  "'</think>' in content and content|length > 200")
    long_thought = "Let me check again carefully. " * 10 + THOUGHT
    # As the filter writes them (its `reasoning` fields), so only the third record tells.
    data = write_jsonl(tmp_path / "data.jsonl", [
        {**chat({"content": WHOLE}, 0), "reasoning": THOUGHT, "answer_text": ANSWER},
        chat({"content": ANSWER}, 1),  # no thinking: nothing to lose
        {**chat({"content": join_reasoning(long_thought, ANSWER)}, 2),
         "reasoning": long_thought, "answer_text": ANSWER},
    ])
    with pytest.raises(InputError) as caught:
        prepare(TrainConfig(data=[data], student=str(tiny_model),
                            chat_template=template_file(tmp_path, only_long)))
    assert "1 of 2 records" in str(caught.value) and "data.jsonl:3" in str(caught.value)


def test_template_guard_reads_thinking_cut_at_max_length_uncut(tiny_model: Path,
                                                               tmp_path: Path) -> None:
    """A record cut at max_length inside its thinking is rendered again whole: the cut is
    counted as truncation, not mistaken for a template that drops the thinking."""
    data = write_jsonl(tmp_path / "data.jsonl", [chat({"content": WHOLE})])
    prepared = prepare(TrainConfig(data=[data], student=str(tiny_model), max_length=40))
    assert prepared.stats.truncated == 1
