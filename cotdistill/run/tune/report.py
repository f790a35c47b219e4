"""What `cotdistill tune` writes: the trials table (markdown and CSV), the report with the
validation split's noise floor and each trial's paired difference against the default, the
plots, and best.yaml (the run config with the values that scored best on the validation
split: a trial's, or the default's when no trial beat it)."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cotdistill.config import read_yaml
from cotdistill.run.config import PipelineConfig
from cotdistill.run.tune.config import RANKABLE, TuneConfig
from cotdistill.run.tune.space import Param

RESAMPLES, CONFIDENCE = 1000, 0.95


@dataclass
class TrialResult:
    number: int
    folder: str
    values: dict[str, Any]
    scores: dict[str, float]  # problem id -> validation score
    error: str | None = None

    @property
    def accuracy(self) -> float | None:
        return sum(self.scores.values()) / len(self.scores) if self.scores else None


def standard_error(scores: list[float]) -> float | None:
    """The noise floor: the standard error of a mean validation accuracy."""
    if len(scores) < 2:
        return None
    mean = sum(scores) / len(scores)
    return math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1) / len(scores))


def versus_default(scores: dict[str, float], default: dict[str, float], seed: int) -> Any:
    """Paired difference (trial - default) over the problems both scored, with its interval."""
    from cotdistill.evaluate.measures.metrics import bootstrap_difference

    ids = sorted(set(scores) & set(default))
    return bootstrap_difference([scores[i] for i in ids], [default[i] for i in ids],
                                resamples=RESAMPLES, seed=seed, confidence=CONFIDENCE)


def verdict(diff: Any) -> str:
    if diff.low is None:
        return "-"
    if diff.low > 0:
        return "better"
    if diff.high is not None and diff.high < 0:
        return "worse"
    return "no difference"


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def best_yaml(source: Path, params: list[Param], student: int, values: dict[str, Any],
              out: Path) -> dict[str, Any]:
    """The run config as written, with the chosen values in their sections and its own out."""
    data = read_yaml(source)
    data.pop("tune", None)
    for p in params:
        if p.key not in values:
            continue
        if p.section == "train":
            data["students"][student].setdefault("train", {})[p.name] = values[p.key]
        else:
            data.setdefault(p.section, {})[p.name] = values[p.key]
    data["out"] = str(out)
    PipelineConfig.model_validate(data)  # ready for `cotdistill run`
    return data


def _plots(out: Path, params: list[Param], results: list[TrialResult],
           default: float) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in results if r.accuracy is not None]
    names = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [r.number for r in done]
    ys = [r.accuracy for r in done]
    running = [max(ys[: i + 1]) for i in range(len(ys))]  # type: ignore[type-var]
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, running, where="post", label="best so far")
    ax.axhline(default, color="grey", linestyle="--", label="default")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="validation accuracy", title="Search history")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "history.png", dpi=100)
    plt.close(fig)
    names.append("history.png")
    for p in params:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        points = [(r.values.get(p.key), r.accuracy) for r in done if p.key in r.values]
        if p.kind == "choice":
            labels = [str(c) for c in p.choices]
            ax.plot([labels.index(str(v)) for v, _ in points], [a for _, a in points], "o")
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.plot([v for v, _ in points], [a for _, a in points], "o")
            if p.kind == "log":
                from matplotlib.ticker import NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels run together
        ax.axhline(default, color="grey", linestyle="--", label="default")
        ax.set(xlabel=p.key, ylabel="validation accuracy", title=f"Accuracy vs {p.key}")
        ax.legend()
        fig.tight_layout()
        name = f"accuracy-vs-{p.key}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        names.append(name)
    return names


def write_outputs(out: Path, source: Path, base: PipelineConfig, params: list[Param],
                  student: int, default_values: dict[str, Any], default: dict[str, float],
                  results: list[TrialResult], split: Path, config: TuneConfig) -> dict[str, Any]:
    keys = [p.key for p in params]
    n = len(default)
    default_acc = sum(default.values()) / n
    noise = standard_error(list(default.values()))
    rows = []
    for r in results:
        diff = versus_default(r.scores, default, config.seed) if r.scores else None
        rows.append({"trial": r.number, **{k: r.values.get(k) for k in keys},
                     "validation_accuracy": r.accuracy,
                     "vs_default": None if diff is None else diff.value,
                     "low": None if diff is None else diff.low,
                     "high": None if diff is None else diff.high,
                     "verdict": "failed" if r.error else verdict(diff),
                     "folder": r.folder, "error": r.error or ""})
    with open(out / "trials.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["trial", *keys, "validation_accuracy",
                                                "vs_default", "low", "high", "verdict",
                                                "folder", "error"])
        writer.writeheader()
        writer.writerows(rows)
    head = ["trial", *keys, "validation accuracy", "vs default (95% CI)", "verdict"]
    table = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head),
             "| default | " + " | ".join(_cell(default_values[k]) for k in keys)
             + f" | {default_acc:.3f} | - | - |"]
    for row in rows:
        acc = "-" if row["validation_accuracy"] is None else f"{row['validation_accuracy']:.3f}"
        diff = "-" if row["low"] is None else (
            f"{row['vs_default']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]")
        table.append(f"| {row['trial']} | " + " | ".join(_cell(row[k]) for k in keys)
                     + f" | {acc} | {diff} | {row['verdict']} |")
    (out / "trials.md").write_text("\n".join(table) + "\n")

    scored = [(r, row) for r, row in zip(results, rows, strict=True) if r.accuracy is not None]
    best, best_row = max(scored, key=lambda pair: pair[0].accuracy) if scored else (None, None)
    if best is not None and best.accuracy <= default_acc:  # type: ignore[operator]
        best, best_row = None, None  # no trial scored above the default: keep its values
    chosen = best.values if best is not None else default_values
    data = best_yaml(source, params, student, chosen, out / "best-run")
    (out / "best.yaml").write_text(
        f"# cotdistill tune: trial {best.number if best else 'default'} of the search in {out}\n"
        + yaml.safe_dump(data, sort_keys=False))
    plots = _plots(out, params, results, default_acc)
    train_count = sum(1 for line in (split / "train.jsonl").read_text().splitlines() if line)
    lines = [
        "# cotdistill tune", "",
        f"Run config `{source}`, student `{base.students[student].name}`, "
        f"{len(results)} trial(s) (TPE, seed {config.seed}) and the default. Each trial is "
        f"scored on {n} validation problems held out of the training problems before any "
        f"generation ({train_count} left to generate from); the evaluation problems "
        f"(`{base.eval_problems}`) are never scored here and are in every filter's "
        "decontamination set.", "",
        f"Noise floor: the default's validation accuracy is {default_acc:.3f} with a standard "
        f"error of {noise:.3f}." if noise is not None else "Noise floor: undefined (1 problem).",
        "",
    ]
    if n < RANKABLE:
        lines += [f"**Warning: {n} validation problems (fewer than {RANKABLE}): trials cannot "
                  "be ranked; differences below the noise floor are chance.**", ""]
    lines += ["Searched: " + "; ".join(f"`{p.key}` {p.describe()}" for p in params) + ".", "",
              "A trial is better than the default only when its paired difference's "
              f"{CONFIDENCE:.0%} bootstrap interval over the validation problems excludes 0.",
              "", *table, ""]
    if best is not None and best_row is not None:
        lines.append(f"Best: trial {best.number} ({best.accuracy:.3f}, "
                     f"{best_row['verdict']} against the default); `best.yaml` holds its values.")
    else:
        lines.append("No trial scored above the default; `best.yaml` holds the default values.")
    lines += ["", *(f"![{p}]({p})" for p in plots), ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(table))
    print(f"tune: best.yaml, report.md, trials.csv and plots are in {out}/")
    return {"best": None if best is None else best.number, "best_values": chosen,
            "default_accuracy": default_acc, "validation_problems": n,
            "noise_floor": noise, "trials": rows, "best_yaml": str(out / "best.yaml")}
