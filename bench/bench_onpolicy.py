"""Benchmark on-policy distillation: today's GKD path against student rollouts on vLLM.

Same student, teacher, prompts and settings, each path in a fresh process (so its peak memory
is its own), one after the other in one run:

    gkd    `train --kd on-policy`: TRL's GKDTrainer; the student samples with HF `generate`
           inside the trainer, the teacher (HF, in the trainer) scores with a forward pass
    vllm   `train --kd on-policy-vllm`: TRL's DistillationTrainer; the student samples on its
           colocated vLLM engine (weights pushed each step), the teacher's top-20 log-probs come
           from a vLLM engine of its own; the trainer holds only the student

Student: the embedded SmolLM2-135M-Instruct cut to 10 of its 30 layers (`cotdistill student
init --keep-every 3`); teacher: the embedded model itself. Prompts: the first problems of
data/word_problems/train.jsonl, the bare question as the user turn. fp32 training on CPU
(train's default here), forward KL, T = 2. Per step: wall seconds, split into rollout
(sampling; with vLLM also the weight push), teacher scoring and the rest (the student's
forward, loss, backward and optimizer step). The first step (warm-up) is left out of the means.
Peak memory: resident memory of the process and its children (the engines), sampled while the
path builds and trains (cotdistill/infra/memory.py). Results: bench/results/onpolicy.md, .json.

    .venv/bin/python bench/bench_onpolicy.py [--steps 4] [--batch 4] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

RESULTS = ROOT / "bench" / "results"
MODES = {"gkd": "on-policy", "vllm": "on-policy-vllm"}


def write_prompts(path: Path, count: int) -> Path:
    """sft.jsonl records from the demo's problems: the question, then the gold answer as a
    stand-in assistant turn (on-policy training reads only the prompt)."""
    rows = [json.loads(x) for x in (ROOT / "data" / "word_problems" / "train.jsonl")
            .read_text().splitlines()[:count]]
    path.write_text("".join(json.dumps({
        "messages": [{"role": "user", "content": r["question"]},
                     {"role": "assistant", "content": r["answer"]}],
        "problem_id": r["id"], "teacher": "gold"}) + "\n" for r in rows))
    return path


def timed(owner: dict[str, float], key: str, fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            owner[key] += time.perf_counter() - started

    return wrapper


def worker(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from transformers import TrainerCallback

    from cotdistill.infra.memory import PeakMemory
    from cotdistill.models import embedded_teacher_path
    from cotdistill.train.config import TrainConfig
    from cotdistill.train.prepare import prepare
    from cotdistill.train.trainer import build_trainer

    out = args.out / mode
    config = TrainConfig(
        data=[args.out / "prompts.jsonl"], student=str(args.out / "cut-student"),
        teacher=str(embedded_teacher_path()), kd=MODES[mode], kd_loss="forward",
        kd_max_new_tokens=args.max_new_tokens, kd_sample_temperature=1.0, kd_topk=20,
        distill_temperature=2.0, batch_size=args.batch, max_steps=args.steps,
        learning_rate=1e-5, logging_steps=1, save_steps=10_000, out=out, seed=0)
    marks: list[dict[str, float]] = []
    clock: dict[str, float] = {"sync_s": 0.0, "rollout_s": 0.0, "teacher_s": 0.0}

    class Steps(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            marks.append({"begin": time.perf_counter()})

        def on_step_end(self, *a: Any, **k: Any) -> None:
            totals = dict(clock)
            if mode == "vllm":
                totals = dict(trainer.timings)
            marks[-1].update(end=time.perf_counter(), **totals)

    started = time.perf_counter()
    with PeakMemory(children=True) as memory:
        trainer = build_trainer(config, prepare(config), out)
        built = time.perf_counter() - started
        trainer.add_callback(Steps())
        if mode == "gkd":
            trainer.generate_on_policy_outputs = timed(clock, "rollout_s",
                                                       trainer.generate_on_policy_outputs)
            teacher = trainer.teacher_model
            teacher.forward = timed(clock, "teacher_s", teacher.forward)
        trainer.train()
        if mode == "vllm":
            trainer.close_engines()
    steps = []
    previous = dict.fromkeys(clock, 0.0)
    for m in marks:
        step = {"wall_s": m["end"] - m["begin"]}
        step.update({k: m[k] - previous[k] for k in clock})
        step["train_s"] = step["wall_s"] - sum(step[k] for k in clock)
        previous = m
        steps.append(step)
    timed_steps = steps[1:] or steps
    mean = {k: sum(s[k] for s in timed_steps) / len(timed_steps) for k in steps[0]}
    log = [e for e in trainer.state.log_history if "loss" in e]
    return {"mode": mode, "kd": MODES[mode], "steps": len(steps), "build_s": round(built, 1),
            "total_s": round(time.perf_counter() - started, 1),
            "steps_per_s": round(1 / mean["wall_s"], 4),
            "mean_step_s": {k: round(v, 3) for k, v in mean.items()},
            "per_step": [{k: round(v, 3) for k, v in s.items()} for s in steps],
            "first_loss": log[0]["loss"] if log else None,
            "last_loss": log[-1]["loss"] if log else None,
            "distill_kl": [round(e.get("distill_kl", float("nan")), 4) for e in log],
            "completion_tokens_per_step": args.batch * args.max_new_tokens,
            "peak_memory_gib": round(memory.peak_bytes / 1024**3, 2),
            "peak_memory_what": memory.what}


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| path | steps/s | s/step | weight sync s | rollout s | teacher s | "
             "student fwd+bwd+opt s | start s | peak RSS GiB |", "|---" * 9 + "|"]
    for r in results:
        m = r["mean_step_s"]
        lines.append(f"| {r['mode']} (`--kd {r['kd']}`) | {r['steps_per_s']:.3f} | "
                     f"{m['wall_s']:.2f} | {m['sync_s']:.2f} | {m['rollout_s']:.2f} | "
                     f"{m['teacher_s']:.2f} | "
                     f"{m['train_s']:.2f} | {r['build_s']:.0f} | {r['peak_memory_gib']:.2f} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-onpolicy")
    parser.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker, args)
        (args.out / f"{args.worker}.json").write_text(json.dumps(result, indent=2))
        return 0

    from cotdistill.compress.student_init import StudentInitConfig, run_student_init

    args.out.mkdir(parents=True, exist_ok=True)
    student = args.out / "cut-student"
    if not (student / "manifest.json").exists():
        run_student_init(StudentInitConfig(out=student, keep_every=3))
    write_prompts(args.out / "prompts.jsonl", args.steps * args.batch)
    load_before = os.getloadavg()
    results = []
    for mode in MODES:
        (args.out / f"{mode}.json").unlink(missing_ok=True)
        command = [sys.executable, __file__, "--worker", mode, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--max-new-tokens", str(args.max_new_tokens),
                   "--out", str(args.out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0 or not (args.out / f"{mode}.json").exists():
            print(done.stdout[-3000:], done.stderr[-5000:], sep="\n")
            return 1
        results.append(json.loads((args.out / f"{mode}.json").read_text()))
        print(f"{mode}: {results[-1]['steps_per_s']} steps/s")
    gkd, fast = results
    speedup = fast["steps_per_s"] / gkd["steps_per_s"]
    report = {"command": "python bench/bench_onpolicy.py " + " ".join(sys.argv[1:]),
              "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
              "load_before": load_before, "student": "embedded SmolLM2-135M-Instruct, 10 of 30 "
              "layers (student init --keep-every 3)", "teacher": "embedded SmolLM2-135M-Instruct",
              "steps": args.steps, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
              "speedup_steps_per_s": round(speedup, 2), "results": results}
    (RESULTS / "onpolicy.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# On-policy distillation: GKD (HF generate) vs rollouts on vLLM", "",
        f"`{report['command']}` on {report['machine']} (load before: "
        f"{', '.join(f'{x:.2f}' for x in load_before)}), fp32 training.", "",
        f"Student: {report['student']}; teacher: {report['teacher']}. {args.steps} steps of "
        f"{args.batch} prompts (data/word_problems/train.jsonl), up to {args.max_new_tokens} new "
        "tokens each at T = 1, forward KL at T = 2. Means over the steps after the first "
        "(warm-up); start: building the trainer (models, engines) before step 1.", "",
        *table(results), "",
        f"vLLM path / GKD path, steps/s: {speedup:.2f}x.", "",
        "Weight sync: pushing the student's weights into its vLLM engine (`reload_weights`, "
        "prefix-cache reset; GKD samples from the trained model itself). Rollout: sampling. "
        "Teacher: the HF teacher's forward passes "
        "(GKD) or the teacher engine's prompt_logprobs request (vLLM). The rest: the student's "
        "forward, loss, backward and optimizer step. Peak RSS: this process and its children "
        "(the teacher engine's processes), sampled while the path built and trained.", "",
        "Per step (seconds):", "",
    ]
    for r in results:
        lines.append(f"- {r['mode']}: " + ", ".join(
            f"{s['wall_s']:.2f} (sync {s['sync_s']:.2f}, rollout {s['rollout_s']:.2f}, "
            f"teacher {s['teacher_s']:.2f})"
            for s in r["per_step"]))
    (RESULTS / "onpolicy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
