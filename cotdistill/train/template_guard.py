"""Refusing chat templates that would strip the thinking the student should learn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.train.data import Example, Tokenized, squeeze, tokenize_example


def check_reasoning_survives(tokenizer: Any, examples: Sequence[Example],
                             template_source: Path | str,
                             rows: Sequence[Tokenized] | None = None) -> None:
    """Every record whose assistant turn carries thinking must keep it in the trained
    (unmasked) tokens once rendered through the chat template.

    Several templates (DeepSeek-R1 distills', Qwen3's for earlier turns) drop `<think>` blocks
    from assistant turns: training would then teach the student to skip its thinking. Each
    record is checked, not a sample: a template may drop the thinking only from some turns,
    and the records may come from several sources. `rows` (the same examples tokenized) spare
    a second rendering of every record that was not cut at max_length.
    """
    if rows is not None and len(rows) != len(examples):
        raise ValueError(f"{len(rows)} tokenized rows for {len(examples)} examples")
    lost = [e for i, e in enumerate(examples)
            if e.reasoning and not _thinking_trained(
                tokenizer, e, rows[i] if rows is not None else None)]
    if not lost:
        return
    named = ", ".join(f"{e.file}:{e.line}" for e in lost[:3]) + (", ..." if len(lost) > 3 else "")
    carrying = sum(bool(e.reasoning) for e in examples)
    raise InputError(
        "the student's chat template drops the thinking from the assistant turn, so the "
        "student would learn to skip it; pass a template that keeps it (--chat-template "
        f"FILE) or train the thinking as plain text (reasoning_format: plain); {len(lost)} "
        f"of {carrying} records with thinking lose it when rendered ({named})",
        file=template_source, field="chat_template",
    )


def _thinking_trained(tokenizer: Any, example: Example, row: Tokenized | None) -> bool:
    """Whether the example's thinking is in its trained tokens (rendered again, uncut, when
    `row` is missing or was cut at max_length)."""
    if row is None or row.truncated_tokens:
        row = tokenize_example(tokenizer, example, max_length=1 << 30)
    trained = tokenizer.decode(
        [t for t, m in zip(row.input_ids, row.completion_mask, strict=True) if m]
    )
    return squeeze(example.reasoning or "") in squeeze(trained)
