"""Output tokens/s of the generate stage against plain vLLM and plain HF transformers.

Same model (the embedded SmolLM2-135M-Instruct, bf16), same prompts (the first GSM8K test
questions rendered with the `math_cot` template), same sampling (T=0.3, top_p 1, 256 new tokens,
n=1):

  (a) cotdistill's `run_generate` with the vllm backend (figure: its manifest's output tokens/s,
      i.e. generation time without engine start-up; token logprobs requested, as always),
  (b) vLLM's `LLM.chat` called directly with the same engine arguments and the same sampling
      parameters, token logprobs included as (a) always asks for them, on a fresh engine; then
      (b') a second call on that engine without logprobs, to show what logprobs cost,
  (c) HF transformers `generate`, batches of 16, left padding (fewer prompts: it is slow).

Each part runs in its own process, one after the other, so no two engines share the CPU.
Figures go to bench/results/generate.md and .json.

    .venv/bin/python bench/bench_generate.py   # 14 min on the shared 2-core box, 9 of them HF
    .venv/bin/python bench/bench_generate.py --prompts 16 --hf-prompts 16 --max-tokens 64
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
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from cotdistill.config import SamplingConfig  # noqa: E402  (light: pydantic only)

GSM8K = ROOT / "data" / "gsm8k" / "test.jsonl"
RESULTS = ROOT / "bench" / "results"
TEMPLATE = "math_cot"
TEMPERATURE = 0.3
SEED = 0
MEMORY = 0.3  # share of RAM for vLLM's KV cache on CPU
DTYPE = "bfloat16"
# `--compile` runs (a) and (b) with torch.compile (enforce_eager off): minutes of warm-up per
# engine, faster decoding. Passed to the part processes through the environment.
EAGER = os.environ.get("COTDISTILL_BENCH_COMPILE") != "1"
STEM = "generate" if EAGER else "generate_compiled"


def questions(count: int) -> list[str]:
    with open(GSM8K) as fh:
        return [json.loads(line)["question"] for _, line in zip(range(count), fh, strict=False)]


def conversations(count: int) -> list[list[dict[str, str]]]:
    from cotdistill.prompts import load_template

    template = load_template(TEMPLATE)
    return [[m.model_dump() for m in template.render(q)] for q in questions(count)]


def part_ours(count: int, max_tokens: int) -> dict:
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate

    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "problems.jsonl"
        problems.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions(count)))
        config = GenerateConfig(
            problems=problems, out=Path(tmp) / "out", prompt_template=TEMPLATE,
            temperature=TEMPERATURE, max_tokens=max_tokens, n=1, seed=SEED, dtype=DTYPE,
            gpu_memory_utilization=MEMORY, enforce_eager=EAGER,
        )
        started = time.perf_counter()
        manifest = run_generate(config)
        wall = time.perf_counter() - started
    tokens = manifest["counts"]["new_output_tokens"]
    return {
        "prompts": count,
        "output_tokens": tokens,
        "generation_s": manifest["generation_time_s"],
        "tokens_per_s": tokens / manifest["generation_time_s"],
        "wall_s_with_engine_start": wall,
        "finish_reasons": manifest["counts"]["finish_reasons"],
    }


def part_vllm(count: int, max_tokens: int) -> dict:
    from vllm import LLM, SamplingParams

    from cotdistill.models import resolve_model

    model, _ = resolve_model(None)
    llm = LLM(model=model, dtype=DTYPE, gpu_memory_utilization=MEMORY, enforce_eager=EAGER,
              seed=SEED)
    prompts = conversations(count)
    figures = {}
    # First the same sampling as (a), logprobs included, on the fresh engine (as cold as (a));
    # then the call without logprobs, to tell wrapper cost from logprob cost.
    for key, logprobs in (("same", SamplingConfig().logprobs), ("plain", None)):
        params = SamplingParams(n=1, temperature=TEMPERATURE, top_p=1.0, max_tokens=max_tokens,
                                logprobs=logprobs)
        started = time.perf_counter()
        outputs = llm.chat(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        figures[key] = {"prompts": count, "output_tokens": tokens, "generation_s": seconds,
                        "tokens_per_s": tokens / seconds}
    return {**figures["same"], "without_logprobs_second_call": figures["plain"]}


def part_hf(count: int, max_tokens: int, batch_size: int = 16) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.models import resolve_model

    model_path, _ = resolve_model(None)
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).eval()
    torch.manual_seed(SEED)
    texts = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        for c in conversations(count)
    ]
    eos = tokenizer.eos_token_id
    tokens = 0
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True,
                          add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(
                **batch, do_sample=True, temperature=TEMPERATURE, top_p=1.0,
                max_new_tokens=max_tokens, pad_token_id=tokenizer.pad_token_id,
            )
        for row in output[:, batch["input_ids"].shape[1] :].tolist():
            # Count up to and including the first EOS, as vLLM does; the rest is padding.
            tokens += row.index(eos) + 1 if eos in row else len(row)
        print(f"hf: {min(start + batch_size, len(texts))}/{len(texts)} prompts", flush=True)
    seconds = time.perf_counter() - started
    return {"prompts": count, "batch_size": batch_size, "output_tokens": tokens,
            "generation_s": seconds, "tokens_per_s": tokens / seconds}


PARTS = {"ours": part_ours, "vllm": part_vllm, "hf": part_hf}
LABELS = {
    "ours": "(a) cotdistill run_generate (vllm backend)",
    "vllm": "(b) vLLM LLM.chat direct",
    "hf": "(c) HF transformers generate, batch 16",
}


def run_part(name: str, count: int, max_tokens: int) -> dict:
    """One part in a fresh process, so engines never overlap and memory starts clean."""
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, __file__, "--part", name, "--count", str(count),
             "--max-tokens", str(max_tokens), "--result", result.name],
            check=True, cwd=ROOT,
        )
        figures = json.loads(Path(result.name).read_text())
    figures["process_wall_s"] = time.perf_counter() - started
    figures["load_avg_1min_before"] = load_before
    figures["load_avg_1min_after"] = os.getloadavg()[0]
    return figures


def write_results(results: dict) -> None:
    settings = results["settings"]
    ours, vllm, hf = (results["parts"][k]["tokens_per_s"] for k in ("ours", "vllm", "hf"))
    second = results["parts"]["vllm"]["without_logprobs_second_call"]
    results["ratios"] = {"ours_over_vllm": ours / vllm, "ours_over_hf": ours / hf,
                         "ours_over_vllm_without_logprobs": ours / second["tokens_per_s"]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{STEM}.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        f"| {LABELS[k]} | {p['prompts']} | {p['output_tokens']} | {p['generation_s']:.1f} "
        f"| {p['tokens_per_s']:.1f} | {p['load_avg_1min_before']:.2f} / "
        f"{p['load_avg_1min_after']:.2f} |"
        for k, p in results["parts"].items()
    ]
    rows.insert(2, f"| (b') the same engine as (b), second call, no logprobs | {second['prompts']} "
                   f"| {second['output_tokens']} | {second['generation_s']:.1f} "
                   f"| {second['tokens_per_s']:.1f} | |")
    goal_a = "met" if ours >= 0.95 * vllm else "NOT met"
    goal_c = "met" if ours >= 5 * hf else "NOT met"
    text = "\n".join([
        "# Generate throughput",
        "",
        f"Measured {results['date']} on {results['machine']} by `bench/bench_generate.py "
        f"--prompts {settings['prompts']} --hf-prompts {settings['hf_prompts']} --max-tokens "
        f"{settings['max_tokens']}{'' if EAGER else ' --compile'}`.",
        "Model: embedded SmolLM2-135M-Instruct, bf16, "
        + ("enforce_eager" if EAGER else "torch.compile (enforce_eager off) for (a) and (b)")
        + ", KV cache 0.3 of RAM. "
        f"Prompts: first GSM8K test questions, `{TEMPLATE}` template. Sampling: T={TEMPERATURE},"
        f" top_p 1, max {settings['max_tokens']} new tokens, n=1, engine seed {SEED}.",
        "Output tokens/s = generated tokens / generation time (engine start-up excluded).",
        "",
        "| run | prompts | output tokens | generation s | output tok/s | load avg before / "
        "after |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"- (a) / (b) = {ours / vllm:.3f} (goal >= 0.95: {goal_a})",
        f"- (a) / (b') = {results['ratios']['ours_over_vllm_without_logprobs']:.3f} ((b') skips "
        "the token logprobs that cotdistill always records, on a warm engine)",
        f"- (a) / (c) = {ours / hf:.1f} (goal >= 5: {goal_c})",
        f"- (a) end to end, engine start included: "
        f"{results['parts']['ours']['wall_s_with_engine_start']:.1f} s",
        f"- (a) and (b) both request logprobs={SamplingConfig().logprobs} (the sampled token's "
        "logprob is kept in every trace); (b') requests none.",
        "- Same work: (a) and (b) generated "
        + ("the same" if results["parts"]["ours"]["output_tokens"]
           == results["parts"]["vllm"]["output_tokens"] else "a different")
        + " number of tokens (same engine seed, same prompts).",
        "- The 2-core machine was shared with other work while this ran; the load averages "
        "show how busy it was (2.0 = both cores taken by something else).",
        "",
    ])
    (RESULTS / f"{STEM}.md").write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64, help="prompts for (a) and (b)")
    parser.add_argument("--hf-prompts", type=int, default=16, help="prompts for (c)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--compile", action="store_true",
                        help="(a) and (b) with torch.compile instead of eager mode")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite generate.md from the figures in generate.json")
    parser.add_argument("--part", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if args.compile:
        global EAGER, STEM
        os.environ["COTDISTILL_BENCH_COMPILE"] = "1"  # read by the part processes
        EAGER, STEM = False, "generate_compiled"

    if args.part:
        figures = PARTS[args.part](args.count, args.max_tokens)
        Path(args.result).write_text(json.dumps(figures))
        return

    if args.report_only:
        write_results(json.loads((RESULTS / f"{STEM}.json").read_text()))
        return

    import platform

    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "settings": {"prompts": args.prompts, "hf_prompts": args.hf_prompts,
                     "max_tokens": args.max_tokens, "temperature": TEMPERATURE,
                     "template": TEMPLATE, "dtype": DTYPE, "seed": SEED},
        "parts": {},
    }
    for name, count in (("ours", args.prompts), ("vllm", args.prompts),
                        ("hf", args.hf_prompts)):
        print(f"== {LABELS[name]}: {count} prompts", flush=True)
        results["parts"][name] = run_part(name, count, args.max_tokens)
        print(json.dumps(results["parts"][name]), flush=True)
    write_results(results)


if __name__ == "__main__":
    main()
