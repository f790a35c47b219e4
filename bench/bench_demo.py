"""Time the main job (`cotdistill run --config configs/demo.yaml`) from an empty output folder,
beside the demo as it was (`--before`), and rerun its training and evaluation with more
training seeds (`--seeds`) to show how far one run's headline can move.

    .venv/bin/python bench/bench_demo.py                                   # after only
    .venv/bin/python bench/bench_demo.py --before bench/demo_before.yaml --seeds 3
    time make demo && .venv/bin/python bench/bench_demo.py --after-run runs/demo \
        --before bench/demo_before.yaml --seeds 3      # the after run is `make demo`'s

Writes bench/results/demo.md and demo.json: per configuration the wall time and each stage's
seconds (the run's stages.json), the machine's load average before and after (other work on
the CPU skews the time); per training seed (the same kept traces and control draw; the
students' `train.seed` changed) each model's accuracy and the paired differences self -
teacher and self - control with their intervals, and their spread over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_time import measured  # noqa: E402  (bench/cpu_time.py)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def run(config: Path, out: Path) -> dict[str, Any]:
    """`cotdistill run` as a user runs it; its wall time, CPU time (every process it started,
    bench/cpu_time.py), stages and evaluation summary."""
    command = [str(ROOT / ".venv" / "bin" / "cotdistill"), "run", "--config", str(config),
               "--out", str(out)]
    load_before = os.getloadavg()
    cost = measured(command)
    return {**finished(out, " ".join(command)), "wall_time_s": cost["wall_s"],
            "cpu_s": cost["cpu_s"], "peak_rss_gib": cost["peak_rss_gib"],
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def finished(out: Path, how: str) -> dict[str, Any]:
    """A run done in `out` (by `run` above, or by `time make demo` on an idle machine): its
    seconds from stages.json, its figures from the evaluation."""
    record = json.loads((out / "stages.json").read_text())
    summary = json.loads((out / "evaluate" / "summary.json").read_text())
    return {
        "command": how, "wall_time_s": record["seconds"],
        "load_average_before": None, "load_average_after": None,
        "stages": {s["stage"]: ("reused" if s["reused"] else s["seconds"])
                   for s in record["stages"]},
        "engines": summary.get("engines"),
        "models": {name: {k: m.get(k) for k in ("accuracy", "accuracy_ci", "truncated_share",
                                                "parameters", "engine", "load_s",
                                                "generation_s")}
                   for name, m in summary["models"].items()},
        "differences": summary.get("differences", []),
        "retention": summary.get("retention", {}),
    }


def with_seed(config: Path, seed: int, folder: Path) -> Path:
    """`config` with every student's `train.seed` set (the control copies its student's)."""
    data = yaml.safe_load(config.read_text())
    for student in data.get("students", []):
        student.setdefault("train", {})["seed"] = seed
    for key in ("problems", "eval_problems"):  # relative to the repository, as in the config
        data[key] = str(ROOT / data[key])
    path = folder / f"seed-{seed}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def difference(figures: dict[str, Any], model: str, versus: str) -> dict[str, Any] | None:
    return next((d for d in figures["differences"]
                 if d["model"] == model and d["versus"] == versus), None)


def signed(row: dict[str, Any] | None) -> str:
    if row is None or row.get("value") is None:
        return "-"
    return f"{row['value']:+.2f} [{row['low']:+.2f}, {row['high']:+.2f}]"


def stage_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(stage for r in runs.values() for stage in r["stages"]))
    lines = ["| stage | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for stage in names:
        cells = []
        for figures in runs.values():
            value = figures["stages"].get(stage, "")
            cells.append(f"{value:.0f} s" if isinstance(value, int | float) else str(value))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **total (wall)** | " + " | ".join(
        f"**{r['wall_time_s']:.0f} s**" for r in runs.values()) + " |")
    lines.append("| engine starts in evaluate | " + " | ".join(
        str((r.get("engines") or {}).get("started", "?")) for r in runs.values()) + " |")
    return lines


def seed_table(seeds: dict[int, dict[str, Any]], student: str, control: str) -> list[str]:
    lines = [f"| training seed | teacher | {student} | {control} | {student} - teacher | "
             f"{student} - {control} |", "|---:|---:|---:|---:|---|---|"]
    for seed, figures in seeds.items():
        acc = {n: m["accuracy"] for n, m in figures["models"].items()}
        lines.append(f"| {seed} | {acc.get('teacher', 0):.2f} | {acc.get(student, 0):.2f} | "
                     f"{acc.get(control, 0):.2f} | "
                     f"{signed(difference(figures, student, 'teacher'))} | "
                     f"{signed(difference(figures, student, control))} |")
    return lines


def spread_of(values: list[float]) -> dict[str, Any]:
    """One difference over training seeds: its values, range, mean and standard deviation."""
    return {"values": values, "min": min(values, default=None), "max": max(values, default=None),
            "mean": statistics.fmean(values) if values else None,
            "stdev": statistics.stdev(values) if len(values) > 1 else None}


def spread(seeds: dict[int, dict[str, Any]], model: str, versus: str) -> dict[str, Any]:
    return spread_of([d["value"] for f in seeds.values()
                      if (d := difference(f, model, versus)) is not None
                      and d["value"] is not None])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--before", type=Path, default=None,
                        help="The demo as it was, timed first in the same run.")
    parser.add_argument("--seeds", type=int, default=1,
                        help="Training seeds (0, 1, ...): seed 0 is the timed run; the others "
                        "retrain and re-evaluate on its kept traces.")
    parser.add_argument("--student", default="self")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-demo")
    parser.add_argument("--after-run", type=Path, default=None,
                        help="A finished run of --config (e.g. runs/demo after `time make "
                        "demo`) taken as the after figures instead of running it again; the "
                        "seed reruns then happen in that folder.")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)  # fresh runs: nothing may be reused
    args.out.mkdir(parents=True)
    runs: dict[str, dict[str, Any]] = {}
    after_dir = args.after_run or args.out / "after"
    if args.after_run is not None:
        runs["after"] = finished(args.after_run, f"a finished run in {args.after_run}")
    if args.before is not None:
        runs["before"] = run(args.before, args.out / "before")
    if args.after_run is None:
        runs["after"] = run(args.config, after_dir)
    runs = {name: runs[name] for name in ("before", "after") if name in runs}
    seeds = {0: runs["after"]}
    for seed in range(1, args.seeds):
        # Same output folder: generate, filter and the control's draw are reused; the
        # students train again with the new seed and evaluate scores them (the teacher's
        # samples come from its cache).
        seeds[seed] = run(with_seed(args.config, seed, args.out), after_dir)
    control = f"{args.student}-unfiltered"
    figures = {
        "cpus": os.cpu_count(), "platform": platform.platform(), "runs": runs,
        "seeds": {str(s): f for s, f in seeds.items()},
        "spread": {f"{args.student}-teacher": spread(seeds, args.student, "teacher"),
                   f"{args.student}-{control}": spread(seeds, args.student, control)},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = ["# The demo, timed", "",
             f"`.venv/bin/python bench/bench_demo.py {' '.join(sys.argv[1:])}` on "
             f"{figures['cpus']} CPUs ({figures['platform']}). Load average before/after each "
             "run: " + "; ".join(f"{name} {r['load_average_before']} -> "
                                 f"{r['load_average_after']}" for name, r in runs.items()
                                 if r["load_average_before"] is not None)
             + " (above the CPU count: other work shared the machine).", "",
             "## Stage seconds", "", *stage_table(runs), ""]
    if len(seeds) > 1:
        s_t = figures["spread"][f"{args.student}-teacher"]
        s_c = figures["spread"][f"{args.student}-{control}"]
        lines += ["## Training seeds", "",
                  f"The after configuration's kept traces and control draw, {len(seeds)} "
                  "training seeds; paired differences on the held-out problems with 95% "
                  "bootstrap intervals (over problems, within one seed).", "",
                  *seed_table(seeds, args.student, control), "",
                  f"Spread over seeds: {args.student} - teacher from {s_t['min']:+.2f} to "
                  f"{s_t['max']:+.2f} (sd {s_t['stdev'] or 0:.3f}); {args.student} - {control} "
                  f"from {s_c['min']:+.2f} to {s_c['max']:+.2f} (sd {s_c['stdev'] or 0:.3f}).",
                  ""]
    (RESULTS / "demo.md").write_text("\n".join(lines))
    print(f"bench_demo: -> {RESULTS / 'demo.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
