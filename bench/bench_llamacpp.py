"""Run the exported GGUF in llama.cpp against the HF model it was exported from.

The model folder (default: the demo's self-distilled student `runs/demo/students/self/model`
when it exists, else the embedded SmolLM2-135M-Instruct) is exported with cotdistill's own
`run_export` to f16 and q8_0. A few word problems from `data/word_problems/test.jsonl` are
rendered with the model's chat template (the `plain` prompt) by the transformers tokenizer, and
the same token ids go to both runtimes. Each runtime then runs in a fresh subprocess that
reports its own resident high-water mark (so neither the bench's nor another runtime's memory
is counted in its peak RSS), greedy, up to 32 new tokens per prompt, 2 threads
(`--threads`):

- llama.cpp through `llama-cpp-python` (the optional extra `.[llama]`): temperature 0 (its
  greedy sampler), top_k 1, repeat penalty 1.0;
- transformers `generate(do_sample=False)` on CPU (torch threads as set), in float32 (the
  bf16 weights upcast exactly: the reference the GGUF should reproduce).

Per prompt: whether the generated ids are equal to HF's and, if not, the first position that
differs (with HF's top-1/top-2 logit gap there). f16 equality is the check; q8_0 may differ and
is reported. Prompt evaluation (prefill plus the first token) and decode (every further token)
are timed apart. Figures go to bench/results/llamacpp.md and .json.

    .venv/bin/pip install -e '.[llama]'                 # builds llama.cpp from source
    .venv/bin/python bench/bench_llamacpp.py            # about 1.5 min on the shared box
    .venv/bin/python bench/bench_llamacpp.py --threads 2 1      # as in bench/results/, ~5 min
    .venv/bin/python bench/bench_llamacpp.py --model runs/demo/students/self/model \\
        --prompts 3 --tokens 32 --dtypes f16 q8_0

`--threads 2 1` gives every runtime a row at 1 thread too: on a 2-core machine that another
job is using, 2 OpenMP threads (torch's and llama.cpp's alike) slow down several-fold and
erratically (measured here: torch 1-2 tok/s against 16 at 1 thread), so the 1-thread rows are
the ones to compare there. The first HF row is the reference for the equality columns.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DEMO_STUDENT = ROOT / "runs" / "demo" / "students" / "self" / "model"


# --- workers: each runs in its own process, with no cotdistill/transformers import for llama --


def peak_rss_mb() -> float:
    """This process's resident high-water mark (VmHWM). Not `ru_maxrss` from the parent's
    `wait4`: on Linux a forked-then-exec'd child carries the parent's high-water mark into it,
    so every child would report at least the parent's (transformers-loaded) RSS."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def passes(run: Any, job: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """A warm-up generation (not timed), then `repeats` timed passes over every prompt."""
    run(job["prompts"][0], min(8, job["tokens"]))
    return [[run(prompt, job["tokens"]) for prompt in job["prompts"]]
            for _ in range(job["repeats"])]


def llama_worker(job: dict[str, Any]) -> dict[str, Any]:
    import llama_cpp

    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=job["path"], n_ctx=job["n_ctx"], n_threads=job["threads"],
                          n_threads_batch=job["threads"], verbose=False, logits_all=False)
    load_s = time.perf_counter() - started
    eos = set(job["eos"])

    def run(prompt: list[int], tokens: int) -> dict[str, Any]:
        llm.reset()  # no KV prefix reuse between prompts: every prefill is timed in full
        ids: list[int] = []
        stamps = [time.perf_counter()]
        for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0,
                                  top_p=1.0, min_p=0.0, reset=False):
            stamps.append(time.perf_counter())
            ids.append(int(token))
            if len(ids) >= tokens or token in eos:
                break
        return {"ids": ids, "prefill_s": stamps[1] - stamps[0],
                "decode_s": stamps[-1] - stamps[1], "decode_tokens": len(ids) - 1}

    timed = passes(run, job)
    agrees = [llm.tokenize(text.encode(), add_bos=False, special=True) == prompt
              for prompt, text in zip(job["prompts"], job["texts"], strict=True)]
    return {"load_s": load_s, "passes": timed, "tokenizer_agrees": agrees,
            "peak_rss_mb": peak_rss_mb(), "version": f"llama-cpp-python {llama_cpp.__version__}",
            "system_info": llama_cpp.llama_print_system_info().decode().strip()}


def hf_worker(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(job["threads"])
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(job["path"], dtype=getattr(torch, job["dtype"]))
    model.eval()
    load_s = time.perf_counter() - started

    class Stamps(BaseStreamer):
        """generate() calls put() once with the prompt, then once per new token."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run(prompt: list[int], tokens: int) -> dict[str, Any]:
        stamps = Stamps()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False, max_new_tokens=tokens, repetition_penalty=1.0,
                eos_token_id=job["eos"], pad_token_id=job["eos"][0], streamer=stamps,
                return_dict_in_generate=True, output_logits=True)
        ids = out.sequences[0, len(prompt):].tolist()
        top2 = [torch.topk(step[0].float(), 2) for step in out.logits]
        times = stamps.times[1:]  # one per generated token
        return {"ids": ids, "prefill_s": times[0] - start, "decode_s": times[-1] - times[0],
                "decode_tokens": len(ids) - 1,
                "top2_ids": [t.indices.tolist() for t in top2],
                "top2_gap": [float(t.values[0] - t.values[1]) for t in top2]}

    return {"load_s": load_s, "passes": passes(run, job), "peak_rss_mb": peak_rss_mb(),
            "version": f"transformers {transformers.__version__}, torch {torch.__version__}"}


def worker(job_file: Path) -> int:
    job = json.loads(job_file.read_text())
    result = (llama_worker if job["runtime"] == "llama" else hf_worker)(job)
    Path(job["result"]).write_text(json.dumps(result) + "\n")
    return 0


def in_child(job: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Run one worker in a fresh process (it reports its own peak RSS); the first pass's runs
    are `runs`, and `deterministic` says whether every pass generated the same ids."""
    name = f"{job['runtime']}-{Path(job['path']).name}-{job['tag']}"
    job_file, result = folder / f"{name}.job.json", folder / f"{name}.result.json"
    result.unlink(missing_ok=True)
    job_file.write_text(json.dumps({**job, "result": str(result)}))
    threads = str(job["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    started = time.perf_counter()
    code = subprocess.run([sys.executable, __file__, "--worker", str(job_file)], env=env,
                          check=False).returncode
    if code != 0:
        raise SystemExit(f"bench_llamacpp: the {name} worker failed ({code})")
    figures = json.loads(result.read_text())
    figures["wall_s"] = time.perf_counter() - started
    figures["runs"] = figures["passes"][0]
    figures["deterministic"] = all([r["ids"] for r in p] == [r["ids"] for r in figures["runs"]]
                                   for p in figures["passes"])
    return figures


# --- the bench --------------------------------------------------------------------------------


def default_model() -> Path:
    if (DEMO_STUDENT / "config.json").is_file():
        return DEMO_STUDENT
    from cotdistill.models import embedded_teacher_path

    return embedded_teacher_path()


def render_prompts(model: Path, count: int) -> tuple[list[dict[str, Any]], list[int]]:
    """The first `count` test word problems through the `plain` template and the model's chat
    template; token ids from the transformers tokenizer. Also the end-of-sequence ids."""
    from transformers import AutoTokenizer, GenerationConfig

    from cotdistill.prompts import load_template

    tokenizer = AutoTokenizer.from_pretrained(model)
    template = load_template("plain")
    lines = (ROOT / "data" / "word_problems" / "test.jsonl").read_text().splitlines()
    prompts = []
    for line in lines[:count]:
        problem = json.loads(line)
        messages = [m.model_dump(include={"role", "content"})
                    for m in template.render(problem["question"])]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        prompts.append({"id": problem["id"], "question": problem["question"], "text": text,
                        "ids": ids})
    try:
        eos = GenerationConfig.from_pretrained(model).eos_token_id
    except OSError:
        eos = None
    eos = eos if eos is not None else tokenizer.eos_token_id
    return prompts, sorted(set(eos if isinstance(eos, list) else [eos]))


def compare(ids: list[int], reference: list[int]) -> int | None:
    """First position where two generations differ; None when equal."""
    for i, (a, b) in enumerate(zip(ids, reference, strict=False)):
        if a != b:
            return i
    return None if len(ids) == len(reference) else min(len(ids), len(reference))


def totals(figures: dict[str, Any], prompt_tokens: list[int]) -> dict[str, Any]:
    """Speeds over all prompts of each pass; the row shows the median pass."""
    prompt, decode = [], []
    for runs in figures["passes"]:
        prompt.append(sum(prompt_tokens) / sum(r["prefill_s"] for r in runs))
        seconds = sum(r["decode_s"] for r in runs)  # 0 when every prompt stopped at once
        decode.append(sum(r["decode_tokens"] for r in runs) / seconds if seconds else float("nan"))
    return {"prompt_tokens_per_s": statistics.median(prompt),
            "decode_tokens_per_s": statistics.median(decode),
            "prompt_tokens_per_s_passes": prompt, "decode_tokens_per_s_passes": decode,
            "generated_tokens": sum(len(r["ids"]) for r in figures["runs"]),
            "deterministic": figures["deterministic"]}


def plural(threads: int) -> str:
    return f"{threads} thread" + ("" if threads == 1 else "s")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="model folder (default: runs/demo/students/self/model when it "
                        "exists, else the embedded teacher)")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[2],
                        help="llama.cpp threads, one row per value")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes over the prompts per runtime (median reported)")
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--dtypes", nargs="+", default=["f16", "q8_0"],
                        choices=["f16", "q8_0", "f32"])
    parser.add_argument("--hf-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--hf-threads", type=int, nargs="+", default=None,
                        help="torch threads, one HF row per value (default: --threads); the "
                        "first HF row is the reference the others are compared with")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-llamacpp",
                        help="folder for the GGUF files and the workers' job files")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)

    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        print("bench_llamacpp: llama-cpp-python is not installed; "
              "run .venv/bin/pip install -e '.[llama]' (a source build)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))  # run as a script from a checkout
    from cotdistill.compress.export import ExportConfig, run_export

    load_before = os.getloadavg()
    started = time.perf_counter()
    model = (args.model or default_model()).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    prompts, eos = render_prompts(model, args.prompts)
    lengths = [len(p["ids"]) for p in prompts]
    if max(lengths) + args.tokens > args.n_ctx:
        raise SystemExit(f"bench_llamacpp: --n-ctx {args.n_ctx} is below the longest prompt "
                         f"({max(lengths)}) + {args.tokens}")

    exports = {}
    for dtype in args.dtypes:
        gguf = args.out / f"{model.name}.{dtype}.gguf"
        tick = time.perf_counter()
        run_export(ExportConfig(model=str(model), dtype=dtype, out=gguf))
        exports[dtype] = {"file": gguf, "bytes": gguf.stat().st_size,
                          "export_s": time.perf_counter() - tick}

    job = {"prompts": [p["ids"] for p in prompts], "texts": [p["text"] for p in prompts],
           "tokens": args.tokens, "n_ctx": args.n_ctx, "eos": eos, "repeats": args.repeats}
    weights = sorted(model.glob("*.safetensors"))
    runtimes = []
    for threads in args.hf_threads or args.threads:
        figures = in_child({**job, "runtime": "hf", "path": str(model), "dtype": args.hf_dtype,
                            "threads": threads, "tag": f"{threads}t"}, args.out)
        runtimes.append({"runtime": f"HF transformers, torch {args.hf_dtype}, {plural(threads)}",
                         "figures": figures, "file": ", ".join(w.name for w in weights),
                         "bytes": sum(w.stat().st_size for w in weights)})
    for dtype, export in exports.items():
        for threads in args.threads:
            figures = in_child({**job, "runtime": "llama", "path": str(export["file"]),
                                "threads": threads, "tag": f"{threads}t"}, args.out)
            runtimes.append({"runtime": f"llama.cpp {dtype}, {plural(threads)}",
                             "figures": figures, "file": export["file"].name,
                             "bytes": export["bytes"], "export_s": export["export_s"]})
    seconds = time.perf_counter() - started
    load_after = os.getloadavg()

    reference = runtimes[0]["figures"]["runs"]
    rows = []
    for i, runtime in enumerate(runtimes):
        figures = runtime["figures"]
        per_prompt = None
        if i > 0:
            per_prompt = []
            agrees = figures.get("tokenizer_agrees") or [None] * len(prompts)
            for prompt, mine, ref, agree in zip(prompts, figures["runs"], reference, agrees,
                                                strict=True):
                first = compare(mine["ids"], ref["ids"])
                entry: dict[str, Any] = {"id": prompt["id"], "equal": first is None,
                                         "first_difference": first, "tokenizer_agrees": agree}
                if first is not None and first < len(ref["top2_gap"]):
                    entry["reference_top2_gap_there"] = ref["top2_gap"][first]
                    runner_up = ref["top2_ids"][first][1]
                    entry["took_reference_runner_up"] = (first < len(mine["ids"])
                                                         and mine["ids"][first] == runner_up)
                per_prompt.append(entry)
        rows.append({"runtime": runtime["runtime"], "version": figures["version"],
                     "file": runtime["file"], "bytes": runtime["bytes"],
                     "export_s": runtime.get("export_s"), "load_s": figures["load_s"],
                     **totals(figures, lengths), "peak_rss_mb": figures["peak_rss_mb"],
                     "equal": per_prompt})

    write_results(args, model, prompts, runtimes, rows, seconds, load_before, load_after)
    print(f"bench: wrote {RESULTS / 'llamacpp.md'}")
    return 0


def write_results(args: argparse.Namespace, model: Path, prompts: list[dict[str, Any]],
                  runtimes: list[dict[str, Any]], rows: list[dict[str, Any]], seconds: float,
                  load_before: tuple[float, ...], load_after: tuple[float, ...]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    command = "  ".join(["python bench/bench_llamacpp.py", *sys.argv[1:]])
    shown = str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model)
    system_info = next((r["figures"]["system_info"] for r in runtimes
                        if "system_info" in r["figures"]), "")
    versions = sorted({r["version"] for r in rows})

    def equal_cell(row: dict[str, Any]) -> str:
        if row["equal"] is None:
            return "(reference)"
        return ", ".join("yes" if e["equal"] else f"no (from token {e['first_difference']})"
                         for e in row["equal"])

    lines = [
        "# llama.cpp against transformers on the exported model",
        "",
        f"`{command}`: model `{shown}`, exported by `cotdistill export` to "
        f"{', '.join(args.dtypes)}; {len(prompts)} word problems from "
        f"`data/word_problems/test.jsonl` rendered with the `plain` prompt and the model's chat "
        f"template (transformers tokenizer, the same token ids to both runtimes), greedy, up to "
        f"{args.tokens} new tokens (stopping at end-of-sequence), each runtime in a fresh "
        f"process: an 8-token warm-up, then {args.repeats} timed passes over the prompts "
        f"(speeds: the median pass; greedy ids: the first pass, and whether every pass gave the "
        f"same ids). The first row is the reference. Took {seconds:.0f} s on "
        f"{os.cpu_count()} CPUs ({cpu_name()}, {platform.platform()}); load average before "
        f"{[round(x, 2) for x in load_before]}, after {[round(x, 2) for x in load_after]} "
        "(above the CPU count: other work shared the machine and the speeds are pessimistic).",
        "",
        "| runtime | file | bytes on disk | prompt eval tok/s | decode tok/s | peak RSS MB "
        f"| greedy-{args.tokens} equal to the reference, per prompt |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['runtime']} | `{row['file']}` | {row['bytes']:,} | "
            f"{row['prompt_tokens_per_s']:.0f} | {row['decode_tokens_per_s']:.1f} | "
            f"{row['peak_rss_mb']:.0f} | {equal_cell(row)} |")
    lines += [
        "",
        f"Versions: {'; '.join(versions)}. "
        "Prompt eval: prompt tokens over the time to the first new token (prefill plus one "
        "sampling step); decode: every further token. Peak RSS: the resident high-water mark "
        "(`VmHWM`) of that runtime's own process, Python and weights included (llama.cpp maps "
        "the file, HF holds the float32 copy); not `ru_maxrss` from `wait4`, which on Linux "
        "carries the parent's high-water mark into a fork+exec'd child. HF bytes on disk are the "
        "source folder's safetensors (stored in bf16). Same ids on every pass: "
        + ", ".join(f"{r['runtime']} {'yes' if r['deterministic'] else 'NO'}" for r in rows)
        + ". Decode tok/s of each pass: "
        + "; ".join(f"{r['runtime']} " + ", ".join(f"{x:.1f}" for x in
                                                   r["decode_tokens_per_s_passes"])
                    for r in rows) + ".",
        "",
        f"llama.cpp system info: `{system_info}`",
        "",
        "## Per prompt",
        "",
        "| prompt | tokens | runtime | new tokens | equal to the reference | first difference | "
        "reference's top-1/top-2 logit gap there | llama.cpp tokenizes the rendered prompt the "
        "same |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, prompt in enumerate(prompts):
        for row, runtime in zip(rows, runtimes, strict=True):
            new = len(runtime["figures"]["runs"][i]["ids"])
            first_cells = (f"| {prompt['id']} | {len(prompt['ids'])} |" if row is rows[0]
                           else "| | |")
            if row["equal"] is None:
                lines.append(f"{first_cells} {row['runtime']} | {new} | (reference) | | | |")
                continue
            entry = row["equal"][i]
            gap = entry.get("reference_top2_gap_there")
            gap_cell = "" if gap is None else (
                f"{gap:.3f}" + (" (took the reference's runner-up)"
                                if entry.get("took_reference_runner_up") else ""))
            agrees = {True: "yes", False: "no", None: ""}[entry["tokenizer_agrees"]]
            lines.append(
                f"{first_cells} {row['runtime']} | {new} | {'yes' if entry['equal'] else 'no'} | "
                f"{'' if entry['first_difference'] is None else entry['first_difference']} | "
                f"{gap_cell} | {agrees} |")
    lines += ["", "The reference's continuations, and every one that differs from it:", ""]
    for prompt, run in zip(prompts, runtimes[0]["figures"]["runs"], strict=True):
        text = tokenizer.decode(run["ids"]).replace("\n", " ")
        lines.append(f"- {prompt['id']} ({prompt['question']}): `{text}`")
    for runtime in runtimes[1:]:
        for prompt, run, ref in zip(prompts, runtime["figures"]["runs"],
                                    runtimes[0]["figures"]["runs"], strict=True):
            if run["ids"] != ref["ids"]:
                text = tokenizer.decode(run["ids"]).replace("\n", " ")
                lines.append(f"- {runtime['runtime']} on {prompt['id']}: `{text}`")

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "llamacpp.md").write_text("\n".join(lines) + "\n")
    figures = {
        "command": command,
        "model": shown,
        "seconds": seconds,
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "platform": platform.platform(),
        "load_before": load_before,
        "load_after": load_after,
        "tokens": args.tokens,
        "threads": args.threads,
        "hf_threads": args.hf_threads or args.threads,
        "repeats": args.repeats,
        "n_ctx": args.n_ctx,
        "hf_dtype": args.hf_dtype,
        "system_info": system_info,
        "rows": rows,
        "prompts": [{"id": p["id"], "prompt_tokens": len(p["ids"])} for p in prompts],
        "runs": {r["runtime"]: r["figures"]["runs"] for r in runtimes},
    }
    (RESULTS / "llamacpp.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
