"""Reasoning-model traces: split a completion into its thinking and its final answer.

Reasoning teachers (DeepSeek-R1 and its distills, QwQ, Qwen3 in thinking mode) write
`<think> ... </think>` and then the answer. A chat template may open the thinking in the
prompt itself (R1 distills end the generation prompt with `<think>\\n`), so the completion
starts inside it; a server started with `--reasoning-parser` returns the thinking separately
(`reasoning_content`), and `join_reasoning` puts the markers back so the trace stays whole.

    split = split_reasoning(text, Markers(), opened=False)
    split.reasoning, split.answer_text, split.finished_thinking
    view = trace_reasoning(trace, Markers())      # stored fields, or computed for old traces

`finished_thinking` is None when the text has no thinking at all (a non-reasoning teacher):
those traces behave exactly as before everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

THINK_START = "<think>"
THINK_END = "</think>"


@dataclass(frozen=True)
class Markers:
    """The teacher's thinking delimiters."""

    start: str = THINK_START
    end: str = THINK_END


DEFAULT_MARKERS = Markers()


@dataclass(frozen=True)
class ReasoningSplit:
    reasoning: str | None  # the thinking text; None when the completion has none
    answer_text: str  # what follows the thinking (the whole text when there is no thinking)
    finished_thinking: bool | None  # False: stopped inside the thinking; None: no thinking


def split_reasoning(
    text: str, markers: Markers = DEFAULT_MARKERS, opened: bool = False
) -> ReasoningSplit:
    """Split `text` at the think markers.

    `opened`: the prompt already opened the thinking (the template ends with the start marker),
    so the text begins inside it. An end marker with no start marker before it means the same
    thing (an R1-distill trace written without knowing its template), so old traces split right.
    """
    start = text.find(markers.start)
    end = text.find(markers.end)
    if start >= 0 and (end < 0 or start < end):
        before, inside = text[:start], text[start + len(markers.start):]
    elif opened or end >= 0:
        before, inside = "", text
    else:
        return ReasoningSplit(None, text, None)
    stop = inside.find(markers.end)
    if stop < 0:
        # Stopped inside the thinking: whatever it says there is not a final answer.
        return ReasoningSplit(inside.strip(), before.strip(), False)
    after = inside[stop + len(markers.end):]
    answer = (before.strip() + "\n\n" + after.strip()).strip()
    return ReasoningSplit(inside[:stop].strip(), answer, True)


def join_reasoning(
    reasoning: str | None, answer_text: str, markers: Markers = DEFAULT_MARKERS,
    finished: bool = True,
) -> str:
    """The whole trace text, thinking inside the markers, as the teacher would have written it."""
    if reasoning is None:
        return answer_text
    if not finished:
        return f"{markers.start}\n{reasoning}"
    return f"{markers.start}\n{reasoning}\n{markers.end}\n\n{answer_text}"


def token_split(
    num_tokens: int | None, text: str, reasoning_chars: int,
    token_texts: Sequence[str] | None = None, end_marker: str = THINK_END,
) -> tuple[int | None, int | None]:
    """(reasoning tokens, answer tokens) of a completion of `num_tokens` tokens.

    Exact when the sampled tokens' texts are at hand (OpenAI logprobs carry them): the thinking
    is every token up to and including the one that completes the end marker. Otherwise an
    approximation: the tokens are shared out in proportion to characters, `reasoning_chars`
    being the characters of the text up to the end of the thinking.
    """
    if num_tokens is None:
        return None, None
    if token_texts:
        seen = ""
        for count, piece in enumerate(token_texts, start=1):
            seen += piece
            if end_marker in seen:
                return count, len(token_texts) - count
        return len(token_texts), 0  # never closed: every token is thinking
    if not text:
        return 0, 0
    share = min(max(reasoning_chars / len(text), 0.0), 1.0)
    reasoning = round(num_tokens * share)
    return reasoning, num_tokens - reasoning


def reasoning_chars(text: str, split: ReasoningSplit, markers: Markers = DEFAULT_MARKERS) -> int:
    """Characters of `text` that belong to the thinking (through the end marker)."""
    if split.reasoning is None:
        return 0
    if not split.finished_thinking:
        return len(text)
    return text.find(markers.end) + len(markers.end)


@dataclass(frozen=True)
class TraceReasoning:
    """The reasoning fields of one trace, stored or computed."""

    reasoning: str | None
    answer_text: str
    finished_thinking: bool | None
    reasoning_tokens: int | None
    answer_tokens: int | None


def trace_reasoning(
    trace: Any, markers: Markers = DEFAULT_MARKERS, opened: bool = False
) -> TraceReasoning:
    """Reasoning fields of a Trace (or any record with `completion`, `num_tokens`).

    Traces written since reasoning support carry them; older ones (no `answer_text`) are split
    here from `completion`, with token counts shared out by characters.
    """
    answer_text = getattr(trace, "answer_text", None)
    if answer_text is not None:
        return TraceReasoning(
            trace.reasoning, answer_text, trace.finished_thinking,
            trace.reasoning_tokens, trace.answer_tokens,
        )
    text = trace.completion
    split = split_reasoning(text, markers, opened)
    if split.reasoning is None:
        return TraceReasoning(None, text, None, None, getattr(trace, "num_tokens", None))
    tokens = token_split(getattr(trace, "num_tokens", None), text,
                         reasoning_chars(text, split, markers))
    return TraceReasoning(split.reasoning, split.answer_text, split.finished_thinking, *tokens)


def thinking_evidence(text: str, markers: Markers = DEFAULT_MARKERS) -> str | None:
    """Who opened the thinking of a completion: "text" when it opens it itself (start marker
    first), "prompt" when it closes a thinking it never opened (the chat template had opened
    it: R1 distills), None when it has no markers (no thinking, or cut before closing one the
    prompt opened: the text alone cannot tell)."""
    start, end = text.find(markers.start), text.find(markers.end)
    if start >= 0 and (end < 0 or start < end):
        return "text"
    return "prompt" if end >= 0 else None


def prompt_opens_thinking(rendered_prompt: str, markers: Markers = DEFAULT_MARKERS) -> bool:
    """True when a rendered generation prompt ends inside the thinking (R1-distill templates)."""
    tail = rendered_prompt.rstrip()
    return tail.endswith(markers.start)


def reasoning_fields(
    text: str,
    num_tokens: int | None,
    markers: Markers = DEFAULT_MARKERS,
    opened: bool = False,
    returned_apart: bool = False,
    exact_reasoning_tokens: int | None = None,
) -> dict[str, Any]:
    """The reasoning fields of a new Trace; empty (all left null) when there is no thinking.

    `returned_apart`: the backend got the thinking as a separate field and rebuilt `text` with
    the default markers, so those are the ones to split at.
    """
    if returned_apart:
        markers, opened = Markers(), False
    split = split_reasoning(text, markers, opened)
    if split.reasoning is None:
        return {}
    if exact_reasoning_tokens is not None and num_tokens is not None:
        tokens = (exact_reasoning_tokens, num_tokens - exact_reasoning_tokens)
    else:
        tokens = token_split(num_tokens, text, reasoning_chars(text, split, markers))
    return {
        "reasoning": split.reasoning,
        "answer_text": split.answer_text,
        "finished_thinking": split.finished_thinking,
        "reasoning_tokens": tokens[0],
        "answer_tokens": tokens[1],
    }


def sft_reasoning(data: dict[str, Any], markers: Markers = DEFAULT_MARKERS) -> dict[str, Any]:
    """The thinking of a trace row, for its SFT record; empty when the trace has none.

    The SFT record's assistant turn is `join_reasoning(reasoning, answer_text)`: the thinking
    back inside `<think>` markers the way the student will be asked to write it, including
    for R1-distill traces whose `<think>` was in the prompt, not in the completion.
    """
    if data.get("answer_text") is not None:
        reasoning, answer = data.get("reasoning"), data["answer_text"]
        finished = data.get("finished_thinking")
    else:
        split = split_reasoning(data["completion"], markers)
        reasoning, answer, finished = split.reasoning, split.answer_text, split.finished_thinking
    if reasoning is None:
        return {}
    return {"reasoning": reasoning, "answer_text": answer,
            "finished_thinking": finished is not False}


def template_opens_thinking(
    model: str,
    messages: list[dict[str, str]],
    markers: Markers = DEFAULT_MARKERS,
    enable_thinking: bool | None = None,
    trust_remote_code: bool = False,
) -> bool:
    """Render `messages` as a generation prompt with the model's own chat template; True when
    it ends inside the thinking. A model folder without a usable template says False (the
    engine reports that problem itself)."""
    return template_opening(model, messages, markers, enable_thinking, trust_remote_code) is True


def template_opening(
    model: str,
    messages: list[dict[str, str]],
    markers: Markers = DEFAULT_MARKERS,
    enable_thinking: bool | None = None,
    trust_remote_code: bool = False,
    local_only: bool = False,
) -> bool | None:
    """`template_opens_thinking`, or None when the template cannot be rendered (no such model,
    no chat template), for callers that must say they could not tell. `local_only`: never
    download (the filter reads traces offline; a hub id is used only if already cached)."""
    from transformers import AutoTokenizer

    extra = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model, trust_remote_code=trust_remote_code, local_files_only=local_only)
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **extra
        )
    except (OSError, ValueError):
        return None
    if not isinstance(rendered, str):
        return None
    return prompt_opens_thinking(rendered, markers)
