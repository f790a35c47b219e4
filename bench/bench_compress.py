"""One honest size point (issue 22): students at 0.5x the teacher's parameters.

A width-pruned and a depth-cut copy of the teacher, each recovered by SFT on the kept traces and
by offline top-k KD from the teacher's stored top-20 logprobs, and the width prune by on-policy
distillation (rollouts on vLLM, the teacher's vLLM engine scoring them, CE on the kept traces
mixed in), all on the same kept traces (`generate --until-correct` adaptive sampling over the
training problems). Each stage of
`cotdistill run --config CONFIG --dry-run` is run here as its own command so that its CPU time
(user + system of the command and every descendant, orphans included: this process is their
subreaper, `os.wait4` rusage) and peak RSS (the largest single process) are measured. A start
(prune or cut) with the same config as an earlier student's is copied, its cost counted again.
Validation problems are carved out of the training problems first; every student trains to the
largest of `--steps` with the checkpoints at `--steps` kept, each scored on validation; the best
(ties: the cheapest) of each student is scored once on the held-out problems beside the
teacher, with the paired difference to it. x: CPU minutes of generation + filter + prune/init
+ training up to that checkpoint (the process tree's CPU time sampled when it appeared).

    .venv/bin/python bench/bench_compress.py --config bench/compress_demo.yaml \
        --steps 4 8 16 --val-limit 40 --remarks bench/compress_demo_remarks.md
    .venv/bin/python bench/bench_compress.py --config bench/compress_demo.yaml \
        --out runs/bench_compress/demo90 --reuse-data runs/bench_compress/demo \
        --students width-sft width-topk --steps 50 100 150 200 250 300 --budget-min 90 \
        --name compress_90 --remarks bench/compress_90_remarks.md   # the 90-CPU-minute points
    # ... then, each adding its student to the same OUT (bench/results/compress_90.md lists all):
    #   --students depth-sft; --students depth-topk; --students depth-imp-topk (same --steps)
    #   --students width-onpolicy --steps 25 50 75 100 125
    .venv/bin/python bench/bench_compress.py --config bench/compress_smoke.yaml \
        --out runs/bench_compress/smoke --val-size 10 --steps 1 --no-results  # catches errors

Reruns reuse every finished stage recorded in OUT/state.json; a rerun naming another student
trains and scores only it (the teacher scored beside it again, which must repeat its accuracy:
the paired differences of separate scorings are taken against the same teacher answers).
Writes bench/results/NAME.md, NAME.json and NAME.png (`--name`, default compress).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_report import markdown, plot  # noqa: E402  (bench/compress_report.py)
from cpu_time import measured  # noqa: E402  (bench/cpu_time.py)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLI = str(ROOT / ".venv" / "bin" / "cotdistill")
COMMANDS = {"generate": ["generate"], "filter": ["filter"], "train": ["train"],
            "student_prune": ["student", "prune"], "student_init": ["student", "init"],
            "evaluate": ["evaluate"]}


RECOVERY = {None: "SFT", "offline-topk": "offline top-20 KD", "online": "online KD",
            "on-policy": "on-policy KD (TRL GKD)",
            "on-policy-vllm": "on-policy KD (vLLM rollouts, SFT mix)"}


class State:
    """Finished stages' measurements, saved after each so a rerun skips them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def put(self, key: str, value: Any) -> Any:
        self.data[key] = value
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")
        return value


def split_problems(source: Path, folder: Path, val_size: int, seed: int) -> tuple[Path, Path]:
    """Validation problems drawn (seeded) from the training problems; the rest to train on."""
    lines = [line for line in source.read_text().splitlines() if line.strip()]
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)
    val = set(order[:val_size])
    folder.mkdir(parents=True, exist_ok=True)
    train_path, val_path = folder / "train.jsonl", folder / "val.jsonl"
    train_path.write_text("".join(lines[i] + "\n" for i in range(len(lines)) if i not in val))
    val_path.write_text("".join(lines[i] + "\n" for i in sorted(val)))
    return train_path, val_path


def plan(config: Path, out: Path) -> list[dict[str, Any]]:
    """The run's stages with their resolved configs (`cotdistill run --dry-run`)."""
    text = subprocess.run([CLI, "run", "--config", str(config), "--out", str(out), "--dry-run"],
                          cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def stage_run(stage: dict[str, Any], overrides: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One stage of the plan as its own command, its config file beside its output."""
    config = {**stage["config"], **overrides}
    path = folder / f"{stage['stage'].replace(': ', '-')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    watch = Path(config["out"]) / "checkpoints" if stage["kind"] == "train" else None
    return measured([CLI, *COMMANDS[stage["kind"]], "--config", str(path)],
                    path.with_suffix(".log"), watch)


def shared_start(stage: dict[str, Any], built: dict[str, dict[str, Any]],
                 state: State) -> dict[str, Any] | None:
    """An earlier student's start made with the same config (all but its folder): copied,
    and its measured cost counted again in this student's x (it is the same computation)."""
    def same(other: dict[str, Any]) -> bool:
        return (other["kind"] == stage["kind"] and {**other["config"], "out": None}
                == {**stage["config"], "out": None})

    for name, other in built.items():
        if same(other):
            out = Path(stage["config"]["out"])
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(other["config"]["out"], out)
            return {**state.data[f"student:{name}"]["start"], "shared_with": name}
    return None


def kept_count(filter_out: Path) -> int:
    return sum(1 for line in (filter_out / "sft.jsonl").open() if line.strip())


def training(stage: dict[str, Any], kept: int, args: argparse.Namespace) -> dict[str, Any]:
    """max_steps and save_steps for checkpoints at `--steps`, checkpoints kept."""
    return {"max_steps": max(args.steps), "save_steps": math.gcd(*args.steps),
            "save_total_limit": 100, "keep_checkpoints": True,
            "steps_per_epoch": math.ceil(kept / stage["config"]["batch_size"])}


def drop_optimizer_state(checkpoints: Path, steps: list[int]) -> None:
    """Scoring needs the weights only; the optimizer state is most of the disk. Checkpoints
    at steps not asked for (saved on the way) go."""
    for folder in checkpoints.glob("checkpoint-*"):
        if int(folder.name.split("-")[1]) not in steps:
            shutil.rmtree(folder)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        for path in checkpoints.glob(f"checkpoint-*/{name}"):
            path.unlink()


def servable(checkpoint: Path, start: Path) -> Path:
    """A checkpoint folder vLLM can serve: the start's tokenizer files copied in if missing."""
    for path in start.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template", "vocab",
                                 "merges", "generation_config")) \
                and not (checkpoint / path.name).exists():
            shutil.copy(path, checkpoint / path.name)
    return checkpoint


def evaluate(stage: dict[str, Any], models: dict[str, str], problems: Path, limit: int | None,
             out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """`cotdistill evaluate` of `models` (teacher first) on `problems`; cost and summary."""
    overrides = {"problems": str(problems), "limit": limit, "out": str(out),
                 "model": [f"{n}={p}" for n, p in models.items()]}
    cost = stage_run({**stage, "stage": out.name}, overrides, out.parent / "configs")
    return cost, json.loads((out / "summary.json").read_text())


def checkpoints_of(student: str, train_out: Path, start: Path) -> dict[str, str]:
    folders = sorted((train_out / "checkpoints").glob("checkpoint-*"),
                     key=lambda p: int(p.name.split("-")[1]))
    return {f"{student}.step{p.name.split('-')[1]}": str(servable(p, start)) for p in folders}


def fit_budget(points: list[tuple[float, float]], target: float) -> dict[str, Any]:
    """Least squares acc = a + b log2(minutes) over the checkpoints; minutes to `target`."""
    if len(points) < 2:
        return {"slope_per_doubling": None, "minutes_to_target": None}
    xs = [math.log2(m) for m, _ in points]
    ys = [a for _, a in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    a = my - b * mx
    minutes = 2 ** ((target - a) / b) if b > 0 else None
    return {"slope_per_doubling": round(b, 4), "intercept": round(a, 4),
            "minutes_to_target": round(minutes, 1) if minutes is not None else None}


def student_stages(stages: list[dict[str, Any]],
                   only: list[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{student: {"start": its prune/init stage, "train": its train stage}}, the students
    named in `only` (all when None)."""
    students: dict[str, dict[str, dict[str, Any]]] = {}
    for stage in stages:
        if ": " in stage["stage"]:
            name, step = stage["stage"].split(": ")
            students.setdefault(name, {})["train" if step == "train" else "start"] = stage
    unknown = set(only or []) - set(students)
    if unknown:
        raise SystemExit(f"bench_compress: --students {sorted(unknown)} not in the config "
                         f"(it has {list(students)})")
    return {n: s for n, s in students.items() if only is None or n in only}


def reuse_data(earlier: Path, stages: list[dict[str, Any]], state: State) -> None:
    """Generation and filter of an earlier run of this bench (same config) copied in, with
    their measured costs: the students of this run train on the same kept traces."""
    earlier_state = json.loads((earlier / "state.json").read_text())
    for stage in stages:
        if stage["kind"] in ("generate", "filter") and stage["kind"] not in state.data:
            out = Path(stage["config"]["out"])
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(earlier / out.name, out)
            state.put(stage["kind"], {**earlier_state[stage["kind"]],
                                      "copied_from": str(earlier / out.name)})


def build(args: argparse.Namespace, state: State) -> dict[str, Any]:
    """Generate, filter, each student's start and training: their measured costs."""
    stages = plan(args.config, args.out)
    kinds = {s["kind"]: s for s in stages}
    configs = args.out / "configs"
    if args.reuse_data:
        reuse_data(args.reuse_data.resolve(), stages, state)
    for kind in ("generate", "filter"):
        if kind not in state.data:
            state.put(kind, stage_run(kinds[kind], {}, configs))
    kept = state.put("kept", kept_count(Path(kinds["filter"]["config"]["out"])))
    built: dict[str, dict[str, Any]] = {}
    for name, pair in student_stages(stages, args.students).items():
        key = f"student:{name}"
        if key in state.data:
            built[name] = pair["start"]
            continue
        start = shared_start(pair["start"], built, state) or stage_run(pair["start"], {},
                                                                      configs)
        built[name] = pair["start"]
        overrides = training(pair["train"], kept, args)
        steps_per_epoch = overrides.pop("steps_per_epoch")
        cost = stage_run(pair["train"], overrides, configs)
        train_out = Path(pair["train"]["config"]["out"])
        drop_optimizer_state(train_out / "checkpoints", args.steps)
        state.put(key, {"start": start, "train": cost, "steps_per_epoch": steps_per_epoch,
                        "max_steps": overrides["max_steps"], "train_out": str(train_out),
                        "start_out": pair["start"]["config"]["out"],
                        "kd": pair["train"]["config"].get("kd")})
    return {"stages": stages, "evaluate": kinds["evaluate"]}


def checkpoint_points(state: State, name: str) -> dict[str, dict[str, Any]]:
    """Each checkpoint's step, epochs and CPU seconds (generation and filter included)."""
    record = state.data[f"student:{name}"]
    shared = state.data["generate"]["cpu_s"] + state.data["filter"]["cpu_s"]
    points = {}
    for label, path in checkpoints_of(name, Path(record["train_out"]),
                                      Path(record["start_out"])).items():
        step = int(label.rsplit(".step", 1)[1])
        train_cpu = record["train"]["checkpoint_cpu_s"].get(f"checkpoint-{step}")
        if train_cpu is None or step == record["max_steps"]:
            train_cpu = record["train"]["cpu_s"]  # the last one: the whole training
        points[label] = {"path": path, "step": step,
                         "epochs": round(step / record["steps_per_epoch"], 2),
                         "cpu_s": round(shared + record["start"]["cpu_s"] + train_cpu, 1)}
    return points


def score(args: argparse.Namespace, state: State, built: dict[str, Any]) -> None:
    """Every checkpoint on validation; each student's best once on the held-out problems.
    A rerun scores only what no earlier run of this OUT scored (a new student, or a student
    whose chosen checkpoint changed), the teacher beside it again for the paired difference."""
    eval_stage = built["evaluate"]
    teacher = dict(m.split("=", 1) for m in eval_stage["config"]["model"][:1])
    names = [key.split(":", 1)[1] for key in state.data if key.startswith("student:")]
    # Recorded once per student: the checkpoint folders may be deleted after scoring (disk).
    points = state.data.get("points") or {}
    points.update({n: checkpoint_points(state, n) for n in names if n not in points})
    state.put("points", points)
    val = state.data.get("validation") or {"cost": None, "accuracy": {}}
    new = {label: p["path"] for n in names for label, p in points[n].items()
           if label not in val["accuracy"]}
    if new:
        fresh = sorted({label.rsplit(".step", 1)[0] for label in new})
        cost, summary = evaluate(eval_stage, {**teacher, **new}, args.val, args.val_limit,
                                 scoring_folder(args.out, "validation", val["accuracy"], fresh))
        accuracy = {m: summary["models"][m]["accuracy"] for m in [*teacher, *new]}
        same_teacher(val["accuracy"], accuracy, "validation")
        val = state.put("validation", {"cost": added(val["cost"], cost),
                                       "accuracy": {**accuracy, **val["accuracy"]}})
    chosen = {n: max(within(points[n], args.budget_min),
                     key=lambda label: (val["accuracy"][label], -points[n][label]["step"]))
              for n in names}
    held = state.data.get("heldout") or {"cost": None, "chosen": {}, "models": {},
                                         "differences": []}
    stale = [n for n in names if n not in held["models"] or held["chosen"].get(n) != chosen[n]]
    if stale:
        models = {**teacher, **{n: points[n][chosen[n]]["path"] for n in stale}}
        cost, summary = evaluate(eval_stage, models, Path(eval_stage["config"]["problems"]),
                                 eval_stage["config"]["limit"],
                                 scoring_folder(args.out, "heldout", held["models"], stale))
        rows = {m: {k: summary["models"][m].get(k)
                    for k in ("accuracy", "accuracy_ci", "parameters", "truncated_share")}
                for m in models}
        same_teacher({m: r["accuracy"] for m, r in held["models"].items()},
                     {m: r["accuracy"] for m, r in rows.items()}, "held-out")
        held = state.put("heldout", {
            "cost": added(held["cost"], cost), "chosen": chosen,
            "models": {**rows, **held["models"], **{n: rows[n] for n in stale}},
            "differences": [d for d in held["differences"] if d["model"] not in stale]
            + [d for d in summary["differences"] if d["model"] in stale]})
    state.put("chosen", chosen)


def scoring_folder(out: Path, kind: str, scored: dict[str, Any], students: list[str]) -> Path:
    """OUT/validation (or heldout) for the first scoring, a folder named after the students
    for each later one: every run's per-problem records are kept."""
    return out / kind if not scored else out / f"{kind}-{'-'.join(students)}"


def same_teacher(before: dict[str, float], now: dict[str, float], split: str) -> None:
    """Greedy scoring of the same teacher must repeat: the paired differences of a later
    scoring are taken against the same teacher answers as the earlier ones."""
    if "teacher" in before and before["teacher"] != now["teacher"]:
        raise SystemExit(f"bench_compress: the teacher's {split} accuracy was "
                         f"{before['teacher']} and is {now['teacher']} now; scorings differ, "
                         "so students scored apart cannot be compared: score them in one run")


def added(before: dict[str, Any] | None, cost: dict[str, Any]) -> dict[str, Any]:
    """Two scorings' costs as one: CPU and wall summed, the larger peak, both commands."""
    if before is None:
        return cost
    return {"command": f"{before['command']}; {cost['command']}",
            "cpu_s": round(before["cpu_s"] + cost["cpu_s"], 1),
            "peak_rss_gib": max(before["peak_rss_gib"], cost["peak_rss_gib"]),
            "wall_s": round(before["wall_s"] + cost["wall_s"], 1), "checkpoint_cpu_s": {}}


def within(points: dict[str, dict[str, Any]], budget_min: float | None) -> list[str]:
    """The checkpoints whose total CPU minutes are within the budget (all without one; the
    cheapest when none is)."""
    if budget_min is None:
        return list(points)
    inside = [label for label, p in points.items() if p["cpu_s"] / 60 <= budget_min]
    return inside or [min(points, key=lambda label: points[label]["cpu_s"])]


def summarize(state: State) -> dict[str, Any]:
    """The table's rows, the validation curves and the extrapolation, from the state."""
    held, val = state.data["heldout"], state.data["validation"]["accuracy"]
    teacher = held["models"]["teacher"]
    rows, curves = {}, {}
    for name, label in state.data["chosen"].items():
        record, points = state.data[f"student:{name}"], state.data["points"][name]
        diff = next(d for d in held["differences"]
                    if d["model"] == name and d["versus"] == "teacher")
        curves[name] = [{"checkpoint": lab, "epochs": p["epochs"],
                         "cpu_min": round(p["cpu_s"] / 60, 2), "validation": val[lab]}
                        for lab, p in points.items()]
        target = 0.9 * val["teacher"]
        rows[name] = {
            "params_ratio": round(held["models"][name]["parameters"] / teacher["parameters"], 3),
            "start": start_label(record["start"]),
            "recovery": RECOVERY[record["kd"]],
            "checkpoint": label, "epochs": points[label]["epochs"],
            "cpu_min": round(points[label]["cpu_s"] / 60, 2), "validation": val[label],
            "heldout": held["models"][name]["accuracy"],
            "heldout_ci": held["models"][name]["accuracy_ci"],
            "difference": {k: diff[k] for k in ("value", "low", "high", "better", "worse")},
            "peak_rss_gib": max(record["start"]["peak_rss_gib"],
                                record["train"]["peak_rss_gib"]),
            "train_cpu_s_per_step": round(record["train"]["cpu_s"] / record["max_steps"], 1),
            "extrapolation": fit_budget([(c["cpu_min"], c["validation"])
                                         for c in curves[name]], target),
            "train_ce": ce_trend(Path(record["train_out"])),
            "truncated_heldout": held["models"][name]["truncated_share"],
            "cpu_min_800_traces_200_steps": budget_bound(state, name, 800, 200)}
    return {"teacher": teacher, "teacher_validation": val["teacher"], "rows": rows,
            "curves": curves, "kept": state.data["kept"],
            "generate": state.data["generate"], "filter": state.data["filter"],
            "validation_cost": state.data["validation"]["cost"],
            "heldout_cost": held["cost"]}


def start_label(start: dict[str, Any]) -> str:
    """What a student starts from, read from the config of the prune or init command that made
    its start (an earlier student's, when its start is a copy)."""
    command = start["command"].split()
    config = yaml.safe_load(Path(command[command.index("--config") + 1]).read_text())
    if "init" in command:
        keep = config.get("keep_every")
        return f"depth cut (keep every {keep})" if keep else "depth cut"
    widths = [k for k in ("target_params", "mlp", "hidden", "heads") if config.get(k)]
    if config.get("layers") and not widths:
        return f"depth prune ({config['layers']} blocks by importance)"
    return "width prune" + (f" + depth ({config['layers']} blocks)" if config.get("layers")
                            else "")


def ce_trend(train_out: Path) -> dict[int, float]:
    """Training CE on the kept traces at each logged step (SFT's loss, KD's distill_ce)."""
    trend = {}
    for line in (train_out / "train_log.jsonl").read_text().splitlines():
        row = json.loads(line)
        ce = row.get("distill_ce", row.get("loss"))
        if ce is not None and "train_loss" not in row:
            trend[row["step"]] = round(ce, 3)
    return trend


def budget_bound(state: State, name: str, traces: int, steps: int) -> float:
    """CPU minutes for `traces` kept traces (generation and filter scaled from this run's
    yield) and `steps` training steps at this student's measured CPU per step."""
    record = state.data[f"student:{name}"]
    per_trace = (state.data["generate"]["cpu_s"] + state.data["filter"]["cpu_s"]) \
        / state.data["kept"]
    per_step = record["train"]["cpu_s"] / record["max_steps"]
    return round((per_trace * traces + record["start"]["cpu_s"] + per_step * steps) / 60, 1)


def relative(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "bench" / "compress_demo.yaml")
    parser.add_argument("--out", type=Path, default=None, help="Default: the config's out.")
    parser.add_argument("--source", type=Path, default=ROOT / "data" / "word_problems" /
                        "train.jsonl", help="Training problems the validation split comes from.")
    parser.add_argument("--val-size", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20],
                        help="Optimizer steps (batch 8) whose checkpoints are scored; training "
                        "runs to the largest.")
    parser.add_argument("--val-limit", type=int, default=None,
                        help="Score the checkpoints on the first N validation problems only.")
    parser.add_argument("--students", nargs="+", default=None,
                        help="Build and score only these of the config's students.")
    parser.add_argument("--reuse-data", type=Path, default=None, metavar="EARLIER_OUT",
                        help="Copy generation and filter (and their measured cost) from an "
                        "earlier run of this bench with the same config.")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="Choose each student's checkpoint among those within this many "
                        "total CPU minutes.")
    parser.add_argument("--name", default="compress",
                        help="Results file stem under bench/results (NAME.md/.json/.png).")
    parser.add_argument("--remarks", type=Path, default=None,
                        help="A markdown file appended to the report (what this run's "
                        "figures need said).")
    parser.add_argument("--no-results", action="store_true",
                        help="Leave bench/results alone (a smoke run).")
    args = parser.parse_args()
    config = yaml.safe_load(args.config.read_text())
    args.out = (args.out or ROOT / config["out"]).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    state = State(args.out / "state.json")
    _, args.val = split_problems(args.source, ROOT / Path(config["problems"]).parent,
                                 args.val_size, args.seed)
    built = build(args, state)
    score(args, state, built)
    command = "python bench/bench_compress.py " + " ".join(sys.argv[1:])
    commands = state.data.get("commands", [])
    state.put("commands", commands + [command] if commands[-1:] != [command] else commands)
    figures = summarize(state)
    figures["commands"] = state.data["commands"]
    figures["run"] = {"val_size": args.val_size, "seed": args.seed, "steps": sorted(args.steps),
                      "val_limit": args.val_limit, "budget_min": args.budget_min,
                      "students": args.students, "source": relative(args.source),
                      "generate": ", ".join(f"{k} {v}" for k, v in config["generate"].items()),
                      "heldout": config["eval_problems"],
                      "heldout_limit": config["evaluate"]["limit"],
                      "heldout_tokens": config["evaluate"]["max_tokens"],
                      "remarks": str(args.remarks) if args.remarks else None}
    target = RESULTS if not args.no_results else args.out
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "cpus": os.cpu_count(), **figures}, indent=2) + "\n")
    (target / f"{args.name}.md").write_text(markdown(figures))
    plot(figures, target / f"{args.name}.png")
    print(f"bench_compress: -> {target / args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
