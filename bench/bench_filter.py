"""Benchmark the filter stage: throughput against bare math-verify, and peak memory at scale.

    .venv/bin/python bench/bench_filter.py [--throughput-traces 8000] [--memory-traces 200000]

1. Throughput: synthetic GSM8K/MATH-style traces (4 samples per problem, integers, fractions,
   LaTeX expressions, thousands separators, no-gold problems). "Bare" is a single-process loop of
   `verify(parse(gold), parse(pred))` over the answers the filter extracts from the same traces
   (timing only those calls). The filter runs end to end (read, extract, verify, decide, write)
   twice: with its plain-number fast path off (every answer through math-verify) and on.
2. Memory: `cotdistill filter` on N synthetic traces in a child process; peak RSS of the filter
   process (ru_maxrss) and of its whole process tree (psutil, sampled every 0.2 s).

Writes bench/results/filter.md and bench/results/filter.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VOCAB = [
    "we", "first", "add", "the", "number", "of", "apples", "then", "subtract", "those", "given",
    "away", "so", "that", "each", "friend", "gets", "an", "equal", "share", "multiply", "by",
    "price", "per", "item", "divide", "total", "cost", "among", "boxes", "which", "leaves",
    "remainder", "after", "counting", "carefully", "step", "next", "compute", "result", "check",
]


def synth_problem(rng: random.Random, p: int, n: int) -> list[dict]:
    kind = p % 10
    if kind <= 5:
        g = rng.randint(1, 2_000_000)
        gold: str | None = str(g)
        right = [str(g), f"{g:,}", f"\\${g}", f"{g}.0"]
        wrong = [str(g + rng.randint(1, 9)), str(-g)]
    elif kind <= 7:
        a, b = rng.randint(1, 99), rng.choice([2, 4, 5, 8])
        gold = f"\\frac{{{a}}}{{{b}}}"
        right = [str(a / b), f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}"]
        wrong = [str(a / b + 1), f"\\frac{{{a + 1}}}{{{b}}}"]
    elif kind == 8:
        a = rng.randint(2, 99)
        gold = f"x^2+{a}x"
        right = [f"{a}x+x^2", f"x^2 + {a}x", f"x(x+{a})"]
        wrong = [f"x^2+{a + 1}x"]
    else:
        g = rng.randint(1, 1000)
        gold = None
        right = [str(g)]
        wrong = [str(g + 1)]
    question = f"Problem {p}: " + " ".join(rng.choice(VOCAB) for _ in range(30)) + "?"
    rows = []
    for i in range(n):
        answer = rng.choice(right) if rng.random() < 0.7 else rng.choice(wrong)
        body = " ".join(rng.choice(VOCAB) for _ in range(rng.randint(40, 120)))
        ending = rng.choice([f"The answer is \\boxed{{{answer}}}.", f"#### {answer}",
                             f"So the answer is ${answer}$."])
        tokens = len(body.split()) + 8
        logprobs = [round(-3 * rng.random() ** 4, 3) for _ in range(tokens)]
        rows.append({
            "problem_id": f"p{p}", "sample_index": i, "question": question,
            "gold_answer": gold,
            "messages": [{"role": "user", "content": question}],
            "completion": body + "\n" + ending,
            "finish_reason": "length" if rng.random() < 0.03 else "stop",
            "num_tokens": tokens,
            "mean_logprob": sum(logprobs) / tokens, "min_logprob": min(logprobs),
            "token_logprobs": logprobs, "teacher": "synthetic", "prompt_template": "math_cot",
            "prompt_hash": "bench", "sampling": {"temperature": 0.7, "top_p": 1.0,
                                                 "max_tokens": 256, "n": n},
        })
    return rows


def write_traces(path: Path, count: int, n: int = 4, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for p in range(count // n):
            for row in synth_problem(rng, p, n):
                fh.write(json.dumps(row) + "\n")


def bare_math_verify(path: Path) -> dict:
    """Single-process math-verify on every (gold, extracted answer) pair of the file."""
    from math_verify import parse, verify

    from cotdistill.answers.extract import extract_answer

    pairs = []
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            pred = extract_answer(row["completion"])
            if row["gold_answer"] is not None and pred is not None:
                pairs.append((row["gold_answer"], pred))
    start = time.perf_counter()
    correct = 0
    for gold, pred in pairs:
        correct += bool(verify(parse(f"${gold}$"), parse(f"${pred}$")))
    seconds = time.perf_counter() - start
    return {"pairs": len(pairs), "seconds": round(seconds, 3),
            "pairs_per_s": round(len(pairs) / seconds, 1), "correct": correct}


def filter_once(path: Path, out: Path, fast_path: bool) -> dict:
    from cotdistill.filter.config import FilterConfig
    from cotdistill.filter.stage import run_filter

    start = time.perf_counter()
    manifest = run_filter(FilterConfig(traces=[path], out=out, verify_fast_path=fast_path,
                                       dedup="exact"))
    seconds = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text())
    traces = manifest["counts"]["traces_in"]
    pairs = report["verification"]["pairs"]
    return {"traces": traces, "pairs": pairs, "seconds": round(seconds, 3),
            "traces_per_s": round(traces / seconds, 1), "pairs_per_s": round(pairs / seconds, 1),
            "verification": report["verification"], "kept": manifest["counts"]["kept"]}


def memory_run(path: Path, out: Path) -> dict:
    import psutil

    code = (
        "import json, resource, sys; from cotdistill.cli import main; "
        f"rc = main(['filter', '--traces', {str(path)!r}, '--out', {str(out)!r}]); "
        "print(json.dumps({'rc': rc, 'maxrss_kb': "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))"
    )
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    parent = psutil.Process(proc.pid)
    peak_tree = 0
    while proc.poll() is None:
        try:
            procs = [parent, *parent.children(recursive=True)]
            total = 0
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    total += p.memory_info().rss
            peak_tree = max(peak_tree, total)
        except psutil.Error:
            pass
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    result = json.loads(proc.stdout.read().strip().splitlines()[-1])
    manifest = json.loads((out / "manifest.json").read_text())
    return {"traces": manifest["counts"]["traces_in"], "kept": manifest["counts"]["kept"],
            "seconds": round(seconds, 1),
            "filter_process_peak_rss_mb": round(result["maxrss_kb"] / 1024, 1),
            "process_tree_peak_rss_mb": round(peak_tree / 2**20, 1),
            "input_mb": round(path.stat().st_size / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--throughput-traces", type=int, default=8000)
    parser.add_argument("--memory-traces", type=int, default=200_000)
    args = parser.parse_args()
    results: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                 "python": sys.version.split()[0],
                                 "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        small = tmp_path / "small.jsonl"
        write_traces(small, args.throughput_traces)
        results["bare_math_verify"] = bare_math_verify(small)
        results["filter_no_fast_path"] = filter_once(small, tmp_path / "f0", fast_path=False)
        results["filter_fast_path"] = filter_once(small, tmp_path / "f1", fast_path=True)
        bare = results["bare_math_verify"]["pairs_per_s"]
        for key in ("filter_no_fast_path", "filter_fast_path"):
            # Stricter than traces/s: only the traces with a gold answer count as work done.
            results[key]["ratio_to_bare"] = round(results[key]["pairs_per_s"] / bare, 2)
        print(json.dumps(results, indent=2), flush=True)
        if args.memory_traces:
            big = tmp_path / "big.jsonl"
            t = time.perf_counter()
            write_traces(big, args.memory_traces, seed=1)
            results["memory"] = memory_run(big, tmp_path / "fbig")
            results["memory"]["synthesis_s"] = round(time.perf_counter() - t, 1)
    results["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    results["self_rusage_maxrss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "filter.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "filter.md").write_text(markdown(results, args))
    print(json.dumps(results, indent=2))


def markdown(r: dict, args: argparse.Namespace) -> str:
    b, f0, f1 = r["bare_math_verify"], r["filter_no_fast_path"], r["filter_fast_path"]
    lines = [
        "# Filter benchmark",
        "",
        f"Command: `.venv/bin/python bench/bench_filter.py --throughput-traces "
        f"{args.throughput_traces} --memory-traces {args.memory_traces}`",
        f"Machine: {r['machine']['cpus']} CPUs, {r['machine']['platform']}, "
        f"Python {r['machine']['python']}. The CPU was shared with other jobs: 1-minute load "
        f"average {r['machine']['loadavg_1m_at_start']} at the start, "
        f"{r['machine']['loadavg_1m_at_end']} at the end; compare ratios, not absolute rates.",
        "",
        "## Throughput (same synthetic traces)",
        "",
        "| run | (gold, answer) pairs | seconds | pairs/s | ratio to bare | traces/s |",
        "|---|---:|---:|---:|---:|---:|",
        f"| bare math-verify, 1 process | {b['pairs']} | {b['seconds']} | "
        f"{b['pairs_per_s']} | 1.00 | |",
        f"| filter end to end, fast path off | {f0['pairs']} | {f0['seconds']} | "
        f"{f0['pairs_per_s']} | {f0['ratio_to_bare']} | {f0['traces_per_s']} |",
        f"| filter end to end, fast path on | {f1['pairs']} | {f1['seconds']} | "
        f"{f1['pairs_per_s']} | {f1['ratio_to_bare']} | {f1['traces_per_s']} |",
        "",
        f"The file holds {f0['traces']} traces; the {f0['traces'] - f0['pairs']} of problems "
        "without gold need no math-verify call and are not counted as pairs.",
        f"Fast path off: {f0['verification']['unique_checked_with_math_verify']} distinct "
        f"(gold, answer) pairs went to math-verify out of {f0['verification']['pairs']}. "
        f"Fast path on: {f1['verification']['fast_path']} pairs decided as plain numbers, "
        f"{f1['verification']['unique_checked_with_math_verify']} through math-verify.",
        f"Per distinct pair, the fast-path-off filter ran at "
        f"{round(f0['verification']['unique_checked_with_math_verify'] / f0['seconds'], 1)}"
        "/s end to end.",
        "The filter's time includes reading, validating, extracting, deciding and writing "
        "kept/rejected/sft/report files; bare times only the math-verify calls.",
    ]
    if "memory" in r:
        m = r["memory"]
        lines += [
            "",
            "## Memory at scale",
            "",
            f"`cotdistill filter` on {m['traces']} traces ({m['input_mb']} MB of JSONL): "
            f"{m['seconds']} s, peak RSS of the filter process {m['filter_process_peak_rss_mb']} "
            f"MB, of the whole process tree (with math-verify workers and forkserver) "
            f"{m['process_tree_peak_rss_mb']} MB; {m['kept']} kept.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
