"""The evaluate stage: `run_evaluate` over the configured models."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotdistill.backends import make_backend
from cotdistill.backends.sizing import Workload
from cotdistill.cards import CARD, add_model_index
from cotdistill.errors import InputError
from cotdistill.evaluate.cache import load_cached, sample_key, save_cached
from cotdistill.evaluate.config import (
    PER_MODEL,
    REPORT,
    RESULTS,
    SUMMARY,
    BackendFactory,
    EvaluateConfig,
    ModelRun,
    Verifier,
)
from cotdistill.evaluate.engines import Engines, architecture_key, engine_order
from cotdistill.evaluate.html import write_evaluation_html
from cotdistill.evaluate.per_model import model_summary, run_model, served_path
from cotdistill.evaluate.report import (
    accuracy_line,
    decision_measures,
    decision_plots,
    no_reference,
    render_report,
    terminal_tables,
)
from cotdistill.evaluate.score import default_verifier
from cotdistill.evaluate.sources import ModelSource, locate_models, parse_model_specs, weights_id
from cotdistill.evaluate.summary import paired_differences, retention
from cotdistill.infra.files import sha256_file, write_jsonl, write_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.problems import ProblemFields, load_problems
from cotdistill.prompts import load_template
from cotdistill.records import Problem


def check_problems(problems: Sequence[Problem]) -> None:
    """Every evaluation problem needs a gold answer; say which one lacks it."""
    for problem in problems:
        if problem.gold_answer is None:
            file, _, line = problem.source.rpartition(":")
            raise InputError(
                "evaluation problem has no gold answer",
                file=file or None,
                line=int(line) if line.isdigit() else None,
                field="answer",
            )


def parse_contrasts(contrasts: Sequence[str], models: dict[str, str]) -> list[tuple[str, str]]:
    """["self:self-unfiltered"] -> [("self", "self-unfiltered")], each name a model given."""
    pairs = []
    for entry in contrasts:
        model, sep, versus = entry.partition(":")
        if not sep or model.strip() not in models or versus.strip() not in models:
            raise InputError(f"contrast {entry!r} is not MODEL:OTHER over the models given "
                             f"({', '.join(models)})", field="contrasts")
        pairs.append((model.strip(), versus.strip()))
    return pairs


def load_eval_problems(config: EvaluateConfig) -> list[Problem]:
    fields = ProblemFields.of(config)
    problems = load_problems(Path(config.problems), fields)  # type: ignore[arg-type]
    if config.limit is not None:
        problems = problems[: config.limit]
    check_problems(problems)
    return problems


@locks_output("evaluate")
def run_evaluate(
    config: EvaluateConfig,
    backend_factory: BackendFactory | None = None,
    verify: Verifier | None = None,
    tables: bool = True,
) -> dict[str, Any]:
    """Evaluate every `--model` on the problems; returns the manifest.

    `tables=False` leaves the accuracy and deployment tables off the terminal (`run` prints
    them once, in its own summary)."""
    started = time.time()
    if config.problems is None or config.out is None:
        raise InputError("evaluate needs --problems and --out")
    # All input checks come before the first model is loaded.
    models = parse_model_specs(config.model)
    if config.reference not in models:
        print(f"evaluate: warning: {no_reference(config, models)}", file=sys.stderr)
    contrasts = parse_contrasts(config.contrasts, models)
    problems = load_eval_problems(config)
    template = load_template(config.prompt_template)
    if config.backend == "openai":
        sources = [ModelSource(n, s, s, None) for n, s in models.items()]
    else:
        sources = locate_models(models)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    workload = Workload.of(min(config.batch_size, len(problems)), config.n, config.max_tokens,
                           (template.render(p.question) for p in problems))
    factory = backend_factory or (
        lambda path: make_backend(config.backend, path, config, workload=workload)
    )
    verify = verify or default_verifier(config.verify_timeout_s)

    problems_hash = sha256_file(Path(config.problems))
    weights = {s.name: weights_id(s, config, factory) for s in sources}
    keys = {s.name: sample_key(config, weights[s.name], problems_hash, template)
            for s in sources}
    runs: dict[str, ModelRun] = {}
    to_run: list[ModelSource] = []
    for source in sources:
        key = keys[source.name]
        # A model scored before with the same weights, problems and settings is not run again,
        # so an interrupted evaluation resumes at the next model.
        cached = load_cached(out / PER_MODEL, source.name, key) if key is not None else None
        if cached is not None:
            runs[source.name] = cached
            print(f"evaluate: {source.name}: reusing its samples (same model and settings)")
            print(f"evaluate: {source.name} {accuracy_line(cached.samples)}")
        else:
            to_run.append(source)
    engines = Engines(factory, lambda path: architecture_key(path, config.dtype),
                      share=config.share_engine and config.backend == "vllm")
    served = {s.name: served_path(s, config) for s in to_run}
    try:
        # Models of one architecture run one after another on one engine.
        for source in engine_order(to_run, [engines.key(served[s.name]) if engines.share
                                            else None for s in to_run]):
            key = keys[source.name]
            runs[source.name] = run_model(source, problems, template, config, engines, verify)
            if key is not None:
                save_cached(out / PER_MODEL, source.name, key, runs[source.name])
            else:
                runs[source.name].extra["cache_off"] = weights[source.name].how
                print(f"evaluate: {source.name}: samples not cached: "
                      f"{weights[source.name].how}", file=sys.stderr)
            print(f"evaluate: {source.name} {accuracy_line(runs[source.name].samples)} "
                  f"({runs[source.name].extra['engine']} engine)")
    finally:
        engines.close()
    runs = {s.name: runs[s.name] for s in sources}  # the order the models were given in

    write_jsonl(out / RESULTS, (s for run in runs.values() for s in run.samples))
    summary: dict[str, Any] = {
        "models": {name: model_summary(run, config) for name, run in runs.items()},
        "engines": {"started": engines.starts, "reloaded": engines.reloads},
        "retention": retention(
            {name: run.samples for name, run in runs.items()},
            config.reference,
            resamples=config.bootstrap_resamples,
            seed=config.bootstrap_seed,
            level=config.confidence,
        ),
    }
    pairs = [(name, config.reference) for name in runs if name != config.reference]
    summary["differences"] = paired_differences(
        {name: run.samples for name, run in runs.items()},
        pairs + [c for c in contrasts if c not in pairs],
        resamples=config.bootstrap_resamples, seed=config.bootstrap_seed,
        level=config.confidence)
    from cotdistill.evaluate.plots import write_plots

    summary.update(decision_measures({n: r.samples for n, r in runs.items()}, summary, config))
    lengths = {name: [s.num_tokens for s in run.samples if s.num_tokens is not None]
               for name, run in runs.items()}
    summary["plots"] = [str(p) for p in write_plots(summary, lengths, out)]
    summary["plots"] += decision_plots(summary, config, out)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    report = render_report(summary, config)
    (out / REPORT).write_text(report)
    write_evaluation_html(out / "report.html", report,
                          [s for run in runs.values() for s in run.samples], config)
    manifest = write_manifest(
        out,
        stage="evaluate",
        config=config,
        inputs={str(config.problems): problems_hash,
                **{s.spec: weights[s.name].value or "unidentified" for s in sources}},
        counts={"problems": len(problems), "models": len(runs),
                "samples": sum(len(r.samples) for r in runs.values()),
                "engine_starts": engines.starts, "weight_reloads": engines.reloads},
        started=started,
    )
    for source in sources:
        if config.backend != "openai" and add_measured_rows(source, summary, config,
                                                            problems_hash):
            print(f"evaluate: {source.name}: measured rows added to "
                  f"{Path(source.adapter or source.path) / CARD}")
    if tables:
        print(terminal_tables(report))
    print(f"evaluate: wrote {out / REPORT}, {out / SUMMARY}, {out / RESULTS}")
    return manifest


def add_measured_rows(source: ModelSource, summary: dict[str, Any], config: EvaluateConfig,
                      problems_hash: str) -> bool:
    """This evaluation's figures as `model-index` rows in the card of a student that `cotdistill
    train` made (its folder, or its adapter's); never in a teacher's folder or a hub cache."""
    folder = Path(source.adapter or source.path)
    figures = summary["models"][source.name]
    k = figures.get("samples_per_problem")
    how = f"{k} sample{'s' if k != 1 else ''} per problem, T={config.temperature:g}"
    metrics = [{"type": "accuracy", "name": f"accuracy (pass@1; {how})",
                "value": round(figures["accuracy"], 4)}]
    for key in (f"maj@{k}", f"pass@{k}"):
        if figures.get(key) is not None:
            metrics.append({"type": key.split("@")[0], "name": f"{key} ({how})",
                            "value": round(figures[key], 4)})
    kept = (summary.get("retention") or {}).get(source.name)
    if kept and kept.get("value") is not None:
        metrics.append({"type": "retention", "name": f"accuracy / {kept['reference']}'s "
                        f"(paired bootstrap {kept['low']}..{kept['high']})",
                        "value": round(kept["value"], 4)})
    dataset = {"name": str(config.problems), "type": Path(str(config.problems)).stem,
               "revision": problems_hash[:16]}
    return add_model_index(folder, source.name, dataset, metrics)
