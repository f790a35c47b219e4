"""Read traces files into Trace records: cotdistill's own, and traces made by other tools.

Accepted shapes, one JSON object per line:

- cotdistill's own trace (it has `problem_id` and `sample_index`): validated as a `Trace` and
  passed on exactly as written.
- a record with a question (`question` / `problem`), optionally a gold answer (`answer` /
  `solution`, read like generate's `answer_format`), and one completion (`completion`,
  `generation`, `response`, `output`) or a list of them (`generations`: one trace per element,
  `sample_index` = position in the list; samples of one problem spread over several records
  are numbered on in reading order).
- a `messages` conversation whose last turn is the assistant's: the completion is that turn,
  the question the last user turn, the prompt every turn before it.

Only a question and a completion are required. The id comes from the first `id` field present,
else from the question text (`problems.question_id`), so samples of one problem group together.
Bookkeeping fields another tool did not write (`finish_reason`, `num_tokens`, logprobs,
`teacher`, ...) stay None; `ReadStats` counts them so the filter can say which checks could not
run.

Ids taken from a field are trusted to name one problem: when the same id comes with two
different questions (two files that both number their problems 0..N), reading stops with an
InputError naming both places, unless `qualify_ids` is set, which prefixes such ids with their
file's name (`train:17`), so files are never merged with each other.

    fields = TraceFields(completion=("generations",))
    for item in read_traces([Path("openr1.jsonl")], fields):
        if item.error is None: use(item.trace)
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cotdistill.errors import InputError
from cotdistill.infra.files import dump_line, parse_json_object
from cotdistill.problems import AnswerFormat, gold_from_cell, question_id
from cotdistill.reasoning import DEFAULT_MARKERS, Markers, join_reasoning, split_reasoning
from cotdistill.records import Message, Trace

COMPLETION_FIELDS = ("completion", "generation", "response", "output", "generations")
# Fields a foreign record may carry under cotdistill's own names; taken over when well typed.
_PASSED_ON = ("finish_reason", "num_tokens", "mean_logprob", "min_logprob", "category")


@dataclass(frozen=True)
class TraceFields:
    """Where a foreign record keeps its parts: candidate names, the first present wins."""

    question: tuple[str, ...] = ("question", "problem")
    completion: tuple[str, ...] = COMPLETION_FIELDS
    answer: tuple[str, ...] = ("gold_answer", "answer", "solution")
    id: tuple[str, ...] = ("problem_id", "id")
    answer_format: AnswerFormat = "auto"
    qualify_ids: bool = False
    markers: Markers = DEFAULT_MARKERS  # where thinking returned apart is put back


@dataclass
class TraceLine:
    """One trace as read: `text` is what the output rows are built from (the line as written
    for cotdistill's own traces, the normalised trace for foreign ones); `error` is set instead
    of `trace` for a line that cannot be read."""

    path: Path
    line: int
    text: str
    trace: Trace | None = None
    error: InputError | None = None
    size: int = 0  # characters of the input line, on its first trace only (progress bars)


@dataclass
class ReadStats:
    """How many traces lacked what some checks need (counted on the validating pass only)."""

    traces: int = 0
    foreign: int = 0
    missing: Counter[str] = field(default_factory=Counter)

    def count(self, trace: Trace, foreign: bool) -> None:
        self.traces += 1
        self.foreign += foreign
        if trace.token_logprobs is None and (trace.mean_logprob is None
                                             or trace.min_logprob is None):
            self.missing["logprobs"] += 1
        for name in ("finish_reason", "num_tokens", "gold_answer"):
            if getattr(trace, name) is None:
                self.missing[name] += 1


class IdCollision(InputError):
    """One id, two different questions: stops the whole read, not just one line."""


@dataclass
class IdRegistry:
    """First place each field-given id was seen (with a digest of its question), and how many
    samples each problem has had, across all the files of one read."""

    seen: dict[str, tuple[bytes, Path, int]] = field(default_factory=dict)
    samples: Counter[str] = field(default_factory=Counter)

    def check(self, problem_id: str, question: str, path: Path, line: int, name: str) -> None:
        digest = hashlib.blake2b(" ".join(question.split()).encode(), digest_size=8).digest()
        first = self.seen.setdefault(problem_id, (digest, path, line))
        if first[0] != digest:
            where = f"{first[1]}:{first[2]}"
            raise IdCollision(
                f"id '{problem_id}' was first seen on {where} with a different question: two "
                "sources number their problems the same way. Give them distinct ids, or pass "
                "--qualify-ids to prefix ids with their file's name",
                file=path, line=line, field=name,
            )

    def next_index(self, problem_id: str) -> int:
        index = self.samples[problem_id]
        self.samples[problem_id] += 1
        return index


def is_native(data: dict[str, Any]) -> bool:
    """cotdistill's own traces carry both of these; other tools' records rarely do."""
    return "problem_id" in data and "sample_index" in data


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _first(data: dict[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    """The first candidate field with a value. An empty cell (`""`, blanks) falls through to
    the next candidate, as a missing one does: `gold_answer: ""` beside a `solution` must not
    make the gold None. Only when every candidate is empty is the first empty one returned,
    so the caller can say what is wrong with it."""
    empty: tuple[str | None, Any] = (None, None)
    for name in names:
        value = data.get(name)
        if not _blank(value):
            return name, value
        if value is not None and empty[0] is None:
            empty = (name, value)
    return empty


def _messages(turns: list[Any], path: Path, line: int) -> list[Message]:
    messages = []
    for position, turn in enumerate(turns):
        try:
            messages.append(Message.model_validate(turn))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in ("messages", position, *first["loc"]))
            raise InputError(first["msg"], file=path, line=line, field=loc) from exc
    return messages


def _conversation(
    turns: list[Any], path: Path, line: int
) -> tuple[list[Message], str | None, str]:
    """(prompt turns, last user turn, assistant completion) of a `messages` record."""
    messages = _messages(turns, path, line)
    if not messages or messages[-1].role != "assistant":
        raise InputError("the last message must be the assistant's turn (the completion)",
                         file=path, line=line, field="messages")
    users = [m.content for m in messages[:-1] if m.role == "user"]
    return messages[:-1], (users[-1] if users else None), messages[-1].content


# Where a record keeps thinking returned apart from the answer: beside a completion field
# (datasets dumped from DeepSeek / vLLM), or in the assistant turn (newer servers: `reasoning`;
# a record's top-level `reasoning` may be cotdistill's own split field, so it is not read).
THINKING_BESIDE = ("reasoning_content",)
THINKING_IN_TURN = ("reasoning_content", "reasoning")


def _with_thinking(
    holder: dict[str, Any], completion: str, keys: Sequence[str], markers: Markers,
    finish_reason: Any = None,
) -> str:
    """`completion` with the thinking `holder` keeps apart put back inside markers before the
    answer, as generate does (`reasoning.join_reasoning`); as it is when there is none or the
    completion already holds it (a `records.Message` folds its turn's thinking itself)."""
    _, reasoning = _first(holder, keys)
    if not isinstance(reasoning, str) or _blank(reasoning):
        return completion
    if split_reasoning(completion, markers).reasoning is not None:
        return completion  # already whole: the thinking is in it
    # An empty answer from a run cut at the token limit: it stopped inside the thinking.
    finished = bool(completion.strip()) or finish_reason != "length"
    return join_reasoning(reasoning.strip(), completion.strip(), markers, finished)


def _per_sample(value: Any, count: int) -> list[Any]:
    """A value given once per sample (a list of `count` lists) or None for each."""
    if isinstance(value, list) and len(value) == count and all(
        isinstance(v, list) or v is None for v in value
    ):
        return value
    return [None] * count


def foreign_traces(
    data: dict[str, Any], fields: TraceFields, path: Path, line: int,
    ids: IdRegistry | None = None,
) -> list[Trace]:
    """The traces of one foreign record (several for a list of generations)."""
    ids = IdRegistry() if ids is None else ids
    q_name, question = _first(data, fields.question)
    c_name, completion = _first(data, fields.completion)
    prompt: list[Message] | None = None
    if c_name is None and isinstance(data.get("messages"), list):
        prompt, asked, completion = _conversation(data["messages"], path, line)
        c_name = "messages"
        if q_name is None and asked is not None:
            q_name, question = "messages", asked
    elif (isinstance(data.get("messages"), list) and data["messages"]
          and isinstance(data["messages"][-1], dict)
          and data["messages"][-1].get("role") != "assistant"):
        # A completion beside the prompt it answered (as cotdistill writes them): keep the
        # prompt, system turn included, for training.
        prompt = _messages(data["messages"], path, line)
    if q_name is None:
        raise InputError(
            f"missing question (looked for {', '.join(fields.question)}, or a user turn in "
            "messages)", file=path, line=line, field=fields.question[0],
        )
    if not isinstance(question, str) or not question.strip():
        raise InputError("question must be non-empty text", file=path, line=line, field=q_name)
    if c_name is None:
        raise InputError(
            f"missing completion (looked for {', '.join(fields.completion)}, or messages "
            "ending with the assistant's turn)", file=path, line=line,
            field=fields.completion[0],
        )
    if c_name == "messages":
        turn = data["messages"][-1]
        completion = _with_thinking(turn if isinstance(turn, dict) else {}, completion,
                                    THINKING_IN_TURN, fields.markers, data.get("finish_reason"))
    elif isinstance(completion, str):
        completion = _with_thinking(data, completion, THINKING_BESIDE, fields.markers,
                                    data.get("finish_reason"))
    completions = completion if isinstance(completion, list) else [completion]
    if not completions or not all(isinstance(c, str) for c in completions):
        raise InputError("completion must be text or a non-empty list of texts", file=path,
                         line=line, field=c_name)

    a_name, answer = _first(data, fields.answer)
    gold = None
    if a_name is not None:
        # The same rules as problem sets: a gold with no single answer names file, line, field.
        gold = gold_from_cell(answer, fields.answer_format, file=path, line=line, field=a_name)
    i_name, raw_id = _first(data, fields.id)
    if i_name is not None and str(raw_id).strip():
        problem_id = str(raw_id).strip()
        if fields.qualify_ids:
            problem_id = f"{path.stem}:{problem_id}"
        ids.check(problem_id, question, path, line, i_name)
    else:
        problem_id = question_id(question)

    extra = {k: data[k] for k in _PASSED_ON if data.get(k) is not None}
    teacher = next((data[k] for k in ("teacher", "model") if isinstance(data.get(k), str)), None)
    several = isinstance(completion, list)
    logprobs = _per_sample(data.get("token_logprobs"), len(completions)) if several else [
        data.get("token_logprobs")
    ]
    traces = []
    for text, token_logprobs in zip(completions, logprobs, strict=True):
        given = None if several else data.get("sample_index")
        # Samples of one problem are numbered in reading order (for a single list of
        # generations: its positions), so (problem, sample) stays unique across records.
        index = given if isinstance(given, int) else ids.next_index(problem_id)
        own = {} if several else extra
        try:
            traces.append(Trace(
                problem_id=problem_id, sample_index=index, question=question.strip(),
                gold_answer=gold, messages=prompt, completion=text,
                token_logprobs=token_logprobs, teacher=teacher, source=f"{path}:{line}",
                **own,
            ))
        except ValidationError as exc:
            first = exc.errors()[0]
            raise InputError(first["msg"], file=path, line=line,
                             field=".".join(str(p) for p in first["loc"])) from exc
    return traces


def _native(
    data: dict[str, Any], text: str, fields: TraceFields, path: Path, line: int, ids: IdRegistry,
    validate: bool,
) -> TraceLine:
    problem_id = data.get("problem_id")
    question = data.get("question")
    if not validate and not fields.qualify_ids:
        return TraceLine(path, line, text)  # the second pass: nothing to check or rewrite
    derived = isinstance(question, str) and problem_id == question_id(question)
    if fields.qualify_ids and isinstance(problem_id, str) and not derived:
        data = {**data, "problem_id": f"{path.stem}:{problem_id}"}
        text = dump_line(data)
    if not validate:
        return TraceLine(path, line, text)
    try:
        trace = Trace.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        error = InputError(first["msg"], file=path, line=line,
                           field=".".join(str(p) for p in first["loc"]))
        return TraceLine(path, line, text, error=error)
    if not derived:  # a question hash cannot collide; an id from a field can
        ids.check(trace.problem_id, trace.question, path, line, "problem_id")
    return TraceLine(path, line, text, trace=trace)


def read_traces(
    paths: Sequence[Path],
    fields: TraceFields = TraceFields(),
    validate: bool = True,
    stats: ReadStats | None = None,
) -> Iterator[TraceLine]:
    """Every trace of every file, in the same order on every call.

    A line that cannot be read yields one TraceLine with `error` set (the caller decides to
    stop or to set it aside); an id collision raises at once. With `validate=False` (the
    filter's second pass), cotdistill's own lines are passed on as written without being
    validated; foreign lines are converted either way, so both passes yield the same items.
    """
    ids = IdRegistry()
    for path in paths:
        path = Path(path)
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, text in enumerate(fh, start=1):
                if not text.strip():
                    continue
                try:
                    data = parse_json_object(text, path, lineno)
                except InputError as exc:
                    yield TraceLine(path, lineno, text, error=exc, size=len(text))
                    continue
                if is_native(data):
                    item = _native(data, text, fields, path, lineno, ids, validate)
                    item.size = len(text)
                    if stats is not None and item.trace is not None:
                        stats.count(item.trace, foreign=False)
                    yield item
                    continue
                try:
                    traces = foreign_traces(data, fields, path, lineno, ids)
                except IdCollision:
                    raise  # a property of the inputs together, not of one line
                except InputError as exc:
                    yield TraceLine(path, lineno, text, error=exc, size=len(text))
                    continue
                for position, trace in enumerate(traces):
                    if stats is not None:
                        stats.count(trace, foreign=True)
                    yield TraceLine(path, lineno, dump_line(trace), trace=trace,
                                    size=0 if position else len(text))


def checks_not_run(stats: ReadStats) -> list[str]:
    """One sentence per check that some traces could not take, for the report and terminal."""
    notes = []
    missing, total = stats.missing, stats.traces
    if missing["logprobs"]:
        notes.append(f"{missing['logprobs']} of {total} traces have no token logprobs: "
                     "confidence checks (min_mean_logprob, min_token_logprob) and ordering by "
                     "logprob do not apply to them")
    if missing["finish_reason"]:
        notes.append(f"{missing['finish_reason']} of {total} traces have no finish_reason: "
                     "truncation cannot be detected for them")
    if missing["num_tokens"]:
        notes.append(f"{missing['num_tokens']} of {total} traces have no num_tokens: length "
                     "checks (min_tokens, max_tokens) and ordering by length do not apply")
    if missing["gold_answer"]:
        notes.append(f"{missing['gold_answer']} of {total} traces have no gold answer: they "
                     "are labelled by majority vote or rejected as no_label")
    return notes


def sft_records(raw: str | dict[str, Any], file: str, line: int) -> list[dict[str, Any]]:
    """Training records (`messages` ending with the assistant's turn) from one input line.

    The filter's sft.jsonl and chat datasets pass through as they are; a trace, ours or
    another tool's, becomes its prompt (or its question as the user turn) plus the completion,
    one record per completion.
    """
    data = parse_json_object(raw, file, line) if isinstance(raw, str) else raw
    turns = data.get("messages")
    last = turns[-1] if isinstance(turns, list) and turns else None
    if isinstance(last, dict) and last.get("role") == "assistant":
        return [data]
    traces = foreign_traces(data, TraceFields(), Path(file), line)
    records = []
    for trace in traces:
        prompt = ([{"role": m.role, "content": m.content} for m in trace.messages]
                  if trace.messages else [{"role": "user", "content": trace.question}])
        records.append({
            "messages": [*prompt, {"role": "assistant", "content": trace.completion}],
            "problem_id": trace.problem_id, "teacher": trace.teacher,
        })
    return records
