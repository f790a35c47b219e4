"""The evaluation report: markdown tables, decision measures, terminal tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cotdistill.evaluate.config import EvalSample, EvaluateConfig
from cotdistill.evaluate.measures.samples import is_truncated
from cotdistill.evaluate.score import UNSCORED


def thinking_section(models: dict[str, Any]) -> list[str]:
    """Report table of `thinking_summary` per model; nothing when no model thinks."""
    rows = {name: m["thinking"] for name, m in models.items() if m.get("thinking")}
    if not rows:
        return []
    lines = [
        "", "## Thinking", "",
        "Samples whose output has a thinking part (`<think>`); accuracy split by whether the "
        "thinking finished before the token limit.", "",
        "| model | samples with thinking | mean thinking tokens | mean answer tokens | "
        "never finished | accuracy (finished) | accuracy (unfinished) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in rows.items():
        lines.append(
            f"| {name} | {t['samples_with_thinking']} | {_fmt(t['mean_thinking_tokens'], 1)} | "
            f"{_fmt(t['mean_answer_tokens'], 1)} | {_fmt(t['unfinished_share'])} | "
            f"{_fmt(t['accuracy_finished'])} | {_fmt(t['accuracy_unfinished'])} |"
        )
    return lines


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _unscored_mark(model: dict[str, Any]) -> str:
    """` (2 unscored: 1 timeout, 1 unverifiable)` beside an accuracy; nothing when none."""
    unscored = model.get("unscored") or {}
    total = sum(unscored.values())
    if not total:
        return ""
    parts = ", ".join(f"{count} {verdict}" for verdict, count in sorted(unscored.items()))
    return f" ({total} unscored: {parts})"


def _truncated_cell(model: dict[str, Any]) -> str:
    """`3 (0.250)`: truncated samples and their share (older summaries: the share only)."""
    if model.get("truncated") is None:
        return _fmt(model["truncated_share"])
    return f"{model['truncated']} ({_fmt(model['truncated_share'])})"


def _interval(value: Any, low: Any, high: Any) -> str:
    if value is None:
        return "-"
    if low is None or high is None:
        return _fmt(value)
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _params(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"


def difference_lines(differences: Sequence[dict[str, Any]], level: str) -> list[str]:
    """The paired-differences section: one row per compared pair; empty without pairs."""
    if not differences:
        return []
    lines = ["## Paired differences", "",
             f"Accuracy of a model minus another's on the same problems, {level} paired "
             "bootstrap interval over problems (an interval that excludes 0 is a measured "
             "difference); problems better / worse: where the first was right more / less "
             "often than the second.", "",
             "| model | minus | difference | problems better / worse |", "|---|---|---|---|"]
    for row in differences:
        shown = "-" if row["value"] is None else (
            f"{row['value']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]"
            if row["low"] is not None else f"{row['value']:+.3f}")
        lines.append(f"| {row['model']} | {row['versus']} | {shown} | "
                     f"{row['better']} / {row['worse']} of {row['problems']} |")
    return [*lines, ""]


def engines_sentence(engines: dict[str, int] | None) -> str:
    """The report's sentence on engine starts and weight reloads; empty when unknown."""
    if not engines:
        return ""
    started, reloaded = engines.get("started", 0), engines.get("reloaded", 0)
    text = f" Engines: {started} started"
    if reloaded:
        text += (f", weights reloaded in place for {reloaded} more model"
                 f"{'s' if reloaded != 1 else ''} of the same architecture (prefix cache "
                 "emptied at each reload)")
    return text + "."


def no_reference(config: EvaluateConfig, models: Iterable[str]) -> str:
    return (f"no model is named {config.reference!r} (the reference), so no retention is "
            f"computed; models: {', '.join(models)}. Name one `--model "
            f"{config.reference}=PATH` or set --reference to one of them.")


def render_report(summary: dict[str, Any], config: EvaluateConfig) -> str:
    """The teacher-vs-student table (markdown), then calibration and verdict counts."""
    models = summary["models"]
    table = summary["retention"]
    level = f"{config.confidence:.0%}"
    lines = [
        "# Evaluation",
        "",
        f"{next(iter(models.values()))['problems']} problems from `{config.problems}`, "
        f"prompt `{config.prompt_template}`, n={config.n}, temperature={config.temperature}, "
        f"max_tokens={config.max_tokens}. Intervals: {level} bootstrap over problems "
        f"({config.bootstrap_resamples} resamples, seed {config.bootstrap_seed}); retention "
        f"= accuracy / {config.reference} accuracy, paired over problems.",
        "",
    ]
    if config.reference not in models:
        lines += [f"**No retention:** {no_reference(config, models)}", ""]
    k = config.n
    extra_cols = [f"maj@{k}", f"pass@{k}"] if k > 1 else []
    header = ["model", "parameters", "accuracy", *extra_cols, f"retention vs {config.reference}",
              "mean tokens", "truncated", "tok/s", "s/problem", "peak memory MB"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name, m in models.items():
        ret = table.get(name)
        ret_text = "1 (reference)" if name == config.reference else (
            _interval(ret["value"], ret["low"], ret["high"]) if ret else "-"
        )
        row = [
            name + (f" [{m['quantization']}]" if m.get("quantization") else ""),
            _params(m["parameters"]),
            _interval(m["accuracy"], *m["accuracy_ci"]) + _unscored_mark(m),
            *[_fmt(m.get(c)) for c in extra_cols],
            ret_text,
            _fmt(m["mean_reasoning_tokens"], 1),
            _truncated_cell(m),
            _fmt(m["output_tokens_per_s"], 1),
            _fmt(m["seconds_per_problem"], 3),
            _fmt(m["peak_memory_mb"], 0),
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Accuracy counts a sample as correct only when the checker (math-verify) confirmed it; "
        "a mark such as `(2 unscored: 1 timeout, 1 unverifiable)` beside it counts the samples "
        "whose answer the checker could not decide (they count as not correct, so the true "
        "accuracy may be higher by up to their share). Truncated: samples cut at max_tokens "
        "(their share); a cut sample is scored only on a box or answer marker it closed before "
        "the cut, never on its last number.",
        "",
        "tok/s and s/problem: generation time of the whole batch (engine start excluded) over "
        "output tokens and problems." + engines_sentence(summary.get("engines")) + " Peak memory: "
        + (next((m["peak_memory_what"] for m in models.values() if m.get("peak_memory_what")),
                "not measured (a model served remotely)"))
        + ", while the model was loaded.",
        "",
        *difference_lines(summary.get("differences") or [], level),
        "## Calibration",
        "",
        "Confidence = exp(mean token logprob) of a sample; ECE over "
        f"{config.calibration_bins} equal-width bins.",
        "",
        "| model | ECE | samples with logprobs | verdicts |",
        "|---|---|---|---|",
    ]
    for name, m in models.items():
        verdicts = ", ".join(f"{k}: {v}" for k, v in sorted(m["verdicts"].items()))
        lines.append(
            f"| {name} | {_fmt(m['ece'])} | {m['calibration_samples']} / {m['samples']} | "
            f"{verdicts} |"
        )
    cached = [name for name, m in models.items() if m.get("cached")]
    if cached:
        lines.append(
            f"\nSamples, timings and memory of {', '.join(cached)} come from an earlier run "
            "with the same model files, problems and settings."
        )
    for name, m in models.items():
        if m.get("cache_off"):
            lines.append(f"\n`{name}`'s samples are not cached: {m['cache_off']}.")
    for name, m in models.items():
        if m.get("adapter"):
            lines.append(
                f"\n`{name}` is a LoRA adapter; it was merged into `{m['adapter']['base']}` and "
                f"served from `{m['adapter']['merged_into']}`."
            )
    lines += thinking_section(models)
    lines += ["", *decision_sections(summary, config)]
    plots = summary.get("plots") or []
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def decision_measures(
    per_model: dict[str, list[EvalSample]], summary: dict[str, Any], config: EvaluateConfig
) -> dict[str, Any]:
    """What decides a deployment (`cotdistill.evaluation`): retention per capability, failure
    modes and the teacher-vs-student deployment table."""
    from cotdistill.evaluate.measures.categories import category_results
    from cotdistill.evaluate.measures.deployment_table import deployment_table
    from cotdistill.evaluate.measures.failures import failure_modes

    return {
        "categories": category_results(
            per_model, config.reference, collapse_below=config.collapse_below,
            resamples=config.bootstrap_resamples, seed=config.bootstrap_seed,
            level=config.confidence,
        ),
        "failures": failure_modes(per_model, config.reference, examples=config.failure_examples),
        "deployment": deployment_table(
            summary["models"], config.reference, engine_dtype=config.dtype,
            max_tokens=config.max_tokens,
        ),
    }


def decision_plots(summary: dict[str, Any], config: EvaluateConfig, out: Path) -> list[str]:
    from cotdistill.evaluate.measures.plots import category_plot, failure_plot

    paths = [failure_plot(summary["failures"], out / "failures.png"),
             category_plot(summary["categories"], config.reference, out / "categories.png")]
    return [str(p) for p in paths if p is not None]


def decision_sections(summary: dict[str, Any], config: EvaluateConfig) -> list[str]:
    """Report sections for the measures of `decision_measures` (absent in older summaries)."""
    from cotdistill.evaluate.measures.categories import render_categories
    from cotdistill.evaluate.measures.deployment_table import render_deployment
    from cotdistill.evaluate.measures.failures import render_failures

    lines: list[str] = []
    if "deployment" in summary:
        lines += render_deployment(summary["deployment"], config.reference)
    if "categories" in summary:
        lines += render_categories(
            summary["categories"], config.reference, f"{config.confidence:.0%}"
        )
    if "failures" in summary:
        lines += render_failures(summary["failures"], config.reference)
    return lines


def accuracy_line(samples: Sequence[EvalSample]) -> str:
    """`accuracy 0.500 (2 unscored: 1 timeout, 1 unverifiable; 3 truncated)` for the terminal."""
    accuracy = sum(s.correct for s in samples) / len(samples)
    unscored = Counter(s.verdict for s in samples if s.verdict in UNSCORED)
    notes = []
    if unscored:
        parts = ", ".join(f"{n} {v}" for v, n in sorted(unscored.items()))
        notes.append(f"{sum(unscored.values())} unscored: {parts}")
    truncated = sum(is_truncated(s) for s in samples)
    if truncated:
        notes.append(f"{truncated} truncated")
    return f"accuracy {accuracy:.3f}" + (f" ({'; '.join(notes)})" if notes else "")


def terminal_tables(report: str, sections: tuple[str, ...] = ("Evaluation", "Paired differences",
                                                              "Deployment")) -> str:
    """The report's tables of `sections` (the accuracy table and the deployment table) with
    their headings: what the terminal shows. The rest (notes, calibration, categories,
    failure examples, plots) stays in report.md."""
    kept: list[str] = []
    keep = False
    for line in report.splitlines():
        if line.startswith("#"):
            keep = line.lstrip("#").strip() in sections
            if keep:
                kept += ["", line] if kept else [line]
        elif keep and line.startswith("|"):
            kept.append(line)
    return "\n".join(kept)
