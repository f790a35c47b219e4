"""Benchmark CPU training precision: fp32 vs bf16 autocast, each with and without torch.compile.

Trains the embedded SmolLM2-135M-Instruct (`cotdistill.models.resolve_model(None)`, full
fine-tune) for a few steps on GSM8K question/solution pairs, each variant in a fresh process,
and reports tokens/s over the steps after the first (the first holds the warm-up and, with
compile, the compilation), the first step's time, and the losses (so a precision that diverges
shows). Variants run interleaved, round by round, so the load of a shared machine hits each
alike. Figures go to bench/results/cpu_dtype.md and cpu_dtype.json.

    .venv/bin/python bench/bench_cpu_dtype.py                    # 4 variants, 6 steps each
    .venv/bin/python bench/bench_cpu_dtype.py --steps 8 --rounds 2 --variants fp32 bf16
    .venv/bin/python bench/bench_cpu_dtype.py --interleaved --steps 5   # one process, in turns

`dtype=bfloat16` is the training config's mixed precision: fp32 master weights, bf16 autocast
(cotdistill/train.py `weights_dtype`). "compile" compiles each decoder layer in place
(`layer.compile()`, regional compilation: one graph reused by every layer), which keeps the
model object the Trainer holds; it is not a training option (yet): this measures whether it
would pay within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import write_data  # noqa: E402  (bench/ is not a package)

VARIANTS = {
    "fp32": {"dtype": "float32", "compile": False},
    "bf16": {"dtype": "bfloat16", "compile": False},
    "fp32+compile": {"dtype": "float32", "compile": True},
    "bf16+compile": {"dtype": "bfloat16", "compile": True},
}


def worker(spec: dict) -> dict:
    """One training run in this process; returns its figures."""
    import torch

    from cotdistill.train.config import TrainConfig
    from cotdistill.train.prepare import prepare
    from cotdistill.train.trainer import build_trainer, train_log_callback

    config = TrainConfig(**spec["config"])
    prepared = prepare(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "train_log.jsonl"
    trainer = build_trainer(config, prepared, out, [train_log_callback(log)])
    if spec["compile"]:
        for layer in trainer.model.model.layers:
            layer.compile()
    started = time.time()
    trainer.train()
    wall = time.time() - started
    from torch._dynamo.utils import counters
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [e for e in steps if "loss" in e and "num_tokens" in e]
    # logging_steps=1: one entry per step, stamped when the step ended.
    first, last = steps[0], steps[-1]
    later_tokens = last["num_tokens"] - first["num_tokens"]
    later_s = last["time"] - first["time"]
    return {
        "steps": len(steps),
        "tokens": last["num_tokens"],
        "first_step_s": round(first["time"] - started, 2),
        "later_steps_s": round(later_s, 2),
        "tokens_per_s_after_first": round(later_tokens / later_s, 1),
        "tokens_per_s_whole_run": round(last["num_tokens"] / wall, 1),
        "losses": [round(e["loss"], 4) for e in steps],
        "finite": all(torch.isfinite(torch.tensor(e["loss"])).item() for e in steps),
        "threads": torch.get_num_threads(),
        # > 0 proves the compiled variants really ran compiled graphs.
        "compiled_graphs": counters["stats"]["unique_graphs"],
    }


def interleaved(steps: int, batch_size: int, variants: list[str]) -> dict[str, dict]:
    """All variants in one process on one fixed batch, one step each in turn, `steps` rounds.

    On a shared machine the load changes over minutes; taking turns step by step puts every
    variant under the same load, and the median per variant discards the worst moments. A
    step here is forward + backward of the training loss on the assistant tokens (the
    optimizer's step is the same fp32 AdamW for every variant, so it is left out). Compiled
    variants use their own copy of the model; their first step (compilation) is reported
    apart and not in the median.
    """
    import copy
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.models import resolve_model
    from cotdistill.train.data import load_examples, tokenize_examples

    path, _ = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(path)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "sft.jsonl", batch_size)
        rows, _ = tokenize_examples(tokenizer, load_examples([data]), 1024)
    length = max(len(r.input_ids) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r.input_ids + [pad] * (length - len(r.input_ids)) for r in rows])
    attention = torch.tensor([[1] * len(r.input_ids) + [0] * (length - len(r.input_ids))
                              for r in rows])
    labels = torch.tensor([[t if m else -100 for t, m in zip(r.input_ids, r.completion_mask,
                                                             strict=True)]
                           + [-100] * (length - len(r.input_ids)) for r in rows])
    tokens = int(attention.sum())
    eager = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    eager.train()
    compiled = None
    if any(VARIANTS[v]["compile"] for v in variants):
        compiled = copy.deepcopy(eager)
        for layer in compiled.model.layers:
            layer.compile()
    times: dict[str, list[float]] = {v: [] for v in variants}
    first: dict[str, float] = {}
    losses: dict[str, float] = {}
    for _ in range(steps + 1):
        for name in variants:
            variant = VARIANTS[name]
            model = compiled if variant["compile"] else eager
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16,
                                enabled=variant["dtype"] == "bfloat16"):
                loss = model(input_ids=ids, attention_mask=attention, labels=labels,
                             use_cache=False).loss
            loss.backward()
            took = time.perf_counter() - started
            if name not in first:
                first[name] = took
            else:
                times[name].append(took)
            losses[name] = float(loss.detach())
    out = {}
    for name in variants:
        median = statistics.median(times[name])
        out[name] = {"median_step_s": round(median, 3), "steps_s": [round(t, 2) for t in
                                                                  times[name]],
                     "first_step_s": round(first[name], 2), "tokens_per_step": tokens,
                     "tokens_per_s": round(tokens / median, 1), "loss": round(losses[name], 4)}
    return out


def write_interleaved(args: argparse.Namespace, results: dict[str, dict], loads: list[float]
                      ) -> None:
    import platform

    import torch

    base = results.get("fp32", {}).get("median_step_s")
    rows = ["| variant | median fwd+bwd s | tokens/s | vs fp32 | first step s | loss "
            "(same batch, same weights) | steps s |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = f"{base / r['median_step_s']:.2f}x" if base else ""
        rows.append(f"| {name} | {r['median_step_s']} | {r['tokens_per_s']} | {ratio} | "
                    f"{r['first_step_s']} | {r['loss']} | {', '.join(map(str, r['steps_s']))} |")
    notes = []
    for name, r in results.items():
        plain = results.get(name.replace("+compile", ""))
        if name.endswith("+compile") and plain:
            saved = plain["median_step_s"] - r["median_step_s"]
            cost = r["first_step_s"] - plain["median_step_s"]
            notes.append(f"- {name}: compilation cost about {cost:.0f} s; "
                         + (f"it saves {saved:.2f} s a step, so it pays after about "
                            f"{cost / saved:.0f} steps." if saved > 0
                            else "it saves nothing per step here, so it never pays."))
    command = "python bench/bench_cpu_dtype.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# CPU training precision, interleaved (embedded SmolLM2-135M-Instruct)", "",
        f"Command: `{command}` on {time.strftime('%Y-%m-%d %H:%M')} UTC, {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}, {platform.machine()}. One process, one fixed batch "
        f"of {args.batch_size} GSM8K question/solution pairs "
        f"({next(iter(results.values()))['tokens_per_step']} real tokens), fp32 weights; "
        "variants take turns step by step, so a shared machine's load hits each alike. "
        f"Load average (1 min) before and after: {loads}.", "",
        *rows, "", *notes, "",
    ])
    (RESULTS / "cpu_dtype_interleaved.md").write_text(text)
    (RESULTS / "cpu_dtype_interleaved.json").write_text(json.dumps(
        {"command": command, "load_average": loads, "results": results}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1, help="repeat every variant N times")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--interleaved", action="store_true",
                        help="one process, variants taking turns step by step (robust to a "
                        "shared machine's load); writes cpu_dtype_interleaved.md")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))))
        return
    if args.interleaved:
        loads = [round(os.getloadavg()[0], 1)]
        results = interleaved(args.steps, args.batch_size, args.variants)
        loads.append(round(os.getloadavg()[0], 1))
        for name, r in results.items():
            print(name, r, flush=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_interleaved(args, results, loads)
        return

    from cotdistill.models import resolve_model

    model, model_name = resolve_model(None)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="")
    results: dict[str, list[dict]] = {name: [] for name in args.variants}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(Path(tmp) / "sft.jsonl", args.steps * args.batch_size)
        for round_ in range(args.rounds):
            for name in args.variants:
                variant = VARIANTS[name]
                config = {"data": [str(data)], "student": model,
                          "out": str(Path(tmp) / f"{name}-{round_}"), "max_steps": args.steps,
                          "learning_rate": 2e-5, "batch_size": args.batch_size,
                          "logging_steps": 1, "save_steps": 10_000, "max_length": 1024,
                          "dtype": variant["dtype"], "seed": 0}
                spec = json.dumps({"config": config, "compile": variant["compile"]})
                loads.append(os.getloadavg()[0])
                proc = subprocess.run([sys.executable, __file__, "--worker", spec], env=env,
                                      capture_output=True, text=True, cwd=ROOT)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    # Kept and reported: one variant failing (compile) must not lose the rest.
                    results[name].append({"error": proc.stderr[-1500:]})
                else:
                    results[name].append(json.loads(lines[-1][7:]))
                print(name, results[name][-1], flush=True)
            write_results(args, model_name, results, loads)  # each round: partial results kept


def write_results(args: argparse.Namespace, model_name: str, results: dict[str, list[dict]],
                  loads: list[float]) -> None:
    import platform

    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python bench/bench_cpu_dtype.py " + " ".join(sys.argv[1:]),
        "model": model_name, "steps": args.steps, "batch_size": args.batch_size,
        "rounds": args.rounds, "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_at_starts": [round(x, 1) for x in loads],
    }
    (RESULTS / "cpu_dtype.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    base = [r.get("tokens_per_s_after_first", 0) for r in results.get("fp32", [])]
    rows = ["| variant | round | tokens/s after step 1 | vs fp32 | first step s | "
            "tokens/s whole run | compiled graphs | losses (per step) |",
            "|---|---|---|---|---|---|---|---|"]
    for name, runs in results.items():
        for i, r in enumerate(runs):
            if "error" in r:
                last = r["error"].strip().splitlines()[-1:] or ["?"]
                rows.append(f"| {name} | {i + 1} | failed: {last[0][:200]} | | | | | |")
                continue
            ratio = (f"{r['tokens_per_s_after_first'] / base[i]:.2f}x"
                     if i < len(base) and base[i] else "")
            rows.append(f"| {name} | {i + 1} | {r['tokens_per_s_after_first']} | {ratio} | "
                        f"{r['first_step_s']} | {r['tokens_per_s_whole_run']} | "
                        f"{r.get('compiled_graphs', '')} | "
                        f"{', '.join(map(str, r['losses']))} |")
    text = "\n".join([
        f"# CPU training precision ({model_name}, full fine-tune)",
        "",
        f"Command: `{meta['command']}` on {meta['date']} UTC, {meta['cpu_count']} CPU cores, "
        f"torch {meta['torch']}. {args.steps} steps of batch {args.batch_size} GSM8K "
        "question/solution pairs, lr 2e-5, same data and seed for every variant, each in a "
        "fresh process; variants interleaved round by round.",
        "tokens/s counts real (non-padding) tokens from the end of step 1 to the end of the "
        "last step; the first step holds warm-up and compilation. Load average (1 min) when "
        f"each run started: {meta['load_average_at_starts']} (the 2 cores were shared with "
        "other work when this ran: compare ratios within a round, not absolute figures).",
        "",
        *rows,
        "",
    ])
    (RESULTS / "cpu_dtype.md").write_text(text)


if __name__ == "__main__":
    main()
