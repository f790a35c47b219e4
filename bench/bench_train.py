"""Benchmark the training stage: batching modes (tokens/s) and LoRA vs full fine-tuning (memory).

Every run trains one epoch over the same SFT records (GSM8K questions with their reference
solutions as the assistant turn, so lengths vary as real traces do), each in a fresh process so
peak memory is that run's alone. Figures go to bench/results/train.md and train.json.

    .venv/bin/python bench/bench_train.py                      # CPU, ~30M-parameter llama
    .venv/bin/python bench/bench_train.py --device cuda --model qwen0.5b   # GPU, bf16

Models are built from a config (random weights: speed and memory do not depend on them).
`small` uses the 512-token test tokenizer, so the vocabulary projection does not swamp the
sequence costs being compared. `qwen0.5b` has Qwen2.5-0.5B's shapes (24 layers, hidden 896,
vocabulary 151,936) with the embedded SmolLM2 tokenizer; its token ids stay below 49,152,
which does not change the cost.
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

MODELS = {
    # ~4M parameters, 512-token vocabulary (the test tokenizer): a minute per run on 2 cores.
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  tie_word_embeddings=True, vocab_size=512),
    # Qwen2.5-0.5B's shapes.
    # The embedded SmolLM2-135M-Instruct itself (no shapes: the real folder is used).
    "smollm2": {},
    "qwen0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                     num_attention_heads=14, num_key_value_heads=2, head_dim=64,
                     tie_word_embeddings=True, vocab_size=151936),
}

# name -> TrainConfig overrides; batch sizes chosen so each step sees ~2k real tokens.
RUNS = {
    "padded": dict(),
    "padding_free": dict(padding_free=True),
    "packing": dict(packing=True, max_length=1024, batch_size=2),
    "lora": dict(lora=True, lora_r=16),
}


def build_model(kind: str, out: Path) -> Path:
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from cotdistill.models import resolve_model

    if kind == "smollm2":
        return Path(resolve_model(None)[0])
    if kind == "small":
        sys.path.insert(0, str(ROOT))
        from tests.helpers.tiny import build_tokenizer

        build_tokenizer(out)
        tokenizer = AutoTokenizer.from_pretrained(out)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(None)[0])
    shapes = MODELS[kind]
    config_cls, model_cls = ((Qwen2Config, Qwen2ForCausalLM) if kind.startswith("qwen")
                             else (LlamaConfig, LlamaForCausalLM))
    config = config_cls(max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                        **shapes)
    model = model_cls(config)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def write_data(path: Path, count: int) -> Path:
    with open(ROOT / "data" / "gsm8k" / "train.jsonl") as src, open(path, "w") as dst:
        for i, line in zip(range(count), src, strict=False):
            row = json.loads(line)
            record = {
                "messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": row["answer"]}],
                "problem_id": f"gsm8k-{i}",
                "teacher": "reference",
            }
            dst.write(json.dumps(record) + "\n")
    return path


def worker(spec: dict) -> dict:
    """One training run in this process; prints its figures as JSON."""
    import resource

    import psutil
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
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = psutil.Process().memory_info().rss
    started = time.time()
    result = trainer.train()
    wall = time.time() - started
    peak = (torch.cuda.max_memory_allocated() if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    tokens = max(e.get("num_tokens", 0) for e in entries)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {
        "steps": trainer.state.global_step,
        "real_tokens": tokens,
        "train_runtime_s": round(result.metrics["train_runtime"], 2),
        "tokens_per_s": round(tokens / result.metrics["train_runtime"], 1),
        "wall_s": round(wall, 2),
        "final_loss": [e["loss"] for e in entries if "loss" in e][-1],
        "memory_before_train_mb": round(before / 2**20),
        "peak_memory_mb": round(peak / 2**20),
        "trainable_params": trainable,
        "device": "cuda" if cuda else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=list(RUNS))
    parser.add_argument("--name", default="train", help="results file stem")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))))
        return

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = build_model(args.model, tmp_path / "model")
        data = write_data(tmp_path / "sft.jsonl", args.examples)
        for name in args.runs:
            config = {"data": [str(data)], "student": str(model), "out": str(tmp_path / name),
                      "epochs": 1, "learning_rate": 1e-4, "batch_size": args.batch_size,
                      "logging_steps": 1, "save_steps": 10_000, "max_length": 1024,
                      "dtype": "bfloat16" if args.device == "cuda" else "float32", **RUNS[name]}
            spec = json.dumps({"config": config})
            proc = subprocess.run([sys.executable, __file__, "--worker", spec], env=env,
                                  capture_output=True, text=True, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = {**json.loads(lines[-1][7:]), "settings": RUNS[name]}
            print(name, results[name], flush=True)
    write_results(args, results)


def write_results(args: argparse.Namespace, results: dict) -> None:
    import platform

    import torch

    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python bench/bench_train.py " + " ".join(sys.argv[1:]),
        "model": args.model, "shapes": MODELS[args.model], "examples": args.examples,
        "batch_size": args.batch_size, "device": args.device, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
    (RESULTS / f"{args.name}.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    rows = [
        "| run | settings | steps | real tokens | tokens/s | runtime s | memory before "
        "train MB | peak MB | trainable params |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items()) or "default"
        rows.append(
            f"| {name} | {settings} | {r['steps']} | {r['real_tokens']:.0f} | "
            f"{r['tokens_per_s']} | {r['train_runtime_s']} | {r['memory_before_train_mb']} | "
            f"{r['peak_memory_mb']} | {r['trainable_params']:,} |"
        )
    text = "\n".join([
        f"# Training benchmark ({args.device}, model `{args.model}`)",
        "",
        f"Command: `{meta['command']}` on {meta['date']}, {meta['cpu_count']} CPU cores, "
        f"torch {meta['torch']}.",
        f"One epoch over {args.examples} GSM8K question/solution pairs, batch {args.batch_size} "
        "(packing: 2 blocks of 1024 tokens), full fine-tuning unless `lora`. tokens/s counts "
        "real (non-padding) tokens over the trainer's runtime. Peak memory: the process's peak "
        "resident set on CPU (includes Python, torch and the data), torch's peak allocation on "
        "GPU.",
        "",
        *rows,
        "",
    ])
    (RESULTS / f"{args.name}.md").write_text(text)


if __name__ == "__main__":
    main()
