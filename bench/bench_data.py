"""Seeds alone vs seeds + synthetic problems + a self-training round (issue 21's "Done when"):
the same student and optimizer-step budget, data made once, the final training repeated with
training seeds 0, 1, 2, paired accuracy differences on the held-out problems.

    .venv/bin/python bench/bench_data.py --tasks demo gsm8k --seeds 3 --stop-at 15:22
    .venv/bin/python bench/bench_data.py --tasks demo gsm8k --seeds 3 --stop-at 15:30 --resume
    .venv/bin/python bench/bench_data.py --tasks gsm8k --seeds 3 --resume
    # (the results in bench/results/data.md: demo seeds 0-1 by the first, 2 by the second;
    # GSM8K seed 0 by the second, seeds 1-2 by the third)

Per task two run configs, bench/data_<task>_a.yaml (arm A: seeds alone) and
bench/data_<task>_b.yaml (arm B: the same plus `synthesize:` and `rounds:`), each run by
`cotdistill run` as a user runs it, in runs/bench_data/<task>/{A,B}. Seed 0 makes the data; a
later seed reruns the same folders with only the compared student's training seed changed
(arm A: `students[0].train.seed`; arm B: `rounds.train.seed`), so generate, filter, synthesis,
the round's sampling and arm B's round-0 student are reused. The bench writes its own seed
files under runs/bench_data/seeds/ (the demo's word problems with an `equation` field "a+b";
GSM8K problems with exactly one `<<...>>` annotation, with ids). A seed pair not started by
`--stop-at` (UTC) is left out and said so.

Writes bench/results/data.md, data.json and data.png: per task and seed the examples each
final student trained on, accuracy A and B, B - A with a 95% paired bootstrap interval over
problems (evaluate's `paired_differences` on the two runs' results), the spread over seeds,
the yield per arm and round (the filters' report.json), and wall and CPU seconds per run,
then bench/data_remarks.md (notes on the figures, written by hand).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_demo import run as run_config  # noqa: E402  (the bench beside this one)
from bench_demo import spread_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "runs" / "bench_data"
SEEDS = OUT / "seeds"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k"
# The compared students: arm A's own, arm B's round-1 student.
FINAL = {"A": "self", "B": "self-st-1"}
# Keys in which the arms may differ; everything else (train keys above all) must be equal.
ARM_KEYS = {"out", "problems", "synthesize", "rounds"}


# --- seed files --------------------------------------------------------------------------------


def demo_seeds() -> Path:
    """The demo's training problems with `equation: "a+b"` from the question's two numbers
    (checked against every answer), so that `numbers` synthesis labels exactly."""
    path = SEEDS / "word_problems_train_eq.jsonl"
    rows = []
    for line in (ROOT / "data" / "word_problems" / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        a, b = (int(x) for x in re.findall(r"\d+", row["question"]))
        if a + b != int(row["answer"]):
            raise SystemExit(f"bench_data: {row['id']}: answer is not a+b")
        rows.append({**row, "equation": f"{a}+{b}"})
    write_rows(path, rows)
    return path


def gsm8k_one(split: str) -> Path:
    """GSM8K problems whose solution has exactly one `<<...>>` annotation, with ids."""
    path = SEEDS / f"gsm8k_one_{split}.jsonl"
    rows = []
    for i, line in enumerate((GSM8K / f"{split}.jsonl").read_text().splitlines()):
        row = json.loads(line)
        if len(re.findall(r"<<[^>]*>>", row["answer"])) == 1:
            rows.append({"id": f"gsm8k-{split}-{i:04d}", **row})
    write_rows(path, rows)
    return path


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if not path.exists() or path.read_text() != text:  # unchanged: its hash, and reuse, hold
        path.write_text(text)


# --- configs -----------------------------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def check_arms(a: dict[str, Any], b: dict[str, Any]) -> None:
    """The arms differ only in their data keys; a round may only change the training seed."""
    differ = sorted(k for k in set(a) | set(b) if k not in ARM_KEYS and a.get(k) != b.get(k))
    if differ:
        raise SystemExit(f"bench_data: the arms differ in {differ}")
    if set((b.get("rounds") or {}).get("train", {})) - {"seed"}:
        raise SystemExit("bench_data: rounds.train must not change the final student's keys")


def seeded(config: dict[str, Any], arm: str, seed: int, folder: Path) -> Path:
    """The arm's config with the compared student's training seed set, written to `folder`."""
    data = json.loads(json.dumps(config))
    if arm == "A":
        data["students"][0].setdefault("train", {})["seed"] = seed
    else:
        data["rounds"].setdefault("train", {})["seed"] = seed
    path = folder / f"{arm}-seed-{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def scaled(config: dict[str, Any], smoke: bool) -> dict[str, Any]:
    """`--smoke`: tiny limits, to catch errors before the real run."""
    if not smoke:
        return config
    data = json.loads(json.dumps(config))
    data["out"] = data["out"].replace("bench_data/", "bench_data/smoke/")
    data["generate"].update(limit=4, n=2, max_tokens=64)
    data["students"][0]["train"].update(max_steps=1, save_steps=1, compile=False)
    data["evaluate"].update(limit=4, max_tokens=64)
    if "synthesize" in data:
        data["synthesize"].update(n=2, min_votes=2, max_tokens=64)
    return data


# --- one run and what it produced --------------------------------------------------------------


def timed_run(config: Path, out: Path) -> dict[str, Any]:
    """`cotdistill run` (bench_demo's), with the CPU seconds of the process tree."""
    try:
        return run_config(config, out)
    except SystemExit as exc:
        return {"failed": str(exc)}


def trained(out: Path, arm: str) -> dict[str, Any]:
    folder = out / ("students/self/model" if arm == "A" else "rounds/round-1/train")
    manifest = json.loads((folder / "manifest.json").read_text())
    counts = manifest["counts"]
    return {"examples": counts["train_examples"], "steps": counts["steps"],
            "new_steps": counts["new_steps"], "seed": manifest["config"]["seed"],
            "train_s": manifest["train_runtime_s"]}


def samples(results: Path, model: str) -> list[Any]:
    from cotdistill.evaluate.config import EvalSample

    rows = (results / "results.jsonl").read_text().splitlines()
    return [EvalSample.model_validate_json(r) for r in rows if json.loads(r)["model"] == model]


def paired(kept: dict[str, Path]) -> dict[str, Any]:
    """Accuracy of each final student and B - A, paired over the held-out problems."""
    from cotdistill.evaluate.measures.samples import problem_scores
    from cotdistill.evaluate.summary import paired_differences

    per_model = {arm: samples(kept[arm], FINAL[arm]) for arm in ("A", "B")}
    accuracy = {arm: statistics.fmean(problem_scores(s).values()) for arm, s in per_model.items()}
    difference = paired_differences(per_model, [("B", "A")], resamples=1000, seed=0)[0]
    return {"accuracy_A": accuracy["A"], "accuracy_B": accuracy["B"], "difference": difference}


def keep_results(out: Path, folder: Path, figures: dict[str, Any]) -> None:
    """An arm's evaluation results at one seed, kept (the next seed rewrites the run's), with
    its run figures: a rerun of the bench takes them instead of running the arm again."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("results.jsonl", "summary.json"):
        shutil.copy(out / "evaluate" / name, folder / name)
    (folder / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")


def arm_at_seed(arm: str, config: dict[str, Any], seed: int, folder: Path) -> dict[str, Any]:
    """One arm's run at one seed, or the figures kept from an earlier bench run."""
    kept = folder / "results" / f"{arm}-seed-{seed}"
    if (kept / "figures.json").is_file():
        return {**json.loads((kept / "figures.json").read_text()), "kept_from_earlier": True}
    out = ROOT / config["out"]
    figures = timed_run(seeded(config, arm, seed, folder / "configs"), out)
    if "failed" not in figures:
        figures["trained"] = trained(out, arm)
        keep_results(out, kept, figures)
    return figures


def seed_pair(task: str, configs: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    """Both arms at one training seed: their runs, trainings and the paired difference."""
    folder = OUT / ("smoke" if "smoke" in configs["A"]["out"] else "") / task
    runs = {}
    for arm, config in configs.items():
        runs[arm] = arm_at_seed(arm, config, seed, folder)
        if "failed" in runs[arm]:
            return {"seed": seed, "runs": runs}
    kept = {arm: folder / "results" / f"{arm}-seed-{seed}" for arm in configs}
    return {"seed": seed, "runs": runs, **paired(kept)}


# --- what the data cost ------------------------------------------------------------------------


def filter_yield(folder: Path) -> dict[str, Any] | None:
    path = folder / "report.json"
    if not path.is_file():
        return None
    y = json.loads(path.read_text()).get("yield") or {}
    return {k: y.get(k) for k in ("samples", "teacher_tokens", "kept", "kept_per_1k_tokens",
                                  "kept_per_sample", "problems", "solved_at_k")}


def yields(out: Path) -> dict[str, Any]:
    """Per round (0: the main chain, the teacher sampling) the filter's yield; the synthesis'
    counts where there is one."""
    from cotdistill.run.rounds.report import solved

    rounds = {"0": filter_yield(out / "filter")}
    for folder in sorted((out / "rounds").glob("round-*")):
        figures = filter_yield(folder / "filter")
        if figures is not None:  # adaptive: problems that reached until_correct
            figures["solved"] = solved(folder / "generate")
        rounds[folder.name.removeprefix("round-")] = figures
    manifest = out / "synthesize" / "manifest.json"
    synth = json.loads(manifest.read_text())["counts"] if manifest.is_file() else None
    problems = out / "synthesize" / "problems" / "manifest.json"
    joined = json.loads(problems.read_text())["counts"] if problems.is_file() else None
    return {"rounds": rounds, "synthesize": synth, "generated_problems": joined}


def drop_models(out: Path) -> None:
    """The trained models of a finished task (disk is limited), whole folders, so that a later
    run retrains them instead of reusing a train stage without weights; every figure the
    bench reports is kept under runs/bench_data/<task>/results."""
    for folder in [*out.glob("students/*/model"), *out.glob("rounds/round-*/train")]:
        shutil.rmtree(folder)


# --- the task ----------------------------------------------------------------------------------


def spread(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    return spread_of([p["difference"]["value"] for p in pairs if "difference" in p])


def run_task(task: str, seeds: int, stop_at: datetime | None, smoke: bool,
             figures: dict[str, Any]) -> None:
    configs = {arm: scaled(load(ROOT / "bench" / f"data_{task}_{arm.lower()}.yaml"), smoke)
               for arm in ("A", "B")}
    check_arms(configs["A"], configs["B"])
    entry = figures["tasks"].setdefault(task, {"pairs": [], "left_out": []})
    entry["left_out"] = []
    done = {p["seed"] for p in entry["pairs"] if "difference" in p}
    entry["pairs"] = [p for p in entry["pairs"] if p["seed"] in done]
    for seed in range(seeds):
        if seed in done:  # --resume: measured before
            continue
        if stop_at is not None and datetime.now(UTC) >= stop_at:
            entry["left_out"].append({"seed": seed, "why": f"not started by {stop_at:%H:%M} UTC"})
            continue
        pair = seed_pair(task, configs, seed)
        entry["pairs"].append(pair)
        entry["yield"] = {arm: yields(ROOT / configs[arm]["out"]) for arm in configs}
        entry["spread"] = spread(entry["pairs"])
        write(figures)
        if "difference" not in pair:
            break  # a failed run: later seeds would fail alike
    complete = len([p for p in entry["pairs"] if "difference" in p]) == seeds
    if complete and not smoke:
        for arm in configs:
            drop_models(ROOT / configs[arm]["out"])
    write(figures)


# --- the report --------------------------------------------------------------------------------


def num(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def interval(d: dict[str, Any]) -> str:
    return f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def pair_rows(pairs: list[dict[str, Any]]) -> list[str]:
    lines = ["| training seed | examples A / B | steps A / B | accuracy A | accuracy B | "
             "B - A [95% CI] | B better / worse | wall s A / B | CPU s A / B |",
             "|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for p in pairs:
        runs = p["runs"]
        if "difference" not in p:
            failed = "; ".join(f"{arm}: {r['failed']}" for arm, r in runs.items() if "failed" in r)
            lines.append(f"| {p['seed']} | failed: {failed} | | | | | | | |")
            continue
        t = {arm: runs[arm]["trained"] for arm in ("A", "B")}
        d = p["difference"]
        lines.append(
            f"| {p['seed']} | {t['A']['examples']} / {t['B']['examples']} | "
            f"{t['A']['new_steps']} / {t['B']['new_steps']} | {p['accuracy_A']:.2f} | "
            f"{p['accuracy_B']:.2f} | {interval(d)} | {d['better']} / {d['worse']} | "
            f"{num(runs['A']['wall_time_s'])} / {num(runs['B']['wall_time_s'])} | "
            f"{num(runs['A']['cpu_s'])} / {num(runs['B']['cpu_s'])} |")
    return lines


def yield_rows(entry: dict[str, Any]) -> list[str]:
    lines = ["| arm | round | generator | samples | generator tokens | kept | "
             "kept / 1,000 tokens | kept / sample | problems solved |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for arm, y in entry.get("yield", {}).items():
        for index, r in y["rounds"].items():
            if r is None:
                continue
            who = "teacher" if index == "0" else "self (round 0 student)"
            lines.append(f"| {arm} | {index} | {who} | {r['samples']} | {r['teacher_tokens']} | "
                         f"{r['kept']} | {r['kept_per_1k_tokens']:.2f} | "
                         f"{r['kept_per_sample']:.3f} | {solved_cell(r)} |")
    return lines


def solved_cell(figures: dict[str, Any]) -> str:
    """Problems with a verified trace: the adaptive generate's count, else solved@k's last."""
    if figures.get("solved"):
        return str(figures["solved"])
    at_k, problems = figures.get("solved_at_k") or [], figures.get("problems")
    return f"{round(at_k[-1] * problems)} of {problems}" if at_k and problems else "?"


def stage_seconds(entry: dict[str, Any]) -> list[str]:
    """Seed 0's runs (the data made): each stage's seconds, reused ones left out."""
    if not entry["pairs"]:
        return []
    runs = entry["pairs"][0]["runs"]
    lines = ["| arm | stages (seconds, seed 0: the data made) | wall s | CPU s |",
             "|---|---|---:|---:|"]
    for arm, r in runs.items():
        if "failed" in r:
            continue
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stages"].items()
                           if isinstance(v, int | float))
        lines.append(f"| {arm} | {stages} | {num(r['wall_time_s'])} | {num(r['cpu_s'])} |")
    return lines


def task_lines(task: str, entry: dict[str, Any]) -> list[str]:
    s = entry.get("spread") or {}
    lines = [f"## {task}", "", *pair_rows(entry["pairs"]), ""]
    lines += [f"Seed {p['seed']}, arm {arm}: {r['note']}." for p in entry["pairs"]
              for arm, r in p["runs"].items() if r.get("note")]
    if s.get("values"):
        lines += [f"Over {len(s['values'])} seed(s): B - A mean {s['mean']:+.3f}, from "
                  f"{s['min']:+.3f} to {s['max']:+.3f}"
                  + (f" (sd {s['stdev']:.3f})." if s["stdev"] is not None else "."), ""]
    for left in entry["left_out"]:
        lines += [f"Training seed {left['seed']} left out: {left['why']}.", ""]
    synth = (entry.get("yield", {}).get("B") or {}).get("synthesize")
    joined = (entry.get("yield", {}).get("B") or {}).get("generated_problems")
    if synth:
        lines += [f"Synthesis (arm B): counts {json.dumps(synth)}; problems generate sampled: "
                  f"{json.dumps(joined)}.", ""]
        if synth["kept"] == 0:
            lines += ["No synthetic problem was kept, so arm B here is seeds + the "
                      "self-training round only (its main chain samples the same seeds as "
                      "arm A).", ""]
    return lines + ["Yield (each filter's report.json):", "", *yield_rows(entry), "",
                    *stage_seconds(entry), ""]


def write(figures: dict[str, Any]) -> None:
    name, where = ("data_smoke", OUT / "smoke") if figures["smoke"] else ("data", RESULTS)
    where.mkdir(parents=True, exist_ok=True)
    (where / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str) + "\n")
    lines = [f"# Seeds alone vs seeds + synthetic + rounds ({name})", "",
             f"`{figures['command']}`, started {figures['started']} UTC"
             + (f" (report rewritten by `{figures['resumed_by']}`)" if "resumed_by" in figures
                else "") + f", on {os.cpu_count()} CPUs (each run's load average before and "
             "after it: data.json). CPU s: user + system seconds of `cotdistill run` and every "
             "process it started, orphans included (bench/cpu_time.py); rows measured before "
             "2026-12-07 20:30 UTC counted `RUSAGE_CHILDREN`, which misses an engine process "
             "its parent did not wait for.", "",
             *DESIGN, ""]
    for task, entry in figures["tasks"].items():
        lines += task_lines(task, entry)
    if REMARKS.is_file() and not figures["smoke"]:  # what the figures need said, by hand
        lines += [REMARKS.read_text().rstrip("\n"), ""]
    (where / f"{name}.md").write_text("\n".join(lines))
    plot(figures, where / f"{name}.png")


REMARKS = ROOT / "bench" / "data_remarks.md"
DESIGN = [
    "Design: arm A = seeds alone (bench/data_<task>_a.yaml); arm B = the same plus "
    "`synthesize` (numbers, one variant per seed, join, decontaminated against the "
    "evaluation problems) and `rounds: {count: 1, generator: best_student}` sampling "
    "adaptively (bench/data_<task>_b.yaml). Compared: arm A's `self` against arm B's "
    "`self-st-1`, same start (the teacher), same train keys and the same `max_steps`. The "
    "data is made once (seed 0); the compared training is repeated per seed in the same "
    "run folders. B - A: paired over the held-out problems, 95% bootstrap interval "
    "(1,000 resamples over problems, within one seed). Label precision of votes: "
    "[docs/synthesize.md](../../docs/synthesize.md#measured), not remeasured here.",
    "",
    "Scale (cut to the CPU budget; the configs say why): demo, the demo's 150 training "
    "problems, n 4 at T 0.7, 128 tokens, 100 held-out problems greedy at 256 tokens; arm B's "
    "seeds carry `equation: \"a+b\"` computed from the question's two numbers (checked "
    "against every answer; the bench writes the file, data/ is untouched) so `numbers` "
    "labels exactly; one variant per seed; the round samples n 2 per wave until one "
    "verified trace, at most 4. Both final students: `max_steps: 10` at batch 8 (80 "
    "examples; the demo itself trains about 20 steps, 2 epochs of about 75 traces, but a "
    "step took 40 to 70 s on this loaded machine). GSM8K (one `<<...>>` annotation: 404 "
    "train, 65 test): the first 40 training problems, n 4, 256 tokens, all 65 test "
    "problems, `max_steps: 5`, the round at most 2 samples per problem.",
]


def plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t, e in figures["tasks"].items() if any("difference" in p for p in e["pairs"])]
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        pairs = [p for p in figures["tasks"][task]["pairs"] if "difference" in p]
        xs = [p["seed"] for p in pairs]
        d = [p["difference"] for p in pairs]
        ax.errorbar(xs, [x["value"] for x in d],
                    yerr=[[x["value"] - x["low"] for x in d], [x["high"] - x["value"] for x in d]],
                    fmt="o", capsize=4, color="black", label="B - A (95% CI)")
        ax.plot(xs, [p["accuracy_A"] for p in pairs], "s", color="tab:blue", label="accuracy A")
        ax.plot(xs, [p["accuracy_B"] for p in pairs], "^", color="tab:orange", label="accuracy B")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(xs)
        ax.set_xlabel("training seed")
        ax.set_title(f"{task}: seeds alone (A) vs + synthetic + round (B)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["demo", "gsm8k"],
                        choices=["demo", "gsm8k"])
    parser.add_argument("--seeds", type=int, default=3, help="Training seeds 0..N-1.")
    parser.add_argument("--stop-at", default=None,
                        help="HH:MM UTC: a seed pair not started by then is left out.")
    parser.add_argument("--resume", action="store_true",
                        help="Keep the seed pairs data.json holds; run the others.")
    parser.add_argument("--smoke", action="store_true",
                        help="Tiny limits; runs and results under runs/bench_data/smoke.")
    args = parser.parse_args()
    now = datetime.now(UTC)
    stop_at = None
    if args.stop_at:
        hour, minute = (int(x) for x in args.stop_at.split(":"))
        stop_at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    demo_seeds()
    gsm8k_one("train")
    gsm8k_one("test")
    figures: dict[str, Any] = {
        "command": ".venv/bin/python bench/bench_data.py " + " ".join(sys.argv[1:]),
        "started": now.strftime("%Y-%m-%d %H:%M"), "smoke": args.smoke, "tasks": {}}
    if args.resume and (RESULTS / "data.json").is_file():
        before = json.loads((RESULTS / "data.json").read_text())
        figures.update(tasks=before["tasks"], command=before["command"],
                       started=before["started"], resumed_by=figures["command"])
    started = time.time()
    for task in args.tasks:
        run_task(task, args.seeds, stop_at, args.smoke, figures)
    figures["wall_s"] = round(time.time() - started, 1)
    write(figures)
    print(f"bench_data: -> {OUT / 'smoke' if args.smoke else RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
