"""Time the main job: `cotdistill run --config configs/demo.yaml` from an empty output folder.

    .venv/bin/python bench/bench_demo.py [--config configs/demo.yaml] [--out runs/bench-demo]

Writes bench/results/demo.md and demo.json: wall time, per-stage times (from the pipeline
report), the machine's load average before and after (other work on the CPU skews the time),
and the evaluation summary (accuracy, retention with intervals).
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

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-demo"))
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)  # a fresh run: nothing may be reused
    command = [str(ROOT / ".venv" / "bin" / "cotdistill"), "run", "--config", args.config,
               "--out", str(out)]
    load_before = os.getloadavg()
    started = time.time()
    result = subprocess.run(command, cwd=ROOT, check=False)
    seconds = time.time() - started
    load_after = os.getloadavg()
    if result.returncode != 0:
        print(f"bench_demo: the run failed with status {result.returncode}", file=sys.stderr)
        return result.returncode

    summary = json.loads((out / "evaluate" / "summary.json").read_text())
    figures = {
        "command": " ".join(command),
        "wall_time_s": round(seconds, 1),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "models": {
            name: {k: m.get(k) for k in ("accuracy", "accuracy_ci", "parameters",
                                         "output_tokens_per_s", "seconds_per_problem",
                                         "peak_memory_mb", "ece")}
            for name, m in summary["models"].items()
        },
        "retention": summary["retention"],
    }
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    report = (out / "report.md").read_text().replace("](evaluate/", f"]({out}/evaluate/")
    (results / "demo.md").write_text(
        "# The demo, timed\n\n"
        f"`{figures['command']}` from an empty output folder: **{seconds / 60:.1f} min** "
        f"({seconds:.0f} s) on {figures['cpus']} CPUs ({figures['platform']}); load average "
        f"before {figures['load_average_before']}, after {figures['load_average_after']} "
        "(anything above the CPU count means other work shared the machine).\n\n"
        + report.replace("# cotdistill run", "## The run's report", 1)
    )
    print(f"bench_demo: {seconds:.0f} s -> {results / 'demo.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
