"""Typed records passed between stages, and the JSONL / manifest I/O at the edges.

Every stage reads and writes these records; their field names are the on-disk format.

    for trace in read_jsonl(path, Trace): ...
    write_manifest(out_dir, stage="generate", config=cfg, inputs=[problems_file], counts={...})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cotdistill.reasoning import (
    join_reasoning,
    split_reasoning,
)

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


def logprob_stats(logprobs: Sequence[float] | None) -> tuple[float | None, float | None]:
    if not logprobs:
        return None, None
    return sum(logprobs) / len(logprobs), min(logprobs)
