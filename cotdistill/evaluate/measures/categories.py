"""Accuracy and retention per capability, and the capabilities a student lost.

A student can keep the average and lose a whole kind of problem ("capability collapse"). With a
category per problem (the problems file's `category_field`, carried on each sample as
`category`), every category gets each model's accuracy and its retention against the reference
model, both with bootstrap intervals over the category's problems (`cotdistill.metrics`). A
category whose whole retention interval lies below `collapse_below` is a collapsed capability.

Without labels the problems are grouped by a proxy that needs none: quartiles of the reference
model's mean answer length per problem, so "long problems" is a category of its own.

A category too small to tell is shown as such and never flagged: with n problems and confidence
z (two-sided, from the level), the Wilson interval of a model that fails every problem reaches
up to z^2 / (n + z^2) and that of one that solves every problem down to n / (n + z^2), so no
outcome can show a retention below z^2 / n. When that is not below `collapse_below` (95%, 0.8:
up to 4 problems) the category cannot show a collapse, whatever its (bootstrap) interval says;
the bootstrap over 3 problems all failed gives [0, 0], which is the sample's narrowness, not
evidence. Above that size a collapse also needs the Wilson bound of the retention (student's
upper / reference's lower) below the threshold, so a small category needs a clearer gap.

    table = category_results({"teacher": t_samples, "student": s_samples}, "teacher",
                             collapse_below=0.8)
    table["collapsed"]    # {"student": ["length Q4 (> 180 tokens)"]}
    lines = render_categories(table, level="95%")
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from math import sqrt
from statistics import NormalDist
from typing import Any

from cotdistill.evaluate.measures.metrics import bootstrap_mean, bootstrap_ratio
from cotdistill.evaluate.measures.samples import Sample, by_problem, category_of, problem_scores

UNLABELLED = "(no category)"
UNKNOWN_LENGTH = "length unknown"


def z_score(level: float) -> float:
    """Two-sided normal quantile of a confidence level (0.95 -> 1.96)."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(share: float, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of a success share over n problems; unlike the bootstrap it
    keeps its width at 0 / n and n / n, where a small sample says least."""
    if n == 0:
        return 0.0, 1.0
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def too_small_to_tell(n: int, collapse_below: float, level: float) -> bool:
    """Whether n problems cannot show a retention below `collapse_below` even in the most
    extreme outcome (reference solves all, student none): z^2 / n (module docstring)."""
    return n == 0 or z_score(level) ** 2 / n >= collapse_below


def retention_bound(student: Sequence[float], reference: Sequence[float],
                    level: float) -> float | None:
    """Largest retention the sample size allows: the student's Wilson upper bound over the
    reference's Wilson lower bound (paired problems); None where the reference has none."""
    n, z = len(student), z_score(level)
    _, high = wilson(sum(student) / n, n, z) if n else (0.0, 1.0)
    low, _ = wilson(sum(reference) / n, n, z) if n else (0.0, 1.0)
    return high / low if low > 0 else None


def labelled_categories(samples: Sequence[Sample]) -> dict[str, str] | None:
    """problem_id -> category from the samples' `category`; None when no sample has one."""
    categories: dict[str, str] = {}
    for pid, group in by_problem(samples).items():
        labels = [c for c in (category_of(s) for s in group) if c is not None]
        if labels:
            categories[pid] = labels[0]
    if not categories:
        return None
    return {pid: categories.get(pid, UNLABELLED) for pid in by_problem(samples)}


def length_quartiles(reference: Sequence[Sample]) -> tuple[dict[str, str], list[float]]:
    """problem_id -> "length Qi (...)" by the reference's mean output tokens on the problem.

    Returns the assignment and the three quartile edges. A problem at an edge goes to the lower
    quartile; with many equal lengths some quartiles stay empty rather than split ties.
    """
    import numpy as np

    groups = by_problem(reference)
    known = {pid: [s.num_tokens for s in g if s.num_tokens is not None]
             for pid, g in groups.items()}
    lengths = {pid: sum(t) / len(t) for pid, t in known.items() if t}
    # A server without token counts leaves lengths unknown: those problems stay apart.
    unknown = {pid: UNKNOWN_LENGTH for pid in groups if pid not in lengths}
    if not lengths:
        return unknown, []
    edges = [float(e) for e in np.percentile(list(lengths.values()), [25, 50, 75])]
    names = [
        f"length Q1 (<= {edges[0]:.0f} tokens)",
        f"length Q2 ({edges[0]:.0f}-{edges[1]:.0f} tokens)",
        f"length Q3 ({edges[1]:.0f}-{edges[2]:.0f} tokens)",
        f"length Q4 (> {edges[2]:.0f} tokens)",
    ]
    assignment = {pid: names[bisect_left(edges, length)] for pid, length in lengths.items()}
    return assignment | unknown, edges


def category_results(
    per_model: Mapping[str, Sequence[Sample]],
    reference: str,
    *,
    collapse_below: float = 0.8,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Per category: problems, and per model accuracy (interval), retention (interval) and
    whether the capability collapsed. Categories come from labels if any sample carries one,
    else from the reference's answer-length quartiles (which need the reference model)."""
    everything = [s for samples in per_model.values() for s in samples]
    assignment = labelled_categories(everything)
    source, edges = "labels", None
    if assignment is None:
        if reference not in per_model:
            return {"source": None, "categories": [], "collapsed": {},
                    "collapse_below": collapse_below,
                    "note": f"no categories and no reference model {reference!r} to group by"}
        assignment, edges = length_quartiles(per_model[reference])
        source = "reference_length_quartiles"
    scores = {name: problem_scores(samples) for name, samples in per_model.items()}
    members: dict[str, list[str]] = {}
    for pid, category in assignment.items():
        members.setdefault(category, []).append(pid)
    order = sorted(members)  # labels alphabetically; "length Q1" < "length Q2" < ...
    categories = []
    collapsed: dict[str, list[str]] = {}
    too_small: list[str] = []
    for category in order:
        ids = members[category]
        small = too_small_to_tell(len(ids), collapse_below, level)
        if small:
            too_small.append(category)
        row: dict[str, Any] = {"name": category, "problems": len(ids), "models": {},
                               "too_small": small}
        for name, model_scores in scores.items():
            present = [pid for pid in ids if pid in model_scores]
            accuracy = bootstrap_mean([model_scores[p] for p in present], resamples, seed, level)
            entry: dict[str, Any] = {
                "accuracy": accuracy.value,
                "accuracy_ci": [accuracy.low, accuracy.high],
                "retention": None,
                "collapsed": False,
            }
            if name != reference and reference in scores:
                ref = scores[reference]
                paired = [p for p in present if p in ref]
                interval = bootstrap_ratio(
                    [model_scores[p] for p in paired], [ref[p] for p in paired],
                    resamples, seed, level,
                )
                entry["retention"] = interval.as_dict()
                bound = retention_bound([model_scores[p] for p in paired],
                                        [ref[p] for p in paired], level)
                entry["retention_bound"] = bound
                # Collapsed only when the whole interval is below the threshold and the sample
                # size allows it: a category too small to tell, or with no teacher success (no
                # interval), is never flagged.
                entry["collapsed"] = (
                    not small and interval.high is not None and interval.high < collapse_below
                    and bound is not None and bound < collapse_below
                )
                if entry["collapsed"]:
                    collapsed.setdefault(name, []).append(category)
            row["models"][name] = entry
        categories.append(row)
    result: dict[str, Any] = {
        "source": source,
        "collapse_below": collapse_below,
        "categories": categories,
        "collapsed": collapsed,
        "too_small": too_small,
        # The most problems a category can have and still be too small (the docstring's rule).
        "too_small_max_problems": _largest_too_small(collapse_below, level),
    }
    if edges is not None:
        result["length_edges"] = edges
    return result


def _largest_too_small(collapse_below: float, level: float) -> int:
    """Largest n with z^2 / n >= collapse_below."""
    return int(z_score(level) ** 2 / collapse_below)


def _interval(value: float | None, low: float | None, high: float | None) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} [{low:.2f}, {high:.2f}]"


def render_categories(table: Mapping[str, Any], reference: str, level: str) -> list[str]:
    """The report section: one row per category, accuracy and retention per model."""
    if not table.get("categories"):
        note = table.get("note")
        return ["## Per-capability results", "", note or "No categories.", ""] if note else []
    names = list(table["categories"][0]["models"])
    students = [n for n in names if n != reference]
    if table["source"] == "labels":
        how = "Categories come from the problems file (`category_field`)."
    else:
        how = (f"No categories were given: problems are grouped by quartiles of {reference}'s "
               "mean answer length on them (a proxy that needs no labels).")
    lines = [
        "## Per-capability results",
        "",
        f"{how} Accuracy and retention (vs {reference}) per category, with {level} bootstrap "
        f"intervals over the category's problems. **collapsed**: the whole retention interval "
        f"lies below {table['collapse_below']}, and so does the bound the sample size allows "
        "(Wilson: student's upper / reference's lower). **too small to tell**: no result on so "
        f"few problems (here up to {table.get('too_small_max_problems', '?')}) could show a "
        "retention below the threshold; such a category is never flagged.",
        "",
    ]
    header = ["category", "problems", *[f"{n} accuracy" for n in names],
              *[f"{n} retention" for n in students]]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in table["categories"]:
        small = row.get("too_small", False)
        cells = [row["name"], str(row["problems"]) + (" (too small to tell)" if small else "")]
        cells += [_interval(row["models"][n]["accuracy"], *row["models"][n]["accuracy_ci"])
                  for n in names]
        for n in students:
            ret = row["models"][n]["retention"]
            text = "-" if ret is None else _interval(ret["value"], ret["low"], ret["high"])
            mark = (" **collapsed**" if row["models"][n]["collapsed"]
                    else " (too small to tell)" if small and ret is not None else "")
            cells.append(text + mark)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if table["collapsed"]:
        for name, lost in table["collapsed"].items():
            lines.append(f"Collapsed capabilities of {name}: {', '.join(lost)}.")
    else:
        lines.append(f"No collapsed capability (threshold {table['collapse_below']}).")
    if table.get("too_small"):
        lines.append(f"Too small to tell: {', '.join(table['too_small'])}.")
    lines.append("")
    return lines
