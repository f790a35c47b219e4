"""The evaluate stage's deployment table, failure modes and per-capability section on real models.

Teacher: the embedded SmolLM2-135M-Instruct (30 layers). Student: every third of its layers
(10), cut with `cotdistill student init` and *not trained*, so its accuracy is near zero: the
point here is the size, memory and latency columns, and that the sections are filled from a
real run. Both are evaluated by `run_evaluate` (vLLM CPU engine, greedy, 128 new tokens) on the
first word problems of `data/word_problems/test.jsonl`, with batch-1 latency over 8 of them.
Figures go to bench/results/deployment.md and .json.

    .venv/bin/python bench/bench_deployment.py                 # about 5 min on the shared box
    .venv/bin/python bench/bench_deployment.py --problems 20 --latency-prompts 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

RESULTS = ROOT / "bench" / "results"


def main() -> int:
    from cotdistill.compress.student_init import StudentInitConfig, run_student_init
    from cotdistill.evaluate.config import EvaluateConfig
    from cotdistill.evaluate.report import decision_sections
    from cotdistill.evaluate.stage import run_evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=40)
    parser.add_argument("--latency-prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-deployment")
    args = parser.parse_args()

    load_before = os.getloadavg()
    student = args.out / "cut-student"
    if not (student / "manifest.json").exists():
        run_student_init(StudentInitConfig(out=student, keep_every=3))
    config = EvaluateConfig(
        problems=ROOT / "data" / "word_problems" / "test.jsonl", out=args.out / "evaluate",
        model=["teacher=embedded", f"cut={student}"], prompt_template="plain", n=1,
        temperature=0.0, max_tokens=args.max_tokens, limit=args.problems,
        latency_prompts=args.latency_prompts,
    )
    tick = time.perf_counter()
    run_evaluate(config)
    seconds = time.perf_counter() - tick
    summary = json.loads((config.out / "summary.json").read_text())
    command = "  ".join(["python bench/bench_deployment.py", *sys.argv[1:]])
    lines = [
        "# Deployment table on real models",
        "",
        f"`{command}`: teacher = embedded SmolLM2-135M-Instruct, cut = layers 0, 3, ..., 27 of "
        f"it, untrained. {args.problems} word problems, greedy, max_tokens {args.max_tokens}, "
        f"latency over {args.latency_prompts} prompts at batch 1. Evaluation took "
        f"{seconds:.0f} s on {os.cpu_count()} CPUs ({platform.platform()}); load average "
        f"before {[round(x, 2) for x in load_before]}, after "
        f"{[round(x, 2) for x in os.getloadavg()]} (above the CPU count: other work shared "
        "the machine, latency figures are then pessimistic).",
        "",
        *decision_sections(summary, config),
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "deployment.md").write_text("\n".join(lines) + "\n")
    figures = {
        "seconds": seconds,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "deployment": summary["deployment"],
        "latency": {n: m.get("latency") for n, m in summary["models"].items()},
        "failures": {n: {"counts": f["counts"], "causes": f["causes"]}
                     for n, f in summary["failures"].items()},
        "categories": summary["categories"],
    }
    (RESULTS / "deployment.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(f"bench: wrote {RESULTS / 'deployment.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
