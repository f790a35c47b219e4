"""Read a problem set (JSONL, JSON, CSV, Parquet or a `datasets` folder) into Problem records.

Everything is validated before any model is loaded: an unreadable file, a missing or empty
question, or a duplicate id stops with an InputError naming the file, line and field.
Text files may start with a UTF-8 byte-order mark (Excel writes one). A question can be built
from several fields with a format string (`template="{Body} {Question}"`), and a category
field (`subject`, `level`) is kept on every problem.

    problems = load_problems(Path("data/train.jsonl"), ProblemFields())
    mine = [p for p in problems if in_shard(p.id, 0, 4)]
"""

from __future__ import annotations

import csv
import hashlib
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from cotdistill.answers.gold import GoldError, GoldRule, read_gold
from cotdistill.errors import InputError
from cotdistill.infra.files import parse_json_object, sha256_text
from cotdistill.records import Problem

AnswerFormat = Literal["auto", "gsm8k", "boxed", "raw"]


@dataclass(frozen=True)
class ProblemFields:
    question: tuple[str, ...] = ("question", "problem")
    answer: tuple[str, ...] = ("answer", "solution")
    id: str = "id"
    answer_format: AnswerFormat = "auto"
    # A format string over the row's fields; when set, it makes the question (not `question`).
    template: str | None = None
    category: str | None = None

    @classmethod
    def of(cls, config: Any) -> ProblemFields:
        """The fields a stage config names (`question_field`, `answer_field`, `id_field`,
        `answer_format`, `question_template`, `category_field`); keys it lacks keep the
        defaults. Every stage that reads problem files builds its fields here."""
        default = cls()
        return cls(
            question=tuple(getattr(config, "question_field", default.question)),
            answer=tuple(getattr(config, "answer_field", default.answer)),
            id=getattr(config, "id_field", default.id),
            answer_format=getattr(config, "answer_format", default.answer_format),
            template=getattr(config, "question_template", default.template),
            category=getattr(config, "category_field", default.category),
        )


@dataclass
class _Row:
    line: int
    data: dict[str, Any] = field(default_factory=dict)


def question_id(question: str) -> str:
    """Stable id from the question text alone (whitespace-normalised)."""
    return "q-" + sha256_text(" ".join(question.split()))[:16]


def in_shard(problem_id: str, index: int, count: int) -> bool:
    """Deterministic split by id hash: the same problem lands in the same shard everywhere."""
    bucket = int(hashlib.sha256(problem_id.encode()).hexdigest()[:12], 16) % count
    return bucket == index


def parse_shard(spec: str) -> tuple[int, int]:
    """`I/N` -> (I, N); `auto` -> this Slurm array task's shard (cotdistill/executors/slurm.py)."""
    if spec == "auto":
        from cotdistill.infra.slurm import array_shard

        return array_shard()
    index, count = (int(x) for x in spec.split("/"))
    if count < 1 or not 0 <= index < count:
        raise InputError(f"shard must be I/N with 0 <= I < N, got {spec}", field="shard")
    return index, count


def template_fields(template: str) -> tuple[str, ...]:
    """The row fields a question template names; a template that cannot work is an InputError.

    Only plain names are allowed (`{Body}`, not `{0}`, `{}` or `{row.Body}`): the template is
    filled from one row's mapping, nothing else.
    """
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InputError(f"bad question_template {template!r}: {exc}",
                         field="question_template") from exc
    names = []
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if not name or name.isdigit() or any(c in name for c in ".[]") or (spec and "{" in spec):
            raise InputError(
                f"bad question_template {template!r}: '{{{name}}}' is not a plain field name",
                field="question_template",
            )
        names.append(name)
    if not names:
        raise InputError(f"question_template {template!r} names no field",
                         field="question_template")
    return tuple(dict.fromkeys(names))


def _templated_question(row: _Row, template: str, names: tuple[str, ...], path: Path) -> str:
    for name in names:
        if row.data.get(name) is None:
            raise InputError(
                f"question_template needs field '{name}', missing in this row",
                file=path, line=row.line, field=name,
            )
    try:
        return template.format_map(row.data)
    except (ValueError, TypeError) as exc:  # a format spec that does not fit the value
        raise InputError(f"question_template {template!r}: {exc}", file=path, line=row.line,
                         field="question_template") from exc


def _rows(path: Path) -> Iterator[_Row]:
    """Yield (line, mapping) pairs; 'line' is the file line for text formats, else the row."""
    if path.is_dir():
        yield from _dataset_rows(path)
        return
    suffix = path.suffix.lower()
    # utf-8-sig: files written by Excel and some Windows tools start with a byte-order mark,
    # which would otherwise become part of the first column's name ("\ufeffquestion").
    if suffix == ".jsonl":
        with open(path, encoding="utf-8-sig") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield _Row(lineno, parse_json_object(line, path, lineno))
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc.msg})", file=path, line=exc.lineno) from exc
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise InputError("expected a JSON list of objects (or {'data': [...]})", file=path)
        for index, item in enumerate(data, start=1):
            if not isinstance(item, dict):
                raise InputError(f"item {index} is not an object", file=path, line=index)
            yield _Row(index, item)
    elif suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                # line_num is the last physical line read: correct for single-line rows.
                yield _Row(reader.line_num, dict(row))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise InputError(f"cannot read Parquet: {exc}", file=path) from exc
        for index, row in enumerate(table.to_pylist(), start=1):
            yield _Row(index, row)
    else:
        raise InputError(
            f"unknown problem file type '{suffix}' (use .jsonl, .json, .csv, .parquet "
            "or a datasets folder)",
            file=path,
        )


def _checked_rows(path: Path) -> Iterator[_Row]:
    """`_rows`, with unreadable files (permissions, not UTF-8) reported as InputError."""
    try:
        yield from _rows(path)
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from exc
    except OSError as exc:
        raise InputError(f"cannot read file: {exc.strerror or exc}", file=path) from exc


def _dataset_rows(path: Path) -> Iterator[_Row]:
    from datasets import DatasetDict, load_from_disk

    try:
        dataset = load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError or its own errors
        raise InputError(
            f"not a datasets folder saved with save_to_disk: {exc}", file=path
        ) from exc
    if isinstance(dataset, DatasetDict):
        raise InputError(
            f"folder holds several splits {list(dataset)}; pass one split's folder", file=path
        )
    for index, row in enumerate(dataset, start=1):
        yield _Row(index, dict(row))


def is_missing(value: Any) -> bool:
    """None or blank text: an empty cell (CSV `,,`, JSON `""`) stands for no value at all, so
    the next candidate field is read instead."""
    return value is None or (isinstance(value, str) and not value.strip())


def _first_field(data: dict[str, Any], names: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first of `names` with a value; else the first present but empty one (for errors)."""
    empty = None
    for name in names:
        if not is_missing(data.get(name)):
            return name, data[name]
        if empty is None and name in data and data[name] is not None:
            empty = name
    return empty, None


def cell_text(value: Any, *, file: Path | str, line: int | None, field: str) -> str | None:
    """A cell as answer text; None when it is empty.

    JSON and Parquet give numbers, whose `str` is `5e-05` or `2e+16`: write them as plain
    decimals, as a person would (`0.00005`). NaN and infinities are no answer: refused.
    """
    if is_missing(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):  # bool too
        return str(value)
    if isinstance(value, float | Decimal):
        number = Decimal(repr(value)) if isinstance(value, float) else value
        if not number.is_finite():
            raise InputError(f"answer is {value}, not a number an answer can be",
                             file=file, line=line, field=field)
        return format(number, "f")
    raise InputError(f"answer must be text or a number, got {type(value).__name__}",
                     file=file, line=line, field=field)


@dataclass
class LoadStats:
    """How the gold answers of a load were read, for the stage reports.

    `golds_by_rule["single_number"]` counts golds written as text with no marker, read because
    they hold exactly one number (`The total is 42 dollars.` -> 42): worth a look in the report.
    """

    golds_by_rule: dict[str, int] = field(default_factory=dict)

    @property
    def golds_from_single_number(self) -> int:
        return self.golds_by_rule.get("single_number", 0)

    def count(self, rule: GoldRule) -> None:
        self.golds_by_rule[rule] = self.golds_by_rule.get(rule, 0) + 1


def gold_from_cell(
    value: Any,
    answer_format: str,
    *,
    file: Path | str,
    line: int | None,
    field: str,
    stats: LoadStats | None = None,
) -> str | None:
    """The gold answer of one cell (None when empty); a cell with no single answer is an
    InputError naming file, line and field. Problem sets and foreign traces both read golds
    through this, so both follow the same rules (answers.read_gold)."""
    text = cell_text(value, file=file, line=line, field=field)
    if text is None:
        return None
    try:
        gold = read_gold(text, answer_format)
    except GoldError as exc:
        raise InputError(str(exc), file=file, line=line, field=field) from exc
    if stats is not None:
        stats.count(gold.rule)
    return gold.answer


def load_problems(
    path: Path, fields: ProblemFields = ProblemFields(), stats: LoadStats | None = None
) -> list[Problem]:
    """Read and validate every problem; the whole file is checked before returning.

    Pass `stats` to learn how the golds were read (reports show `golds_from_single_number`).
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", file=path)
    names = template_fields(fields.template) if fields.template is not None else ()
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for row in _checked_rows(path):
        if fields.template is not None:
            name = "question_template"
            question = _templated_question(row, fields.template, names, path)
        else:
            name, question = _first_field(row.data, fields.question)
        if name is None:
            raise InputError(
                f"missing question (looked for {', '.join(fields.question)})",
                file=path,
                line=row.line,
                field=fields.question[0],
            )
        if question is None:  # every candidate field present was empty
            raise InputError("question is empty", file=path, line=row.line, field=name)
        if not isinstance(question, str):
            raise InputError(
                f"question must be text, got {type(question).__name__}",
                file=path, line=row.line, field=name,
            )
        if not question.strip():
            raise InputError("question is empty", file=path, line=row.line, field=name)
        answer_name, answer = _first_field(row.data, fields.answer)
        gold = None
        if answer_name is not None:
            gold = gold_from_cell(answer, fields.answer_format, file=path, line=row.line,
                                  field=answer_name, stats=stats)
        raw_id = row.data.get(fields.id)
        has_id = raw_id is not None and bool(str(raw_id).strip())
        problem_id = str(raw_id).strip() if has_id else question_id(question)
        if problem_id in seen:
            what = "id" if has_id else "question (same text, so same id)"
            raise InputError(
                f"duplicate {what} '{problem_id}', first seen on line {seen[problem_id]}",
                file=path,
                line=row.line,
                field=fields.id if has_id else name,
            )
        seen[problem_id] = row.line
        category = None
        if fields.category is not None:
            if row.data.get(fields.category) is None:
                raise InputError(
                    "category field missing in this row", file=path, line=row.line,
                    field=fields.category,
                )
            category = str(row.data[fields.category])
        problems.append(
            Problem(
                id=problem_id, question=question.strip(), gold_answer=gold,
                source=f"{path}:{row.line}", category=category,
            )
        )
    if not problems:
        raise InputError("no problems found", file=path)
    return problems
