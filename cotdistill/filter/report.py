"""The filter's report: the funnel, votes per label, reasoning lengths, yield, markdown."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from cotdistill.answers.equivalence import VerifyStats
from cotdistill.filter.config import CHECKS, ORDER
from cotdistill.filter.summary import Summary
from cotdistill.filter.yield_report import yield_markdown, yield_report

# ---------------------------------------------------------------------------------------------
# Funnel and report


def funnel(summaries: Sequence[Summary]) -> dict[str, Any]:
    """Traces in and out of each check (at their first failing check), and totals per reason."""
    first = Counter(s.reasons[0] if s.reasons else None for s in summaries)
    every = Counter(r for s in summaries for r in s.reasons)
    remaining = len(summaries)
    steps = []
    for name in CHECKS:
        dropped = first.get(name, 0)
        steps.append({"check": name, "in": remaining, "rejected": dropped,
                      "out": remaining - dropped})
        remaining -= dropped
    return {
        "traces_in": len(summaries),
        "kept": first.get(None, 0),
        "rejected": len(summaries) - first.get(None, 0),
        "steps": steps,
        "reasons_any": dict(sorted(every.items(), key=lambda kv: ORDER[kv[0]])),
    }


def quantiles_of(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values = sorted(values)

    def q(p: float) -> float:
        return round(values[min(len(values) - 1, int(p * len(values)))], 4)

    return {"count": len(values), "mean": round(sum(values) / len(values), 4),
            "min": round(values[0], 4), "p10": q(0.1), "p50": q(0.5), "p90": q(0.9),
            "max": round(values[-1], 4)}


def build_report(summaries: Sequence[Summary], stats: VerifyStats | None = None) -> dict[str, Any]:
    valid = [s for s in summaries if s.problem_id is not None]
    problems = {s.problem_id for s in valid}
    covered = {s.problem_id for s in valid if not s.reasons}
    with_gold = {s.problem_id for s in valid if s.gold is not None}
    teachers: dict[str, Counter[str]] = defaultdict(Counter)
    for s in valid:
        if s.gold is None:
            continue
        outcome = "no_answer" if s.predicted is None else (s.verdict or "unverifiable")
        teachers[s.teacher][outcome] += 1
    accuracy = {}
    for teacher, counts in teachers.items():
        total = sum(counts.values())
        accuracy[teacher] = {
            "traces_with_gold": total,
            **{k: counts.get(k, 0) for k in ("correct", "wrong", "unverifiable", "timeout",
                                              "no_answer")},
            "accuracy": round(counts["correct"] / total, 4) if total else None,
            "problems_with_a_correct_trace": len(
                {s.problem_id for s in valid if s.teacher == teacher and s.verdict == "correct"
                 and s.label == "gold"}
            ),
        }
    conf: dict[str, Any] = {}
    for name, flag in (("correct", True), ("wrong", False)):
        logps = [s.mean_logprob for s in valid if s.correct is flag and s.mean_logprob is not None]
        mins = [s.min_logprob for s in valid if s.correct is flag and s.min_logprob is not None]
        conf[name] = {
            "mean_logprob": quantiles_of(logps),
            "mean_prob": quantiles_of([math.exp(v) for v in logps]),
            "min_logprob": quantiles_of(mins),
        }
    kept_per_problem = Counter(
        Counter(s.problem_id for s in valid if not s.reasons).values()
    )
    return {
        "majority_votes": majority_votes(valid),
        "funnel": funnel(summaries),
        "problems": len(problems),
        "problems_with_gold": len(with_gold),
        "majority_labelled_traces": sum(1 for s in valid if s.label == "majority"),
        "coverage": {
            "problems_with_kept_trace": len(covered),
            "share": round(len(covered) / len(problems), 4) if problems else None,
        },
        "teacher_accuracy": accuracy,
        "confidence": conf,
        "kept_per_problem": {str(k): v for k, v in sorted(kept_per_problem.items())},
        "reasoning": reasoning_report(valid),
        "verification": None if stats is None else {
            "pairs": stats.pairs, "fast_path": stats.fast_path,
            "unique_checked_with_math_verify": stats.unique_checked,
            "missing_side": stats.unverifiable_missing, "timeouts": stats.timeouts,
            "workers_killed": stats.workers_killed, "seconds": round(stats.seconds, 3),
        },
        "yield": yield_report(valid),
    }


def majority_votes(summaries: Sequence[Summary]) -> dict[str, Any]:
    """How many votes each majority label had ("votes/voters": problems), and how many traces
    of problems without gold did not vote (set aside by an early check)."""
    labels: dict[str, str] = {}
    not_voting = 0
    for s in summaries:
        if s.gold is None and s.early:
            not_voting += 1
        if s.votes is not None and s.problem_id is not None:
            labels[s.problem_id] = f"{s.votes}/{s.voters}"
    counts = Counter(labels.values())
    return {"problems": len(labels),
            "votes": dict(sorted(counts.items(), key=lambda kv: tuple(
                int(x) for x in kv[0].split("/")))),
            "traces_not_voting": not_voting}


def reasoning_report(summaries: Sequence[Summary]) -> dict[str, Any] | None:
    """Thinking lengths of correct vs wrong traces (long wrong traces: overthinking); None
    when no trace has thinking."""
    thinking = [s for s in summaries if s.finished_thinking is not None]
    if not thinking:
        return None
    lengths: dict[str, Any] = {}
    for name, flag in (("correct", True), ("wrong", False)):
        group = [s for s in thinking if s.correct is flag]
        lengths[name] = {
            "reasoning_tokens": quantiles_of(
                [s.reasoning_tokens for s in group if s.reasoning_tokens is not None]),
            "answer_tokens": quantiles_of(
                [s.answer_tokens for s in group if s.answer_tokens is not None]),
        }
    return {
        "traces_with_thinking": len(thinking),
        "unfinished_thinking": sum(1 for s in thinking if s.finished_thinking is False),
        **lengths,
    }


def _reasoning_markdown(report: dict[str, Any], plot: str | None) -> list[str]:
    r = report.get("reasoning")
    if not r:
        return []
    parts = [
        "",
        "## Thinking length (tokens) of correct vs wrong traces",
        "",
        f"{r['traces_with_thinking']} traces have thinking; {r['unfinished_thinking']} stopped "
        "inside it. Long wrong traces are the usual overthinking signature.",
        "",
        "| traces | part | count | mean | p10 | p50 | p90 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("correct", "wrong"):
        for part in ("reasoning_tokens", "answer_tokens"):
            q = r[name][part]
            label = part.removesuffix("_tokens")
            if q:
                parts.append(f"| {name} | {label} | {q['count']} | {q['mean']} | {q['p10']} | "
                             f"{q['p50']} | {q['p90']} | {q['max']} |")
            else:
                parts.append(f"| {name} | {label} | 0 | | | | | |")
    if plot:
        parts += ["", f"![thinking length]({plot})"]
    return parts


def funnel_table(report: dict[str, Any]) -> str:
    lines = ["| check | in | rejected | out |", "|---|---:|---:|---:|"]
    for step in report["funnel"]["steps"]:
        lines.append(f"| {step['check']} | {step['in']} | {step['rejected']} | {step['out']} |")
    return "\n".join(lines)


def report_markdown(
    report: dict[str, Any], plot: str | None, reasoning_plot: str | None = None
) -> str:
    f = report["funnel"]
    parts = [
        "# Filter report",
        "",
        f"{f['traces_in']} traces in, {f['kept']} kept, {f['rejected']} rejected; "
        f"{report['coverage']['problems_with_kept_trace']} of {report['problems']} problems "
        f"have a kept trace (coverage {report['coverage']['share']}).",
        "",
        "## Funnel (each rejected trace counted at its first failing check)",
        "",
        funnel_table(report),
        "",
        *(["## Checks that could not run", "",
           *(f"- {note}" for note in report.get("checks_not_run", [])), ""]
          if report.get("checks_not_run") else []),
        "## Reasons (a trace can have several)",
        "",
        "| reason | traces |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in f["reasons_any"].items()),
        "",
        "## Teacher accuracy on problems with gold",
        "",
        "| teacher | traces | correct | wrong | unverifiable | timeout | no answer | accuracy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {t} | {a['traces_with_gold']} | {a['correct']} | {a['wrong']} | "
            f"{a['unverifiable']} | {a['timeout']} | {a['no_answer']} | {a['accuracy']} |"
            for t, a in report["teacher_accuracy"].items()
        ),
        "",
        "## Confidence (mean token logprob) of correct vs wrong traces",
        "",
        "| traces | count | mean | p10 | p50 | p90 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ("correct", "wrong"):
        q = report["confidence"][name]["mean_logprob"]
        if q:
            parts.append(f"| {name} | {q['count']} | {q['mean']} | {q['p10']} | {q['p50']} | "
                         f"{q['p90']} |")
        else:
            parts.append(f"| {name} | 0 | | | | |")
    if plot:
        parts += ["", f"![confidence]({plot})"]
    parts += yield_markdown(report.get("yield"))
    parts += _votes_markdown(report)
    parts += _reasoning_markdown(report, reasoning_plot)
    return "\n".join(parts) + "\n"


def _votes_markdown(report: dict[str, Any]) -> list[str]:
    v = report.get("majority_votes")
    if not v or not v["problems"]:
        return []
    return ["", "## Majority labels (problems without gold)", "",
            f"{v['problems']} problems labelled by majority vote; "
            f"{v['traces_not_voting']} traces did not vote (rejected by an early check).", "",
            "| votes for the label / traces voting | problems |", "|---|---:|",
            *(f"| {k} | {n} |" for k, n in v["votes"].items())]
