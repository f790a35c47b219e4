"""`cotdistill tune` on the demo task, then the best trial and the default each run once more
on the whole training set and evaluated once on the held-out problems.

    .venv/bin/python bench/bench_tune.py [--config bench/tune_demo.yaml] [--trials 8]

Writes bench/results/tune.md, tune.json and tune_history.png: the search's wall time, its
trials table (validation accuracy, paired difference to the default with its interval,
verdict), the chosen values, and on the held-out set the best configuration's student minus the
default's, paired over problems, with its interval (whatever its sign).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout
RESULTS = ROOT / "bench" / "results"
CLI = str(ROOT / ".venv" / "bin" / "cotdistill")


def timed(command: list[str]) -> float:
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True)
    return round(time.time() - started, 1)


def student_samples(run_dir: Path, student: str) -> list[Any]:
    from cotdistill.evaluate.config import EvalSample

    rows = (run_dir / "evaluate" / "results.jsonl").read_text().splitlines()
    return [EvalSample.model_validate_json(r) for r in rows
            if json.loads(r)["model"] in (student, "teacher")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "bench" / "tune_demo.yaml")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--student", default="self")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-tune")
    parser.add_argument("--keep", action="store_true",
                        help="Resume a killed bench in --out instead of starting afresh.")
    args = parser.parse_args()
    from cotdistill.evaluate.summary import paired_differences

    if args.out.exists() and not args.keep:
        shutil.rmtree(args.out)
    command = [CLI, "tune", "--config", str(args.config), "--out", str(args.out / "search")]
    if args.trials is not None:
        command += ["--trials", str(args.trials)]
    search_s = timed(command)
    best_yaml = args.out / "search" / "best.yaml"
    best = yaml.safe_load(best_yaml.read_text())
    finals = {"best": best_yaml, "default": args.config}
    seconds = {"search": search_s}
    for name, config in finals.items():
        seconds[name] = timed([CLI, "run", "--config", str(config),
                               "--out", str(args.out / f"final-{name}")])

    per_model: dict[str, list[Any]] = {}
    teachers: dict[str, list[Any]] = {}
    for name in finals:
        samples = student_samples(args.out / f"final-{name}", args.student)
        per_model[name] = [s for s in samples if s.model == args.student]
        teachers[name] = [s for s in samples if s.model == "teacher"]
    (difference,) = paired_differences(per_model, [("best", "default")], resamples=1000)
    accuracy = {n: sum(s.correct for s in v) / len(v) for n, v in per_model.items()}
    teacher_accuracy = {n: sum(s.correct for s in v) / len(v) for n, v in teachers.items()}
    searched = yaml.safe_load(args.config.read_text())["tune"]["space"]
    chosen = {key: _lookup(best, key, args.student) for key in searched}
    figures = {"cpus": os.cpu_count(), "platform": platform.platform(), "seconds": seconds,
               "chosen": chosen, "held_out": {"accuracy": accuracy,
                                              "teacher_accuracy": teacher_accuracy,
                                              "best_minus_default": difference}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tune.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    history = args.out / "search" / "history.png"
    if history.exists():
        shutil.copy(history, RESULTS / "tune_history.png")
    trials_md = (args.out / "search" / "trials.md").read_text()
    report = (args.out / "search" / "report.md").read_text()
    noise = next((line for line in report.splitlines() if "noise" in line.lower()), "")
    d = difference
    lines = ["# tune on the demo task", "",
             f"`.venv/bin/python bench/bench_tune.py {' '.join(sys.argv[1:])}` on "
             f"{figures['cpus']} CPUs ({figures['platform']}); config `{args.config.name}`.", "",
             f"Search: {search_s / 60:.1f} min; then each configuration run once more on the "
             f"whole training set (best {seconds['best'] / 60:.1f} min, default "
             f"{seconds['default'] / 60:.1f} min).", "",
             "Chosen values: " + ", ".join(f"`{k}` = {v}" for k, v in chosen.items()), "",
             "## Held-out problems", "",
             "| configuration | student accuracy | its teacher's |", "|---|---:|---:|",
             *[f"| {n} | {accuracy[n]:.3f} | {teacher_accuracy[n]:.3f} |" for n in finals],
             "",
             f"Best minus default, paired over {d['problems']} problems: "
             f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] (95% bootstrap); "
             f"better on {d['better']}, worse on {d['worse']}.", "",
             "## Trials (validation split)", "", noise, "", trials_md, "",
             "![history](tune_history.png)", ""]
    (RESULTS / "tune.md").write_text("\n".join(lines))
    print(f"bench_tune: -> {RESULTS / 'tune.md'}")
    return 0


def _lookup(config: dict[str, Any], dotted: str, student: str) -> Any:
    section, key = dotted.split(".", 1)
    if section == "train":
        entry = next(s for s in config["students"] if s["name"] == student)
        return entry.get("train", {}).get(key)
    return (config.get(section) or {}).get(key)


if __name__ == "__main__":
    sys.exit(main())
