"""Traces made by other tools: the shapes the filter accepts, the field map, the checks that
cannot run without cotdistill's bookkeeping fields, and ids that collide across files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cotdistill.cli import main as cli_main
from cotdistill.errors import InputError
from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import run_filter
from cotdistill.infra.files import dump_line
from cotdistill.problems import question_id
from cotdistill.records import Message, Sampling, Trace
from cotdistill.traces import TraceFields, read_traces


def write(path: Path, rows: list[dict[str, Any] | str]) -> Path:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outcome(out: Path) -> dict[tuple[str, int], list[str]]:
    """{(problem_id, sample_index): reasons} over kept and rejected; each trace exactly once."""
    rows = rows_of(out / "kept.jsonl") + rows_of(out / "rejected.jsonl")
    keys = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys))
    return {(r["problem_id"], r["sample_index"]): r["reasons"] for r in rows}


ADD = "What is 2 + 3?"
SUB = "Compute 10 - 4."
MUL = "What is 7 * 6?"

# A published-dataset shape (OpenR1-Math-like): problem, answer or solution, and either a list
# of generations or one completion under one of the usual names. No logprobs, no token counts.
GENERATIONS = [
    {"problem": ADD, "answer": "5", "generations": [
        "Two plus three makes five. The answer is \\boxed{5}.",
        "Two and three: I get \\boxed{6}.",
        "I cannot tell what is being asked here.",
    ]},
    {"id": "sub", "problem": SUB, "solution": "Ten take four is \\boxed{6}.",
     "completion": "Ten minus four is 6. The answer is 6."},
    {"question": MUL, "answer": "#### 42", "output": "Seven sixes are 42. The answer is 42."},
]


def test_generations_and_single_completions_without_logprobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "openr1.jsonl", GENERATIONS)
    out = tmp_path / "out"
    manifest = run_filter(FilterConfig(traces=[path], out=out))
    add = question_id(ADD)
    assert outcome(out) == {
        (add, 0): [],
        (add, 1): ["wrong"],
        (add, 2): ["no_answer"],
        ("sub", 0): [],  # gold read from the solution's \boxed{}
        (question_id(MUL), 0): [],  # gold read from "#### 42"
    }
    assert manifest["counts"]["kept"] == 3 and manifest["counts"]["rejected"] == 2
    kept = rows_of(out / "kept.jsonl")
    assert [r["gold_answer"] for r in kept] == ["5", "6", "42"]
    assert kept[0]["source"] == f"{path}:1" and kept[0]["mean_logprob"] is None
    assert kept[0]["num_tokens"] is None and kept[0]["prompt_hash"] is None
    # Without prompt messages, the question is the user turn of the training conversation.
    sft = rows_of(out / "sft.jsonl")
    assert sft[0]["messages"] == [
        {"role": "user", "content": ADD},
        {"role": "assistant", "content": GENERATIONS[0]["generations"][0]},
    ]
    # Which checks could not run: said once on the terminal and in both reports.
    notes = json.loads((out / "report.json").read_text())["checks_not_run"]
    assert any(n.startswith("5 of 5 traces have no token logprobs") for n in notes)
    assert any("no finish_reason" in n for n in notes) and any("no num_tokens" in n for n in notes)
    assert capsys.readouterr().out.count("have no token logprobs") == 1
    assert "## Checks that could not run" in (out / "report.md").read_text()


def test_a_confidence_or_length_threshold_without_the_field_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "openr1.jsonl", GENERATIONS)
    for threshold in ({"min_mean_logprob": -1.0}, {"min_token_logprob": -5.0},
                      {"min_tokens": 3}, {"max_tokens": 100}):
        with pytest.raises(InputError) as info:
            run_filter(FilterConfig(traces=[path], out=tmp_path / "out", **threshold))
        assert info.value.file == str(path) and info.value.line == 1
    assert not (tmp_path / "out").exists()


CHAT = "What is 1 + 1?"
MESSAGES = [
    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": CHAT},
                  {"role": "assistant", "content": "One and one is 2. The answer is 2."}],
     "answer": "2", "token_logprobs": [-0.1, -0.2, -0.3]},
    {"messages": [{"role": "user", "content": CHAT},
                  {"role": "assistant", "content": "Perhaps it is two. The answer is 2."}],
     "answer": "2", "token_logprobs": [-3.0, -2.0]},
    {"messages": [{"role": "user", "content": "What is 3 + 3?"},
                  {"role": "assistant", "content": "Three and three is 7. The answer is 7."}],
     "answer": "6", "mean_logprob": -0.2, "min_logprob": -0.5, "finish_reason": "stop"},
]


def test_messages_conversations_with_logprobs(tmp_path: Path) -> None:
    path = write(tmp_path / "chat.jsonl", MESSAGES)
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[path], out=out, min_mean_logprob=-1.0))
    chat = question_id(CHAT)
    assert outcome(out) == {
        (chat, 0): [],
        (chat, 1): ["low_mean_logprob"],  # mean -2.5 < -1.0
        (question_id("What is 3 + 3?"), 0): ["wrong"],
    }
    kept = rows_of(out / "kept.jsonl")
    assert kept[0]["mean_logprob"] == pytest.approx(-0.2) and kept[0]["agreement"] == 1.0
    # The prompt is every turn before the assistant's, system turn included.
    assert rows_of(out / "sft.jsonl")[0]["messages"] == MESSAGES[0]["messages"]
    notes = json.loads((out / "report.json").read_text())["checks_not_run"]
    assert not any("logprobs" in n for n in notes)
    assert any(n.startswith("2 of 3 traces have no finish_reason") for n in notes)


def test_field_map_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"uid": "a", "prompt_text": ADD, "ref": "5", "gens": ["So \\boxed{5}.", "So \\boxed{4}."],
         "answer": "999"},
        {"uid": "b", "prompt_text": SUB, "ref": "6", "gens": ["So \\boxed{6}."]},
    ]
    path = write(tmp_path / "mine.jsonl", rows)
    out = tmp_path / "out"
    code = cli_main(["filter", "--traces", str(path), "--out", str(out),
                     "--question-field", "prompt_text", "--completion-field", "gens",
                     "--answer-field", "ref", "--id-field", "uid"])
    assert code == 0, capsys.readouterr().err
    assert outcome(out) == {("a", 0): [], ("a", 1): ["wrong"], ("b", 0): []}
    # Without the map nothing is found, and the error names the field it looked for.
    assert cli_main(["filter", "--traces", str(path), "--out", str(tmp_path / "o2")]) == 2
    assert "mine.jsonl:1, field 'question': missing question" in capsys.readouterr().err


def test_unreadable_foreign_lines_stop_or_are_set_aside(tmp_path: Path) -> None:
    rows: list[dict[str, Any] | str] = [
        GENERATIONS[1],
        {"problem": "No completion here."},
        {"messages": [{"role": "user", "content": "Only a question."}]},
        {"problem": ADD, "generations": ["ok", 3]},
    ]
    path = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(InputError) as info:
        run_filter(FilterConfig(traces=[path], out=tmp_path / "out"))
    assert (info.value.line, info.value.field) == (2, "completion")
    out = tmp_path / "skip"
    run_filter(FilterConfig(traces=[path], out=out, skip_invalid=True))
    rejected = rows_of(out / "rejected.jsonl")
    assert [r.get("source") for r in rejected] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    assert all(r["reasons"] == ["invalid_record"] for r in rejected)
    assert "assistant's turn" in rejected[1]["error"]
    assert [r["problem_id"] for r in rows_of(out / "kept.jsonl")] == ["sub"]


def native(pid: str, question: str, index: int = 0, said: str = "5") -> Trace:
    return Trace(
        problem_id=pid, sample_index=index, question=question, gold_answer="5",
        messages=[Message(role="user", content=question)],
        completion=f"Working it out gives {said}. The answer is \\boxed{{{said}}}.",
        finish_reason="stop", num_tokens=9, mean_logprob=-0.1, min_logprob=-0.2,
        teacher="t", prompt_template="plain", prompt_hash="h",
        sampling=Sampling(temperature=0.7, top_p=1.0, max_tokens=64, n=1),
    )


def test_own_traces_read_exactly_as_written(tmp_path: Path) -> None:
    line = dump_line(native("p0", ADD))
    path = write(tmp_path / "t.jsonl", [line])
    (item,) = read_traces([path], validate=False)
    assert item.text == line and item.trace is None  # the second pass does not even parse it
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[path], out=out))
    kept = rows_of(out / "kept.jsonl")[0]
    assert {k: kept[k] for k in json.loads(line)} == json.loads(line)
    notes = json.loads((out / "report.json").read_text())["checks_not_run"]
    assert notes == []


def test_same_ids_with_different_questions_in_two_files(tmp_path: Path) -> None:
    # Two sources that both number their problems from 0: problem "0" is not one problem.
    first = write(tmp_path / "gsm.jsonl", [dump_line(native("0", ADD))])
    second = write(tmp_path / "svamp.jsonl", [
        {"id": 0, "problem": SUB, "answer": "6", "completion": "So it is \\boxed{6}."}])
    with pytest.raises(InputError) as info:
        run_filter(FilterConfig(traces=[first, second], out=tmp_path / "out"))
    error = info.value
    assert (error.file, error.line, error.field) == (str(second), 1, "id")
    assert f"{first}:1" in error.message and "--qualify-ids" in error.message

    out = tmp_path / "qualified"
    run_filter(FilterConfig(traces=[first, second], out=out, qualify_ids=True))
    assert outcome(out) == {("gsm:0", 0): [], ("svamp:0", 0): []}


def test_same_id_and_question_in_two_files_is_one_problem(tmp_path: Path) -> None:
    # Two teachers on the same problems: their traces must meet for agreement and dedup.
    first = write(tmp_path / "a.jsonl", [dump_line(native("p0", ADD))])
    second = write(tmp_path / "b.jsonl", [dump_line(native("p0", ADD, index=1, said="4"))])
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[first, second], out=out, min_agreement=0.6))
    assert outcome(out) == {("p0", 0): ["low_agreement"], ("p0", 1): ["wrong", "low_agreement"]}
    # Question-derived ids never collide and are never qualified.
    qid = question_id(ADD)
    a = write(tmp_path / "qa.jsonl", [dump_line(native(qid, ADD))])
    b = write(tmp_path / "qb.jsonl", [dump_line(native(qid, ADD, index=1))])
    run_filter(FilterConfig(traces=[a, b], out=tmp_path / "q", qualify_ids=True,
                            dedup="off"))
    assert set(outcome(tmp_path / "q")) == {(qid, 0), (qid, 1)}


def test_per_generation_logprobs_and_running_sample_index(tmp_path: Path) -> None:
    path = write(tmp_path / "x.jsonl", [
        {"problem": ADD, "generations": ["\\boxed{5}", "\\boxed{5} again"],
         "token_logprobs": [[-0.1], [-2.0, -4.0]]},
        {"problem": ADD, "response": "It is \\boxed{5}, clearly."},
        {"problem": ADD, "response": "It is \\boxed{5}, as computed."},
    ])
    traces = [item.trace for item in read_traces([path], TraceFields())]
    assert [t.sample_index for t in traces] == [0, 1, 2, 3]
    assert [t.token_logprobs for t in traces] == [[-0.1], [-2.0, -4.0], None, None]


def test_train_reads_traces_of_every_shape(tmp_path: Path) -> None:
    from cotdistill.train.data import load_examples

    ours = native("p0", ADD)
    path = write(tmp_path / "mixed.jsonl", [
        dump_line(ours),  # generate's traces.jsonl: prompt messages + completion
        GENERATIONS[0],  # two generations -> three examples
        MESSAGES[0],  # a chat record passes through as it is
    ])
    examples = load_examples([path])
    assert len(examples) == 5
    assert examples[0].prompt == [{"role": "user", "content": ADD}]
    assert examples[0].completion == [{"role": "assistant", "content": ours.completion}]
    assert examples[0].problem_id == "p0" and examples[0].teacher == "t"
    assert [e.completion[0]["content"] for e in examples[1:4]] == GENERATIONS[0]["generations"]
    assert {e.problem_id for e in examples[1:4]} == {question_id(ADD)}
    assert examples[4].prompt == MESSAGES[0]["messages"][:-1]
    # A trace without a completion is still an error naming its line and field.
    bad = write(tmp_path / "bad.jsonl", [{"problem": ADD}])
    with pytest.raises(InputError) as info:
        load_examples([bad])
    assert (info.value.line, info.value.field) == (1, "completion")


def test_a_completion_beside_its_prompt_messages_keeps_the_prompt(tmp_path: Path) -> None:
    prompt = [{"role": "system", "content": "Think first."}, {"role": "user", "content": ADD}]
    path = write(tmp_path / "p.jsonl", [
        {"question": ADD, "messages": prompt, "response": "So \\boxed{5}.", "answer": "5"}])
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[path], out=out))
    assert rows_of(out / "sft.jsonl")[0]["messages"] == [
        *prompt, {"role": "assistant", "content": "So \\boxed{5}."}]


# ---------------------------------------------------------------------------------------------
# Thinking returned apart (`reasoning_content`) is carried into the trace and sft (issue 19, 2)

THOUGHT = "Two plus three: count up from two, three steps, reaching five."
APART = [
    ("turn reasoning_content", {"messages": [
        {"role": "user", "content": ADD},
        {"role": "assistant", "reasoning_content": THOUGHT, "content": "The answer is \\boxed{5}."},
    ], "answer": "5"}),
    ("turn reasoning", {"messages": [
        {"role": "user", "content": ADD},
        {"role": "assistant", "reasoning": THOUGHT, "content": "The answer is \\boxed{5}."},
    ], "answer": "5"}),
    ("beside the completion", {"question": ADD, "answer": "5", "reasoning_content": THOUGHT,
                               "response": "The answer is \\boxed{5}."}),
]


@pytest.mark.parametrize("row", [r for _, r in APART], ids=[n for n, _ in APART])
def test_reasoning_content_is_kept_as_thinking_in_traces_and_sft(
    tmp_path: Path, row: dict[str, Any]
) -> None:
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[write(tmp_path / "r1.jsonl", [row])], out=out))
    whole = f"<think>\n{THOUGHT}\n</think>\n\nThe answer is \\boxed{{5}}."
    (kept,) = rows_of(out / "kept.jsonl")
    assert kept["completion"] == whole
    (sft,) = rows_of(out / "sft.jsonl")
    assert sft["messages"][-1] == {"role": "assistant", "content": whole}
    assert sft["reasoning"] == THOUGHT
    report = json.loads((out / "report.json").read_text())
    assert report["reasoning"]["traces_with_thinking"] == 1


def test_reasoning_content_with_no_answer_at_the_token_limit_is_unfinished(
    tmp_path: Path
) -> None:
    row = {"question": ADD, "answer": "5", "reasoning_content": "Counting: 2, 3, 4, 5",
           "response": "", "finish_reason": "length"}
    (item,) = read_traces([write(tmp_path / "r1.jsonl", [row])])
    assert item.trace.completion == "<think>\nCounting: 2, 3, 4, 5"
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[write(tmp_path / "r1.jsonl", [row])], out=out))
    assert outcome(out)[(question_id(ADD), 0)][0] == "unfinished_thinking"


# ---------------------------------------------------------------------------------------------
# An empty cell falls through to the next candidate field (issue 19, item 10)


@pytest.mark.parametrize(
    ("row", "gold", "problem_id"),
    [
        ({"gold_answer": "", "answer": "5"}, "5", None),
        ({"gold_answer": "  ", "solution": "Two and three: \\boxed{5}."}, "5", None),
        ({"gold_answer": "", "answer": "", "solution": "So \\boxed{5}."}, "5", None),
        ({"gold_answer": "", "answer": ""}, None, None),  # every candidate empty: no gold
        ({"problem_id": "", "id": "add", "answer": "5"}, "5", "add"),
    ],
)
def test_empty_gold_answer_falls_through_to_the_next_field(
    tmp_path: Path, row: dict[str, Any], gold: str | None, problem_id: str | None
) -> None:
    record = {"question": ADD, "completion": "So \\boxed{5}.", **row}
    (item,) = read_traces([write(tmp_path / "t.jsonl", [record])])
    assert item.trace.gold_answer == gold
    assert item.trace.problem_id == (problem_id or question_id(ADD))


def test_empty_question_beside_a_filled_one_and_alone(tmp_path: Path) -> None:
    (item,) = read_traces([write(tmp_path / "a.jsonl", [
        {"question": "", "problem": ADD, "completion": "So \\boxed{5}."}])])
    assert item.trace.question == ADD
    (alone,) = read_traces([write(tmp_path / "b.jsonl", [
        {"question": " ", "completion": "So \\boxed{5}."}])])
    assert alone.error is not None and alone.error.field == "question"


# ---------------------------------------------------------------------------------------------
# A foreign R1 trace cut inside its thinking (the prompt opened it) (issue 19, item 5)

CUT = "Let me think. Two plus three... I count 3, 4, 5, so it is 5"
CLOSED = "Two plus three is five.\n</think>\n\nThe answer is \\boxed{5}."


def r1_row(completion: str, teacher: str = "r1-distill") -> dict[str, Any]:
    return {"id": "add", "problem": ADD, "answer": "5", "model": teacher,
            "completion": completion}


@pytest.mark.parametrize(
    ("setting", "rows", "cut_reason", "opened"),
    [
        # auto: the teacher's other trace closes a thinking it never opened, even when the cut
        # trace is read first.
        ("auto", [r1_row(CUT), r1_row(CLOSED)], "unfinished_thinking", True),
        ("auto", [r1_row(CLOSED), r1_row(CUT)], "unfinished_thinking", True),
        ("yes", [r1_row(CUT)], "unfinished_thinking", None),
        ("no", [r1_row(CUT), r1_row(CLOSED)], None, None),
        # Another teacher's traces say nothing about this one's prompt.
        ("auto", [r1_row(CUT), r1_row(CLOSED, teacher="other")], None, None),
    ],
)
def test_foreign_r1_trace_cut_inside_its_thinking_is_unfinished(
    tmp_path: Path, setting: str, rows: list[dict[str, Any]], cut_reason: str | None,
    opened: bool | None,
) -> None:
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[write(tmp_path / "r1.jsonl", rows)], out=out,
                            think_in_prompt=setting, dedup="off"))
    cut = next(r for r in rows_of(out / "kept.jsonl") + rows_of(out / "rejected.jsonl")
               if r["completion"] == CUT)
    assert (cut["reasons"][0] if cut["reasons"] else None) == cut_reason
    report = json.loads((out / "report.json").read_text())
    if opened is not None:
        assert report["thinking_opened_in_prompt"]["by_teacher"]["r1-distill"] is opened


def test_when_nothing_tells_whether_the_prompt_opened_the_thinking_the_report_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[write(tmp_path / "r1.jsonl", [r1_row(CUT)])], out=out))
    notes = json.loads((out / "report.json").read_text())["checks_not_run"]
    assert any("nothing tells whether their prompt opened the thinking" in n
               and "think_in_prompt: yes" in n for n in notes)
    assert "nothing tells whether" in capsys.readouterr().out
    assert "nothing tells whether" in (out / "report.md").read_text()


@pytest.mark.parametrize(("rendered", "cut_reason", "note"), [
    (True, "unfinished_thinking", None),
    (False, None, None),
    (None, None, "could not be rendered"),
])
def test_think_template_decides_whether_the_prompt_opened_the_thinking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rendered: bool | None,
    cut_reason: str | None, note: str | None,
) -> None:
    import cotdistill.filter.opening as filter_module

    asked: list[str] = []

    def fake_opening(model: str, *args: Any, **kwargs: Any) -> bool | None:
        asked.append(model)
        return rendered

    monkeypatch.setattr(filter_module, "template_opening", fake_opening)
    out = tmp_path / "out"
    run_filter(FilterConfig(traces=[write(tmp_path / "r1.jsonl", [r1_row(CUT)])], out=out,
                            think_template="models/r1-distill"))
    assert asked == ["models/r1-distill"]
    (row,) = rows_of(out / "kept.jsonl") + rows_of(out / "rejected.jsonl")
    assert (row["reasons"][0] if row["reasons"] else None) == cut_reason
    notes = json.loads((out / "report.json").read_text())["checks_not_run"]
    assert (note is None) or any(note in n for n in notes)


def test_foreign_trace_gold_with_no_single_answer_names_file_line_and_field(tmp_path):
    # A prose gold with two numbers is refused the way a problem set's is: file, line, field.
    import json

    from cotdistill.traces import TraceFields, read_traces

    path = tmp_path / "foreign.jsonl"
    rows = [{"question": "q1", "completion": "c", "answer": "42"},
            {"question": "q2", "completion": "c", "answer": "Between 3 and 4 dollars."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = list(read_traces([path], TraceFields()))
    assert lines[0].error is None
    message = str(lines[1].error)
    assert "foreign.jsonl:2" in message and "answer" in message
