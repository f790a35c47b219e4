"""Training examples: SFT records in, tokenised examples with their loss masks out."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.reasoning import split_reasoning
from cotdistill.records import Message, Record
from cotdistill.traces import sft_records


class SftRecord(Record):
    """One line of the filter's sft.jsonl."""

    messages: list[Message]
    problem_id: str | None = None
    sample_index: int | None = None
    teacher: str | None = None
    # Reasoning traces (written by the filter, see cotdistill/reasoning.py); None otherwise.
    reasoning: str | None = None
    answer_text: str | None = None


@dataclass
class Example:
    """A training pair: everything before the last message is the prompt, the last the target."""

    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    teacher: str
    problem_id: str
    file: str
    line: int
    reasoning: str | None = None  # the thinking in the assistant turn, if a reasoning trace
    sample_index: int | None = None  # with problem_id, the key of stored top-k rows
    answer_text: str | None = None


@dataclass
class Tokenized:
    input_ids: list[int]
    completion_mask: list[int]
    teacher: str
    problem_id: str
    truncated_tokens: int = 0
    sample_index: int | None = None


@dataclass
class DataStats:
    records: int = 0
    truncated: int = 0
    truncated_tokens: int = 0
    tokens: int = 0
    completion_tokens: int = 0
    by_teacher: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- data (no models needed)


def to_example(record: SftRecord, file: str, line: int) -> Example:
    """Split a record into prompt and completion; a record without an answer is an error."""
    messages = [m.model_dump() for m in record.messages]
    if not messages or messages[-1]["role"] != "assistant":
        raise InputError(
            "the last message must be the assistant turn (the trace to learn)",
            file=file, line=line, field="messages",
        )
    if len(messages) < 2:
        raise InputError("no prompt before the assistant turn", file=file, line=line,
                         field="messages")
    if not messages[-1]["content"].strip():
        raise InputError("the assistant turn is empty", file=file, line=line,
                         field="messages.content")
    reasoning, answer_text = turn_reasoning(record, messages[-1]["content"])
    return Example(
        prompt=messages[:-1],
        completion=messages[-1:],
        teacher=record.teacher or "unknown",
        problem_id=record.problem_id or f"{file}:{line}",
        file=file,
        line=line,
        reasoning=reasoning,
        answer_text=answer_text,
        sample_index=record.sample_index,
    )


def turn_reasoning(record: SftRecord, content: str) -> tuple[str | None, str | None]:
    """(thinking, answer) of the assistant turn: the filter's fields when it wrote them, else
    read from the turn itself.

    Chat datasets and raw traces of other tools carry their thinking only inside the turn
    (`<think>` markers, or `reasoning_content` folded in by `records.Message`); reading it here
    lets the template guard and `reasoning_format: plain` treat them like the filter's output.
    """
    if record.reasoning is not None:
        return record.reasoning, record.answer_text
    split = split_reasoning(content)
    if split.reasoning is None:
        return None, None
    return split.reasoning, split.answer_text


def _rows(path: Path) -> Iterable[tuple[str, int, Any]]:
    """(file, line, raw) for a jsonl file, a folder of them, or a `datasets` folder."""
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield str(path), lineno, line
        return
    if not path.is_dir():
        raise InputError("no such file or folder", file=path, field="data")
    if any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        from datasets import DatasetDict, load_from_disk

        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if "train" not in dataset:
                raise InputError("dataset has no 'train' split", file=path, field="data")
            dataset = dataset["train"]
        for index, row in enumerate(dataset, start=1):
            yield str(path), index, row
        return
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise InputError("folder holds neither a `datasets` dataset nor .jsonl files", file=path,
                         field="data")
    for file in files:
        yield from _rows(file)


def load_examples(paths: Sequence[Path]) -> list[Example]:
    """Read and validate every record; the first bad one raises InputError naming its line."""
    if not paths:
        raise InputError("train needs --data (sft.jsonl files or a datasets folder)",
                         field="data")
    examples = []
    for path in paths:
        for file, line, raw in _rows(Path(path)):
            # Traces (ours, or another tool's: see traces_in) become prompt + completion here.
            for row in sft_records(raw, file, line):
                examples.append(to_example(_validate_row(row, file, line), file, line))
    if not examples:
        raise InputError("no training records", file=", ".join(map(str, paths)), field="data")
    return examples


def _validate_row(row: dict[str, Any], file: str, line: int) -> SftRecord:
    from pydantic import ValidationError

    try:
        return SftRecord.model_validate(row)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(first["msg"], file=file, line=line,
                         field=".".join(str(p) for p in first["loc"])) from exc


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_example(tokenizer: Any, example: Example, max_length: int) -> Tokenized:
    """Chat-template the pair as TRL does; mask the prompt; cut at max_length (keep start).

    A prompt that fills max_length leaves nothing to learn; TRL would drop it silently, so it
    is an error here naming the record.
    """
    prompt_ids = tokenizer.apply_chat_template(
        example.prompt, tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"]
    full_ids = tokenizer.apply_chat_template(
        example.prompt + example.completion, tokenize=True, return_dict=True
    )["input_ids"]
    # Some templates render a prompt alone differently; the completion starts where they part.
    prompt_len = _common_prefix(prompt_ids, full_ids)
    if prompt_len >= max_length:
        raise InputError(
            f"the prompt is {prompt_len} tokens, max_length is {max_length}: nothing of the "
            "answer would be trained; raise --max-length or shorten the prompt",
            file=example.file, line=example.line, field="messages",
        )
    mask = [0] * prompt_len + [1] * (len(full_ids) - prompt_len)
    cut = max(len(full_ids) - max_length, 0)
    return Tokenized(
        input_ids=full_ids[:max_length],
        completion_mask=mask[:max_length],
        teacher=example.teacher,
        problem_id=example.problem_id,
        truncated_tokens=cut,
        sample_index=example.sample_index,
    )


def read_chat_template(path: Path) -> str:
    """A Jinja chat template file (`--chat-template`), read before any model loads."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the chat template: {exc}", file=path,
                         field="chat_template") from exc
    if "{%" not in text and "{{" not in text:
        raise InputError("not a Jinja chat template", file=path, field="chat_template")
    return text


def format_reasoning(examples: Sequence[Example], fmt: str) -> list[Example]:
    """`plain`: a reasoning trace's assistant turn becomes thinking then answer, no markers.

    `think` leaves the turn as the filter wrote it (the thinking inside `<think>` markers).
    """
    if fmt == "think":
        return list(examples)
    out = []
    for e in examples:
        if e.reasoning is None:
            out.append(e)
            continue
        text = f"{e.reasoning}\n\n{e.answer_text or ''}".strip()
        out.append(replace(e, completion=[{"role": "assistant", "content": text}]))
    return out


def squeeze(text: str) -> str:
    return " ".join(text.split())


def tokenize_examples(
    tokenizer: Any, examples: Sequence[Example], max_length: int
) -> tuple[list[Tokenized], DataStats]:
    rows = [tokenize_example(tokenizer, e, max_length) for e in examples]
    stats = DataStats(
        records=len(rows),
        truncated=sum(r.truncated_tokens > 0 for r in rows),
        truncated_tokens=sum(r.truncated_tokens for r in rows),
        tokens=sum(len(r.input_ids) for r in rows),
        completion_tokens=sum(sum(r.completion_mask) for r in rows),
        by_teacher=dict(Counter(r.teacher for r in rows)),
    )
    return rows, stats


def split_eval(
    rows: Sequence[Tokenized], fraction: float, seed: int
) -> tuple[list[Tokenized], list[Tokenized]]:
    """Hold out whole problems (all their traces), so no eval problem is seen in training."""
    if fraction <= 0:
        return list(rows), []
    problems = sorted({r.problem_id for r in rows})
    if len(problems) < 2:
        raise InputError("eval_fraction needs at least two distinct problems in the data",
                         field="eval_fraction")
    random.Random(seed).shuffle(problems)
    held = set(problems[: min(max(1, round(fraction * len(problems))), len(problems) - 1)])
    return [r for r in rows if r.problem_id not in held], [r for r in rows if r.problem_id in held]


def apply_teacher_weights(
    rows: Sequence[Tokenized], weights: dict[str, float], seed: int
) -> list[Tokenized]:
    """Repeat each row about `weight` times (whole copies plus a seeded coin for the rest).

    Done on the dataset rather than in a sampler so it composes with packing, padding-free
    batching and several processes unchanged.
    """
    if not weights:
        return list(rows)
    present = {r.teacher for r in rows}
    unknown = sorted(set(weights) - present)
    if unknown:
        raise InputError(
            f"no records from teacher(s) {unknown}; teachers in the data: {sorted(present)}",
            field="teacher_weights",
        )
    rng = random.Random(seed)
    out: list[Tokenized] = []
    for row in rows:
        weight = weights.get(row.teacher, 1.0)
        copies = int(weight) + (rng.random() < weight - int(weight))
        out.extend([row] * copies)
    if not out:
        raise InputError("the teacher weights leave no training records", field="teacher_weights")
    return out


def to_dataset(rows: Sequence[Tokenized], kd_first_row: int | None = None) -> Any:
    """With `kd_first_row`, a `kd_row` column numbers the rows from it (offline top-k table)."""
    from datasets import Dataset

    columns: dict[str, Any] = {
        "input_ids": [r.input_ids for r in rows],
        "completion_mask": [r.completion_mask for r in rows],
    }
    if kd_first_row is not None:
        columns["kd_row"] = list(range(kd_first_row, kd_first_row + len(rows)))
    return Dataset.from_dict(columns)
