"""Memory a CPU vLLM engine takes besides its weights and KV cache (the preflight's overhead).

Starts the engine the way cotdistill does (enforce_eager, bfloat16, `kv_cache_memory_bytes`)
in a fresh process per measurement, and reads resident memory (RSS less file-backed pages) of
this process's growth (vLLM and torch imported, tokenizer) and of the engine processes. Two KV
sizes per model show whether the KV cache is resident at start.

    .venv/bin/python bench/bench_engine_memory.py [--model DIR ...]   # default: tiny + SmolLM2

Writes bench/results/engine_memory.json. Figures depend on the machine; cotdistill's
ENGINE_OVERHEAD_BYTES (cotdistill/backends/sizing.py) is set above the largest seen here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024**2


def measure(model: str, kv_mib: int) -> dict[str, float]:
    """One engine start in this process; returns MiB figures."""
    import psutil

    from cotdistill.backends.sizing import node_available_bytes, weights_bytes

    def anon(process: psutil.Process) -> int:
        # Resident memory not backed by files: vLLM counts file pages (shared libraries, the
        # mmapped checkpoint) as available, so only this part competes with the KV cache.
        info = process.memory_info()
        return info.rss - info.shared

    me = psutil.Process()
    before = anon(me)
    node_before = node_available_bytes()
    from vllm import LLM

    llm = LLM(model=model, dtype="bfloat16", enforce_eager=True, seed=0,
              kv_cache_memory_bytes=kv_mib * MiB)
    parent = anon(me) - before
    engine = [p for p in me.children(recursive=True)
              if "resource_tracker" not in " ".join(p.cmdline())]
    children = sum(anon(p) for p in engine)
    node_after = node_available_bytes()
    del llm
    return {
        "kv_mib": kv_mib,
        "weights_mib": weights_bytes(model) / MiB,
        "engine_processes": len(engine),
        "parent_growth_anon_mib": parent / MiB,
        "engine_processes_anon_mib": children / MiB,
        "node_available_drop_mib": (node_before - node_after) / MiB
        if node_before is not None and node_after is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", nargs="*", default=None)
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "KV_MIB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(measure(args.one[0], int(args.one[1]))), flush=True)
        return
    models = args.model
    if not models:
        sys.path.insert(0, str(ROOT))
        from cotdistill.models import embedded_teacher_path
        from tests.helpers.tiny import build_tiny_model

        tiny = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", layers=2)
        models = [str(tiny), str(embedded_teacher_path())]
    rows = []
    for model in models:
        for kv_mib in (256, 1024):
            done = subprocess.run(
                [sys.executable, __file__, "--one", model, str(kv_mib)],
                capture_output=True, text=True, check=True,
            )
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            row = {"model": model, **json.loads(line.removeprefix("RESULT "))}
            # The engine's memory other than weights and KV cache. The KV cache is resident
            # once the engine has started (the two sizes differ by it), so it is subtracted.
            row["overhead_mib"] = (row["parent_growth_anon_mib"] + row["engine_processes_anon_mib"]
                                   - row["weights_mib"] - row["kv_mib"])
            print(json.dumps(row), flush=True)
            rows.append(row)
    out = ROOT / "bench" / "results" / "engine_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
