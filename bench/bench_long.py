"""Benchmark long reasoning traces in training: padded vs padding-free batches at 2k, 8k and 16k
tokens per example, gradient checkpointing on, loss on the assistant turn only.

Each step sees two records, one of L tokens and one of L/2 (reasoning traces vary in length),
so a padded batch holds 2L positions and a padding-free one 1.5L. Every run is the product's
own training path (`cotdistill.train`, TRL SFT) in a fresh process, through
`bench/bench_train.py --worker`, so its peak memory is its own. Figures go to
bench/results/long.md and long.json.

    .venv/bin/python bench/bench_long.py                          # CPU: 2k, 8k, 16k
    .venv/bin/python bench/bench_long.py --lengths 2048 8192 --steps 2
    python bench/bench_long.py --device cuda --hidden 896 --layers 24   # GPU, bf16

The model is built from a config (random weights: cost does not depend on them): a small
llama (hidden 256, 4 layers by default) with a real vocabulary, the embedded SmolLM2
tokenizer's 49,152 tokens, because at these lengths the vocabulary projection (logits of
L x 49,152) is what dominates memory, not the layers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODES = {"padded": {}, "padding_free": {"padding_free": True}}
SENTENCE = "Natalia sold 48 clips in April and half as many in May, so 48 / 2 = 24 in May. "


def build_model(out: Path, hidden: int, layers: int, vocab: str) -> tuple[Path, int]:
    """A random llama with the embedded SmolLM2 tokenizer (49,152 tokens) or the tests' 512-token
    one; returns (folder, vocabulary size)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from cotdistill.models import resolve_model

    if vocab == "small":
        sys.path.insert(0, str(ROOT))
        from tests.helpers.tiny import build_tokenizer

        build_tokenizer(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(None)[0])
    heads = max(hidden // 64, 1)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=3 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
        head_dim=64, max_position_embeddings=32768, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out, len(tokenizer)


def write_data(path: Path, model: Path, length: int, records: int) -> Path:
    """SFT rows as the filter writes them for a reasoning teacher: thinking of about `length`
    tokens (every other record half as long) inside <think> markers, then the answer."""
    from transformers import AutoTokenizer

    from cotdistill.filter.decide import sft_row

    per = len(AutoTokenizer.from_pretrained(model)(SENTENCE)["input_ids"])
    with open(path, "w") as fh:
        for i in range(records):
            target = length if i % 2 == 0 else length // 2
            thought = SENTENCE * max((target - 64) // per, 1)
            trace = {"problem_id": f"p{i}", "sample_index": 0, "teacher": "bench",
                     "question": "How many clips did Natalia sell?",
                     "messages": [{"role": "user", "content": "How many clips did Natalia sell?"}],
                     "completion": f"<think>\n{thought}\n</think>\n\nThe answer is \\boxed{{72}}."}
            fh.write(json.dumps(sft_row(trace)) + "\n")
    return path


def run_one(spec: dict, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_train.py"), "--worker",
                           json.dumps(spec)], env=env, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = proc.stderr[-1500:]
        return {"failed": "out of memory" if proc.returncode in (-9, 137) else tail}
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 8192, 16384])
    parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per run")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", choices=["smollm2", "small"], default="smollm2",
                        help="smollm2: 49,152 tokens (real); small: the tests' 512 tokens, to "
                        "see the sequence costs without the vocabulary projection")
    parser.add_argument("--name", default="long", help="results file stem")
    args = parser.parse_args()

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model, vocab = build_model(tmp_path / "model", args.hidden, args.layers, args.vocab)
        for length in args.lengths:
            data = write_data(tmp_path / f"sft-{length}.jsonl", model, length, 2 * args.steps)
            for mode in args.modes:
                config = {
                    "data": [str(data)], "student": str(model),
                    "out": str(tmp_path / f"run-{length}-{mode}"),
                    "max_steps": args.steps, "batch_size": 2, "learning_rate": 1e-4,
                    "logging_steps": 1, "save_steps": 10_000, "max_length": length + 256,
                    "gradient_checkpointing": True, "resume": False,
                    "dtype": "bfloat16" if args.device == "cuda" else "float32", **MODES[mode],
                }
                result = run_one({"config": config}, env)
                results[f"{length}/{mode}"] = {"length": length, "mode": mode, **result}
                print(length, mode, result, flush=True)
    write_results(args, vocab, results)


def write_results(args: argparse.Namespace, vocab: int, results: dict[str, dict]) -> None:
    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python bench/bench_long.py " + " ".join(sys.argv[1:]),
        "model": {"hidden": args.hidden, "layers": args.layers, "vocab": vocab},
        "steps": args.steps, "batch": "2 records per step: L and L/2 tokens",
        "gradient_checkpointing": True, "device": args.device, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    rows = [
        f"# Long traces: padded vs padding-free ({args.device})",
        "",
        f"`{meta['command']}` on {meta['date']}, {meta['cpu_count']} CPUs, torch "
        f"{meta['torch']}. Model from a config: llama, hidden {args.hidden}, {args.layers} "
        f"layers, vocabulary {vocab:,}. Each step: 2 records (L and L/2 tokens of <think> "
        f"trace), gradient checkpointing on, loss on the assistant turn; {args.steps} steps per "
        "run, each run in a fresh process.",
        "",
        "| tokens per example (L) | batching | real tokens | tokens/s | peak memory MB | "
        "memory before train MB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in results.values():
        if "failed" in r:
            rows.append(f"| {r['length']} | {r['mode']} | failed: "
                        f"{r['failed'].splitlines()[-1][:80]} | | | |")
            continue
        rows.append(f"| {r['length']} | {r['mode']} | {r['real_tokens']:.0f} | "
                    f"{r['tokens_per_s']} | {r['peak_memory_mb']} | "
                    f"{r['memory_before_train_mb']} |")
    rows += ["", "Peak memory on CPU is the process's peak resident set (model, data, "
             "activations, logits); on GPU torch's peak allocated memory."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
