"""The run's report: the chain of stages and their manifests, and the yield of each filter
stage (each round's, when refinement rounds run). `pipeline_report` also writes report.html
beside it (the same, with each filter's funnel and the evaluation's page inline)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotdistill.evaluate.html import write_run_html
from cotdistill.infra.files import (
    read_manifest,
)
from cotdistill.run.config import PipelineConfig
from cotdistill.run.headline import headline_lines
from cotdistill.run.plan import Plan
from cotdistill.run.steps import Step


def _manifest_line(step: Step) -> str:
    manifest = read_manifest(step.out) or {}
    counts = manifest.get("counts", {})
    kind = step.kind.removeprefix("refine_")
    if manifest.get("summary"):  # a stage that says in one line what it did (refine's)
        return str(manifest["summary"])
    if kind == "generate":
        rate = manifest.get("output_tokens_per_s")
        return (f"{counts.get('problems')} problems, {counts.get('samples')} samples, "
                f"mean {counts.get('mean_tokens')} tokens"
                + (f", {rate:.0f} output tok/s" if rate else ""))
    if kind == "filter":
        return (f"{counts.get('kept')} of {counts.get('traces_in')} traces kept, "
                f"{counts.get('problems_covered')} of {counts.get('problems')} problems covered")
    if step.kind == "train":
        loss = manifest.get("train_loss")
        return (f"{counts.get('train_examples')} examples, {counts.get('steps')} steps, "
                f"{manifest.get('mode')}" + (f", loss {loss:.3f}" if loss is not None else ""))
    if step.kind == "control_data":
        return f"{counts.get('drawn')} traces drawn ({counts.get('drawn_correct')} correct)"
    if step.kind == "evaluate" and counts.get("engine_starts") is not None:
        return (f"{counts.get('models')} models on {counts.get('problems')} problems, "
                f"{counts['engine_starts']} engine start(s), "
                f"{counts.get('weight_reloads', 0)} weight reload(s)")
    if step.kind == "student_init":
        return ", ".join(f"{k} {v}" for k, v in counts.items())
    return ""


def yield_lines(the_plan: Plan) -> list[str]:
    """One row per filter stage: what the teacher's tokens bought (its report.json `yield`);
    empty when no filter stage has written one."""
    rows = []
    for step in the_plan.steps:
        if step.kind.removeprefix("refine_") != "filter":
            continue
        report_file = step.out / "report.json"
        y = json.loads(report_file.read_text()).get("yield") if report_file.exists() else None
        if not y:
            continue
        solved, t = y["solved_at_k"], y["truncation"]
        if t["suggested_max_tokens"] is not None:
            limit = str(t["suggested_max_tokens"])
        else:
            limit = f"> {t['max_tokens'][-1]}" if t["max_tokens"] else "?"
        rows.append(
            f"| {step.name} | {y['samples']} | {y['teacher_tokens']} | {y['kept']} | "
            f"{_number(y['kept_per_1k_tokens'], 2)} | {_number(y['kept_per_sample'], 3)} | "
            + (f"{solved[0]:.2f} | {solved[-1]:.2f} ({len(solved)}) | " if solved else "| | ")
            + f"{_number(t['share'], 3)} | {limit} |")
    if not rows:
        return []
    return ["## Yield", "",
            "Kept traces per 1,000 teacher output tokens and per sample, by filter stage; "
            "solved@k: share of problems with gold holding a correct trace among their first k "
            "samples; the last column: the max_tokens that would cut < 2 % of samples (each "
            "filter's report.md says more).", "",
            "| filter stage | samples | teacher tokens | kept | kept / 1,000 tokens | "
            "kept / sample | solved@1 | solved@k (k) | truncated | max_tokens for < 2 % cut |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, ""]


def filter_funnels(the_plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    """(stage name, funnel) of every filter stage that wrote its report.json."""
    funnels = []
    for step in the_plan.steps:
        report_file = step.out / "report.json"
        if step.kind.removeprefix("refine_") == "filter" and report_file.exists():
            funnels.append((step.name, json.loads(report_file.read_text())["funnel"]))
    return funnels


def _number(value: float | None, digits: int) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def chain_lines(the_plan: Plan) -> list[str]:
    """Progressive chains (a student taught by another student): each link's accuracy and its
    retention against the model it learnt from (point ratio; the evaluation below gives each
    student's interval against the run's teacher). Empty when no student has a student teacher.
    """
    students = {str(s.out): s.name.split(": ")[0] for s in the_plan.steps
                if s.kind == "train" and s.name.endswith(": train")}
    taught_by = {}
    for step in the_plan.steps:
        if step.kind == "train" and step.name.endswith(": train"):
            teacher = getattr(step.config, "teacher", None)
            taught_by[step.name.split(": ")[0]] = students.get(str(teacher), "teacher")
    if all(t == "teacher" for t in taught_by.values()):
        return []
    summary_file = the_plan.evaluate_dir / "summary.json"
    models = json.loads(summary_file.read_text()).get("models", {}) if summary_file.exists() \
        else {}

    def accuracy(name: str) -> float | None:
        return (models.get(name) or {}).get("accuracy")

    lines = ["## Progressive chains", "",
             "| chain | accuracy at each step | retention of each step vs its teacher |",
             "|---|---|---|"]
    ends = [n for n in taught_by if n not in set(taught_by.values())]
    for end in ends:
        chain = [end]
        while chain[-1] != "teacher" and len(chain) <= len(taught_by):
            chain.append(taught_by.get(chain[-1], "teacher"))
        chain.reverse()
        accs = [accuracy(n) for n in chain]
        shown = ["?" if a is None else f"{a:.3f}" for a in accs]
        kept = ["?" if a is None or b is None or not a else f"{b / a:.2f}"
                for a, b in zip(accs, accs[1:], strict=False)]
        lines.append(f"| {' -> '.join(chain)} | {' -> '.join(shown)} | {', '.join(kept)} |")
    return [*lines, ""]


def pipeline_report(
    config: PipelineConfig, the_plan: Plan, record: list[dict[str, Any]], seconds: float
) -> str:
    lines = [
        "# cotdistill run",
        "",
        f"Teacher `{config.teacher or 'embedded SmolLM2-135M-Instruct'}`, training problems "
        f"`{config.problems}`, evaluation problems `{config.eval_problems}`.",
        "",
        *headline_lines(the_plan.evaluate_dir, getattr(next(
            (s.config for s in the_plan.steps if s.kind == "evaluate"), None), "confidence",
            0.95)),
        "## Stages",
        "",
        "| stage | output | time | what |",
        "|---|---|---|---|",
    ]
    for step, entry in zip(the_plan.steps, record, strict=True):
        manifest = read_manifest(step.out) or {}
        took = "reused" if entry["reused"] else f"{entry['seconds']:.0f} s"
        if entry["reused"] and manifest.get("wall_time_s") is not None:
            took += f" (took {manifest['wall_time_s']:.0f} s)"
        lines.append(f"| {step.name} | `{step.out}` | {took} | {_manifest_line(step)} |")
    lines += ["", f"This run: {seconds:.0f} s.", ""]
    lines += yield_lines(the_plan)
    lines += chain_lines(the_plan)
    if the_plan.refinement is not None:
        lines += the_plan.refinement.report_lines(the_plan.steps[-1].config)
    if the_plan.rounds is not None:  # self-training rounds (cotdistill/run/rounds/report.py)
        lines += the_plan.rounds.report_lines(the_plan.evaluate_dir)
    write_run_html(Path(config.out) / "report.html", "\n".join(lines), filter_funnels(the_plan),
                   the_plan.evaluate_dir,
                   next((s.config for s in the_plan.steps if s.kind == "evaluate"), None))
    evaluation = the_plan.evaluate_dir / "report.md"
    if evaluation.exists():
        body = evaluation.read_text().replace("# Evaluation", "## Evaluation", 1)
        lines.append(body.replace("](", f"]({the_plan.evaluate_dir.name}/"))
    return "\n".join(lines) + "\n"
