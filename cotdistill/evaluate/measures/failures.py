"""How each model fails: counts and a few examples per failure mode.

Modes, per sample (they overlap: a looping sample often also hits the token limit and has no
answer):

- `wrong_teacher_right`: wrong on a problem the reference model got right (at least half of
  its samples on the problem correct);
- `right_teacher_wrong`: correct on a problem the reference model got wrong;
- `no_answer`: no answer could be extracted;
- `token_limit`: generation stopped at the token limit (`samples.is_truncated`);
- `repeated`: more than `repeat_threshold` of its word n-grams repeat an earlier one (the
  filter's `repeat_share`, same n and threshold as its defaults).

For the stacked-bar plot each sample is also given exactly one `cause`, the first that applies
of: correct, token_limit, repeated, no_answer, wrong_answer, so the bars add up to all samples.

    table = failure_modes({"teacher": t, "student": s}, "teacher", examples=3)
    table["student"]["counts"]["no_answer"]
    lines = render_failures(table, "teacher")
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from cotdistill.evaluate.measures.samples import Sample, by_problem, is_truncated, problem_scores
from cotdistill.textstats import repeat_share

MODES = ("wrong_teacher_right", "right_teacher_wrong", "no_answer", "token_limit", "repeated")
COMPARISONS = ("wrong_teacher_right", "right_teacher_wrong")
CAUSES = ("correct", "token_limit", "repeated", "no_answer", "wrong_answer")
MODE_TITLES = {
    "wrong_teacher_right": "wrong where the teacher was right",
    "right_teacher_wrong": "right where the teacher was wrong",
    "no_answer": "no answer",
    "token_limit": "ran to the token limit",
    "repeated": "repeated itself",
}


def sample_modes(
    sample: Sample,
    teacher_right: bool | None,
    repeat_ngram: int = 4,
    repeat_threshold: float = 0.5,
) -> list[str]:
    """The failure modes of one sample; `teacher_right` is None where there is no reference."""
    modes = []
    if teacher_right is True and not sample.correct:
        modes.append("wrong_teacher_right")
    if teacher_right is False and sample.correct:
        modes.append("right_teacher_wrong")
    if sample.predicted_answer is None:
        modes.append("no_answer")
    if is_truncated(sample):
        modes.append("token_limit")
    if repeat_share(sample.completion, repeat_ngram) > repeat_threshold:
        modes.append("repeated")
    return modes


def sample_cause(modes: Sequence[str], correct: bool) -> str:
    """One cause per sample, for bars that add up to all samples."""
    if correct:
        return "correct"
    for cause in ("token_limit", "repeated", "no_answer"):
        if cause in modes:
            return cause
    return "wrong_answer"


def _example(sample: Sample, teacher: Sample | None, chars: int) -> dict[str, Any]:
    text = sample.completion
    return {
        "problem_id": sample.problem_id,
        "sample_index": sample.sample_index,
        "question": sample.question[:chars],
        "gold": sample.gold_answer,
        "predicted": sample.predicted_answer,
        "teacher_predicted": None if teacher is None else teacher.predicted_answer,
        "tokens": sample.num_tokens,
        # The end of a completion shows how it failed (the loop, the missing answer).
        "completion_tail": text if len(text) <= chars else "..." + text[-chars:],
    }


def failure_modes(
    per_model: Mapping[str, Sequence[Sample]],
    reference: str,
    *,
    examples: int = 3,
    repeat_ngram: int = 4,
    repeat_threshold: float = 0.5,
    example_chars: int = 300,
) -> dict[str, dict[str, Any]]:
    """Per model: sample count, counts per mode, causes (disjoint) and the first `examples`
    samples of each mode in problem order. The reference gets its own row without the two
    comparisons with itself."""
    ref_samples = per_model.get(reference)
    ref_right = (
        {pid: score >= 0.5 for pid, score in problem_scores(ref_samples).items()}
        if ref_samples is not None else {}
    )
    ref_first = {pid: g[0] for pid, g in by_problem(ref_samples or []).items()}
    table: dict[str, dict[str, Any]] = {}
    for name, samples in per_model.items():
        counts: Counter[str] = Counter({mode: 0 for mode in MODES})
        causes: Counter[str] = Counter({cause: 0 for cause in CAUSES})
        shown: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for group in by_problem(samples).values():
            for sample in group:
                right = None if name == reference else ref_right.get(sample.problem_id)
                modes = sample_modes(sample, right, repeat_ngram, repeat_threshold)
                counts.update(modes)
                causes[sample_cause(modes, sample.correct)] += 1
                for mode in modes:
                    if len(shown[mode]) < examples:
                        shown[mode].append(
                            _example(sample, ref_first.get(sample.problem_id), example_chars)
                        )
        table[name] = {
            "samples": len(samples),
            "counts": dict(counts),
            "causes": dict(causes),
            "examples": shown,
            "reference": None if name == reference or ref_samples is None else reference,
        }
    return table


def render_failures(table: Mapping[str, Mapping[str, Any]], reference: str) -> list[str]:
    """The report section: counts per model, then examples per student and mode."""
    if not table:
        return []
    lines = [
        "## Failure modes",
        "",
        f"Samples per mode (a sample can be in several). The teacher is `{reference}`; it was "
        "right on a problem when at least half its samples there were correct. Repeated: more "
        "than half of the word 4-grams repeat an earlier one.",
        "",
        "| model | samples | " + " | ".join(MODE_TITLES[m] for m in MODES) + " |",
        "|" + "---|" * (len(MODES) + 2),
    ]
    for name, row in table.items():
        cells = [name, str(row["samples"])]
        for mode in MODES:
            # The reference is not compared with itself, nor anyone with a missing reference.
            compared = mode in COMPARISONS and row["reference"] is None
            cells.append("-" if compared else str(row["counts"][mode]))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, row in table.items():
        if name == reference:
            continue
        lines += [f"### Examples: {name}", ""]
        for mode in MODES:
            shown = row["examples"][mode]
            if not shown:
                continue
            lines.append(f"**{MODE_TITLES[mode]}** ({row['counts'][mode]} samples)")
            lines.append("")
            for ex in shown:
                tail = ex["completion_tail"].replace("```", "'''")
                lines += [
                    f"- `{ex['problem_id']}` #{ex['sample_index']}: gold `{ex['gold']}`, "
                    f"{name} `{ex['predicted']}`, {reference} `{ex['teacher_predicted']}`, "
                    f"{ex['tokens']} tokens. Question: {ex['question']!r}",
                    "",
                    "  ```text",
                    *[f"  {line}" for line in tail.splitlines() or [""]],
                    "  ```",
                    "",
                ]
    return lines
