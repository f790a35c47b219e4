"""Does regional torch.compile pay for itself at the demo's step count? The demo's `self`
training (the embedded SmolLM2-135M-Instruct, its kept traces, 2 epochs at batch 8) with
`--compile` and `--no-compile`, each a fresh `cotdistill train` process.

    .venv/bin/python bench/bench_compile.py --data runs/demo/filter/sft.jsonl [--repeats 1]

Reports the process's wall time (model load and compile warm-up included), TRL's
train_runtime and the final loss per setting in bench/results/compile.md and .json.
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
RESULTS = ROOT / "bench" / "results"


def train(data: Path, out: Path, compile_flag: bool) -> dict:
    if out.exists():
        shutil.rmtree(out)
    command = [str(ROOT / ".venv" / "bin" / "cotdistill"), "train", "--data", str(data),
               "--out", str(out), "--epochs", "2", "--learning-rate", "2e-5",
               "--batch-size", "8", "--max-length", "384", "--save-steps", "10",
               "--compile" if compile_flag else "--no-compile"]
    started = time.time()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - started
    manifest = json.loads((out / "manifest.json").read_text())
    return {"compile": compile_flag, "wall_s": round(wall, 1),
            "train_runtime_s": manifest.get("train_runtime_s"),
            "steps": manifest.get("counts", {}).get("steps"),
            "train_loss": manifest.get("train_loss"),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-compile")
    args = parser.parse_args()
    rows = [train(args.data, args.out / f"{flag}-{r}", flag)
            for r in range(args.repeats) for flag in (True, False)]
    figures = {"cpus": os.cpu_count(), "platform": platform.platform(), "data": str(args.data),
               "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "compile.json").write_text(json.dumps(figures, indent=2) + "\n")
    lines = ["# Regional torch.compile at the demo's step count", "",
             f"`.venv/bin/python bench/bench_compile.py {' '.join(sys.argv[1:])}` on "
             f"{figures['cpus']} CPUs; the demo's `self` training (2 epochs, batch 8).", "",
             "| compile | steps | process wall s | train_runtime s | final loss | load avg |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['compile']} | {row['steps']} | {row['wall_s']} | "
                     f"{row['train_runtime_s']} | {row['train_loss']} | {row['load_average']} |")
    (RESULTS / "compile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
