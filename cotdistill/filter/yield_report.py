"""The yield report: how much kept data the teacher's tokens bought.

Figures, all over the traces the filter read (one filter stage: one round):
- kept traces per 1,000 teacher output tokens and per sample;
- solved@k: the share of problems with gold that hold a correct finished trace (not cut at
  max_tokens: a cut one's last number is no solution) among their first k samples (by sample
  index), as `generate --until-correct` counts them, and kept@k, the share of all problems
  with a kept trace among them; a problem with fewer than k samples (`generate
  --until-correct` stopped it) counts with what it has;
- what each problem cost (samples, output tokens) against what it gave (kept traces);
- the share truncated at `max_tokens`, the length distribution of finished traces, and the
  smallest `max_tokens` that would cut fewer than 2 % of the samples. A cut trace's real length
  is unknown, so a limit below the one used is read off the finished lengths exactly, and none
  above it can be promised: then the line says so.

    report = yield_report(summaries)   # a dict, in the filter's report.json under "yield"
    lines = yield_markdown(report)
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from cotdistill.filter.summary import Summary

CUT_TARGET = 0.02  # the truncated share the max_tokens advice aims under


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """Count, mean and the percentiles a length limit is chosen from (nearest rank)."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))]

    return {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 2),
            "min": ordered[0], "p50": rank(0.5), "p90": rank(0.9), "p98": rank(0.98),
            "p99": rank(0.99), "max": ordered[-1]}


def _per(count: int, total: int, scale: int = 1) -> float | None:
    return round(scale * count / total, 4) if total else None


def solved_at_k(
    outcomes: dict[str, list[tuple[int, bool]]], ks: int | None = None
) -> list[float]:
    """Share of problems with a True among their first k samples, for k = 1..ks.

    `outcomes`: each problem's (sample_index, outcome) pairs in any order.
    """
    if not outcomes:
        return []
    first: list[int | None] = []
    for pairs in outcomes.values():
        ordered = [ok for _, ok in sorted(pairs, key=lambda pair: pair[0])]
        first.append(next((i + 1 for i, ok in enumerate(ordered) if ok), None))
    top = ks if ks is not None else max(len(p) for p in outcomes.values())
    return [round(sum(1 for f in first if f is not None and f <= k) / len(first), 4)
            for k in range(1, top + 1)]


def truncation(summaries: Sequence[Summary]) -> dict[str, Any]:
    """Share cut at max_tokens, finished lengths, and the max_tokens that cuts < 2 %."""
    known = [s for s in summaries if s.finish_reason is not None]
    cut = [s for s in known if s.finish_reason == "length"]
    finished = sorted(s.num_tokens for s in known if s.finish_reason != "length")
    limits = sorted({s.max_tokens for s in known if s.max_tokens is not None})
    out: dict[str, Any] = {
        "samples": len(known), "truncated": len(cut), "share": _per(len(cut), len(known)),
        "max_tokens": limits, "finished_tokens": percentiles(finished),
        "histogram": _histogram(finished), "suggested_max_tokens": None,
    }
    if not known:
        out["advice"] = "no trace says how it ended (finish_reason): truncation unknown"
        return out
    limit = limits[-1] if limits else None
    allowed = math.ceil(CUT_TARGET * len(known)) - 1 - len(cut)  # cuts that stay under 2 %
    used = f"max_tokens {limit}" if limit is not None else "the limit used"
    if allowed < 0:
        p98 = out["finished_tokens"]["p98"] if finished else None
        out["advice"] = (
            f"{out['share']:.1%} of samples hit {used}: no max_tokens at or below it cuts "
            f"< 2 %; raise it (finished traces' p98 is {p98} tokens; the cut ones needed "
            f"more than {limit if limit is not None else 'the limit'})")
        return out
    suggested = finished[-(allowed + 1)] if allowed < len(finished) else 1
    share = (sum(1 for n in finished if n > suggested) + len(cut)) / len(known)
    out["suggested_max_tokens"] = suggested
    out["advice"] = (f"max_tokens {suggested} would cut {share:.1%} of samples (< 2 %); "
                     f"{used} cut {out['share']:.1%}")
    return out


def _histogram(values: Sequence[int], bins: int = 20) -> dict[str, list[int]] | None:
    if not values:
        return None
    low, high = min(values), max(values)
    width = max(1, math.ceil((high - low + 1) / bins))
    edges = list(range(low, high + width + 1, width))
    counts = [0] * (len(edges) - 1)
    for v in values:
        counts[min((v - low) // width, len(counts) - 1)] += 1
    return {"edges": edges, "counts": counts}


def yield_report(summaries: Sequence[Summary]) -> dict[str, Any]:
    """The yield figures of one filter stage (see the module docstring)."""
    valid = [s for s in summaries if s.problem_id is not None]
    kept = sum(1 for s in valid if not s.reasons)
    tokens = sum(s.num_tokens for s in valid)
    correct: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    kept_at: dict[str, list[tuple[int, bool]]] = defaultdict(list)
    cost: dict[str, Counter[str]] = defaultdict(Counter)
    for s in valid:
        pid = s.problem_id
        assert pid is not None
        kept_at[pid].append((s.sample_index, not s.reasons))
        if s.gold is not None:  # as generate --until-correct counts: right and finished
            correct[pid].append((s.sample_index, s.correct is True and s.label == "gold"
                                 and s.finish_reason != "length"
                                 and s.finished_thinking is not False))
        cost[pid].update(samples=1, tokens=s.num_tokens, kept=0 if s.reasons else 1)
    samples_of = [c["samples"] for c in cost.values()]
    per_problem = {pid: {"samples": c["samples"], "tokens": c["tokens"], "kept": c["kept"]}
                   for pid, c in cost.items()}
    return {
        "samples": len(valid),
        "teacher_tokens": tokens,
        "kept": kept,
        "kept_per_1k_tokens": _per(kept, tokens, 1000),
        "kept_per_sample": _per(kept, len(valid)),
        "correct_with_gold": sum(ok for pairs in correct.values() for _, ok in pairs),
        "problems": len(cost),
        "problems_with_gold": len(correct),
        "solved_at_k": solved_at_k(correct),
        "kept_at_k": solved_at_k(kept_at),
        "samples_per_problem": percentiles(samples_of),
        "cost": {
            "with_kept_trace": _cost_of([c for c in cost.values() if c["kept"]]),
            "without": _cost_of([c for c in cost.values() if not c["kept"]]),
        },
        "truncation": truncation(valid),
        "per_problem": per_problem,
    }


def _cost_of(costs: Sequence[Counter[str]]) -> dict[str, Any]:
    return {"problems": len(costs), "samples": sum(c["samples"] for c in costs),
            "tokens": sum(c["tokens"] for c in costs)}


def yield_line(y: dict[str, Any]) -> str:
    """One line: what the teacher's tokens bought (the run's report shows one per filter)."""
    solved = y["solved_at_k"]
    at = f"solved@1 {solved[0]:.2f}, solved@{len(solved)} {solved[-1]:.2f}" if solved else \
        "no problem with gold"
    per_k = y["kept_per_1k_tokens"]
    return (f"{y['kept']} kept of {y['samples']} samples, "
            f"{'?' if per_k is None else f'{per_k:.2f}'} per 1,000 teacher tokens, "
            f"{y['kept_per_sample']} per sample; {at}; "
            f"{_share(y['truncation']['share'])} truncated")


def _share(value: float | None) -> str:
    return "?" if value is None else f"{value:.1%}"


def yield_markdown(y: dict[str, Any] | None) -> list[str]:
    """The report.md section (empty for a report without yield: a merge of shards)."""
    if not y:
        return []
    t = y["truncation"]
    solved, kept_at = y["solved_at_k"], y["kept_at_k"]
    ks = sorted({1, 2, 4, 8, 16, 32, 64, len(kept_at)} & set(range(1, len(kept_at) + 1)))
    lines = [
        "", "## Yield", "",
        yield_line(y) + ".", "",
        f"- teacher output tokens: {y['teacher_tokens']}; kept traces: {y['kept']} "
        f"({y['kept_per_1k_tokens']} per 1,000 tokens, {y['kept_per_sample']} per sample); "
        f"correct traces on problems with gold: {y['correct_with_gold']}",
        f"- samples per problem: {_quantile_text(y['samples_per_problem'])}",
        f"- problems with a kept trace: {y['cost']['with_kept_trace']['problems']}, costing "
        f"{y['cost']['with_kept_trace']['samples']} samples / "
        f"{y['cost']['with_kept_trace']['tokens']} tokens; without: "
        f"{y['cost']['without']['problems']}, costing {y['cost']['without']['samples']} "
        f"samples / {y['cost']['without']['tokens']} tokens (each problem: report.json, "
        "`yield.per_problem`)",
        "", "| k | solved@k (problems with gold) | kept@k (all problems) |", "|---:|---:|---:|",
        *(f"| {k} | {solved[k - 1] if k <= len(solved) else ''} | {kept_at[k - 1]} |"
          for k in ks),
        "", "### Length and truncation", "",
        f"{t['truncated']} of {t['samples']} samples ({_share(t['share'])}) stopped at "
        f"max_tokens {', '.join(map(str, t['max_tokens'])) or '?'}. Finished traces "
        f"(tokens): {_quantile_text(t['finished_tokens'])}.", "",
        f"{t['advice'][0].upper()}{t['advice'][1:]}.",
    ]
    if y.get("plot"):
        lines += ["", f"![yield]({y['plot']})"]
    return lines


def _quantile_text(q: dict[str, float] | None) -> str:
    if not q:
        return "none"
    return ", ".join(f"{k} {q[k]}" for k in ("mean", "min", "p50", "p90", "p98", "max"))
