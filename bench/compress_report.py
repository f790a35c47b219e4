"""bench/bench_compress.py's report: the markdown table and notes, and the plot of every
student's validation curve and chosen held-out point against total CPU minutes."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any


def plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    teacher = figures["teacher"]
    ax.axhline(teacher["accuracy"], color="black", label=f"teacher held-out "
               f"{teacher['accuracy']:.2f}")
    ax.axhspan(*teacher["accuracy_ci"], color="black", alpha=0.08)
    ax.axhline(0.9 * teacher["accuracy"], color="black", linestyle=":", label="0.9 x teacher")
    ax.axvline(90, color="grey", linestyle="--", label="90 CPU min")
    for index, (name, row) in enumerate(figures["rows"].items()):
        curve = figures["curves"][name]
        line, = ax.plot([c["cpu_min"] for c in curve], [c["validation"] for c in curve],
                        linestyle="--", marker=".", alpha=0.6, label=f"{name} validation")
        fit = row["extrapolation"]
        if fit["minutes_to_target"] is not None:  # the fitted line, out to the target
            ends = [curve[0]["cpu_min"], min(fit["minutes_to_target"], 1000.0)]
            ax.plot(ends, [fit["intercept"] + fit["slope_per_doubling"] * math.log2(x)
                           for x in ends], color=line.get_color(), linestyle=":", alpha=0.5)
        low, high = row["heldout_ci"]
        shift = 1.0 + 0.015 * (index - 1.5)  # side by side where the points coincide
        ax.errorbar([row["cpu_min"] * shift], [row["heldout"]], color=line.get_color(),
                    marker="o", yerr=[[row["heldout"] - low], [high - row["heldout"]]],
                    capsize=4, markersize=7, label=f"{name} held-out (chosen)")
    ax.set_xlabel("total CPU minutes, log scale (generation + filter + prune/init + training;\n"
                  "user+sys of all processes); dotted: fit of validation accuracy on log CPU")
    ax.set_ylabel("accuracy (greedy)")
    ax.set_title(f"0.5x students of the teacher on {figures['run']['heldout']}")
    ax.set_xscale("log")
    ax.set_xticks([10, 15, 20, 30, 45, 60, 90, 120, 240, 480, 1000])
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(-0.02, max(0.5, teacher["accuracy_ci"][1] + 0.05))
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def interval(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]"


def markdown(figures: dict[str, Any]) -> str:
    teacher, gen = figures["teacher"], figures["generate"]
    lines = [
        "# One size point: 0.5x students, width vs depth, SFT vs KD",
        "", "Commands (in order; each rerun adds to the same OUT):", "",
        *[f"- `{c}`" for c in figures["commands"]],
        "", f"Last run on {os.cpu_count()} CPUs ({platform.platform()}); load average "
        f"at the end {', '.join(f'{x:.1f}' for x in os.getloadavg())}; times are CPU time, "
        "not wall.",
        "",
        f"Kept traces: {figures['kept']} (generation {gen['cpu_s'] / 60:.1f} CPU min, "
        f"peak RSS {gen['peak_rss_gib']} GiB; filter {figures['filter']['cpu_s'] / 60:.1f} "
        "CPU min), counted in every student's x. CPU = user + system seconds of each command "
        "and every descendant it waited for (`os.wait4` rusage); a checkpoint's training CPU "
        "is the process tree's, sampled (psutil, every 2 s) when its folder appeared. "
        "Peak RSS: the largest single process (ru_maxrss) of the student's prune/init and "
        "training.", "",
        f"Teacher: held-out {teacher['accuracy']:.2f} [{teacher['accuracy_ci'][0]:.2f}, "
        f"{teacher['accuracy_ci'][1]:.2f}], validation {figures['teacher_validation']:.2f}.",
        "", "| student | params ratio | method | CPU min | checkpoint (epochs) | validation acc "
        "| held-out acc [95% CI] | - teacher [95% CI] (better/worse) | peak RSS GiB "
        "| train CPU s/step |", "|---|---:|---|---:|---|---:|---|---|---:|---:|"]
    for name, r in figures["rows"].items():
        d = r["difference"]
        lines.append(
            f"| {name} | {r['params_ratio']:.3f} | {r['start']} + {r['recovery']} | "
            f"{r['cpu_min']:.1f} | {r['checkpoint']} ({r['epochs']}) | {r['validation']:.3f} | "
            f"{r['heldout']:.2f} [{r['heldout_ci'][0]:.2f}, {r['heldout_ci'][1]:.2f}] | "
            f"{d['value']:+.2f} {interval(d['low'], d['high'])} ({d['better']}/{d['worse']}) | "
            f"{r['peak_rss_gib']} | {r['train_cpu_s_per_step']} |")
    lines += ["", "## Validation curves (every checkpoint)", "",
              "| student | checkpoint | epochs | CPU min | validation acc |",
              "|---|---|---:|---:|---:|"]
    for name, curve in figures["curves"].items():
        lines += [f"| {name} | {c['checkpoint']} | {c['epochs']} | {c['cpu_min']:.1f} | "
                  f"{c['validation']:.3f} |" for c in curve]
    lines += ["", "## Extrapolation", "",
              f"Least-squares line of validation accuracy on log2(CPU minutes) over each "
              f"student's checkpoints, solved for 0.9 x the teacher's validation accuracy "
              f"({0.9 * figures['teacher_validation']:.3f}).", "",
              "| student | slope per doubling of CPU | minutes to target |", "|---|---:|---:|"]
    for name, r in figures["rows"].items():
        e = r["extrapolation"]
        lines.append(f"| {name} | {e['slope_per_doubling']} | {minutes_cell(e)} |")
    lines += ["", "Training CE on the kept traces at the logged steps (SFT: its loss; KD: the "
              "CE term), the held-out share of answers cut at max_tokens, and a lower bound "
              "on the CPU minutes of the one setting measured to lift the 10-layer cut off "
              "zero (docs/results.md: 800 clean templated examples, 2 epochs of batch 8 = 200 "
              "steps -> 0.21 [0.14, 0.29]; still below 0.9 x the teacher): 800 kept traces at "
              "this run's generation CPU per kept trace plus 200 steps at the student's "
              "measured CPU per step.", "",
              "| student | CE by step | truncated (held-out) | CPU min, 800 traces + 200 steps |",
              "|---|---|---:|---:|"]
    for name, r in figures["rows"].items():
        trend = ", ".join(f"{k}: {v}" for k, v in thinned(r["train_ce"]).items())
        lines.append(f"| {name} | {trend} | {r['truncated_heldout']} | "
                     f"{r['cpu_min_800_traces_200_steps']} |")
    run = figures["run"]
    lines += ["", *closest(figures), "", *NOTES.format(
        validation=figures["validation_cost"]["cpu_s"] / 60,
        heldout=figures["heldout_cost"]["cpu_s"] / 60, val_size=run["val_size"],
        seed=run["seed"], source=run["source"], generate=run["generate"],
        heldout_file=run["heldout"], heldout_limit=run["heldout_limit"],
        heldout_tokens=run["heldout_tokens"], schedule="; ".join(
            f"{n} to {curve[-1]['checkpoint'].rsplit('.step', 1)[1]} steps, checkpoints at "
            + ", ".join(c["checkpoint"].rsplit(".step", 1)[1] for c in curve)
            for n, curve in figures["curves"].items()),
        val_scored=f"its first {run['val_limit']}" if run["val_limit"] else "all of them",
        budget=(f"The chosen checkpoint is the best on validation among those within "
                f"{run['budget_min']:g} total CPU minutes." if run["budget_min"] else
                "The chosen checkpoint is the best on validation (ties: the earlier).")
    ).splitlines()]
    if run["remarks"]:
        lines += ["", *Path(run["remarks"]).read_text().rstrip().splitlines()]
    return "\n".join(lines) + "\n"


def minutes_cell(fit: dict[str, Any]) -> str:
    """The fit's minutes to the target, or why there is none (a slope too flat to read)."""
    minutes = fit["minutes_to_target"]
    if minutes is None:
        return "no estimate (no upward trend)"
    return f"{minutes:.0f}" if minutes <= 100_000 else "over 100,000 (nearly flat)"


def thinned(trend: dict[Any, float], most: int = 10) -> dict[Any, float]:
    """At most `most` of the logged steps, evenly spaced, the first and the last kept (the
    JSON has them all)."""
    keys = list(trend)
    if len(keys) <= most:
        return trend
    picks = sorted({round(i * (len(keys) - 1) / (most - 1)) for i in range(most)})
    return {keys[i]: trend[keys[i]] for i in picks}


def closest(figures: dict[str, Any]) -> list[str]:
    """Which student stands nearest the teacher: held-out, then validation, then the fit, then
    the training CE at its last logged step (lower is nearer)."""
    def last_ce(r: dict[str, Any]) -> float:
        return r["train_ce"][max(r["train_ce"])] if r["train_ce"] else math.inf

    def key(item: tuple[str, dict[str, Any]]) -> tuple[float, float, float, float]:
        r = item[1]
        minutes = r["extrapolation"]["minutes_to_target"]
        return (r["heldout"], r["validation"], -(minutes or math.inf), -last_ce(r))

    name, row = max(figures["rows"].items(), key=key)
    minutes = row["extrapolation"]["minutes_to_target"]
    ces = ", ".join(f"{n} {last_ce(r)}" for n, r in figures["rows"].items())
    return [f"Closest to the teacher: **{name}** (held-out {row['heldout']:.2f}, validation "
            f"{row['validation']:.3f} at {row['cpu_min']:.1f} CPU min; "
            + (f"its fit reaches 0.9 x the teacher's validation accuracy at about "
               f"{minutes:.0f} CPU min" if minutes else "no upward trend in accuracy to "
               "extrapolate")
            + f"). Training CE at the last logged step, the tie-break: {ces}."]


NOTES = """## How this was run

- Validation: {val_size} problems drawn (seed {seed}) from {source} before anything else
  (the checkpoints were scored on {val_scored}); generate samples the training problems left
  as the config's `generate:` says ({generate}); the filter keeps verified-correct, finished,
  near-deduplicated traces and decontaminates against the validation and held-out problems.
  Held-out: the first {heldout_limit} of {heldout_file}, greedy, {heldout_tokens} tokens.
- Students: the width prune is `cotdistill student prune --target-params 0.5` (MLP and hidden
  channels ranked by activations on the kept traces, widths multiples of 64); the depth cut is
  `student init --keep-every 3` (10 of 30 layers), the depth prune `student prune --layers 10`
  (the 10 blocks of most influence on the kept traces, 1 - cos of a block's input and output,
  kept); a student whose start has the same config as
  an earlier one's gets a copy, its measured cost counted in both. Each trains (full
  fine-tune, the config's `train:`) with the learning rate decaying to 0 at its last step
  ({schedule}). A checkpoint mid-run is not the same as a shorter run
  (its learning rate has not decayed to zero). {budget}
- Not counted in x: scoring the checkpoints on validation ({validation:.1f} CPU min for all of
  them and the teacher) and the held-out evaluation ({heldout:.1f} CPU min).
"""
