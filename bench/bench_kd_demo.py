"""The demo's 10-layer cut student: SFT alone against offline top-20 KD, at equal steps.

Runs `cotdistill run --config bench/kd_demo.yaml` (the demo's embedded SmolLM2-135M teacher,
150 word problems x 4 samples with `topk_logprobs: 20`, the kept traces, two cut students
from the same 10-of-30-layer start trained with the same schedule, one with
`kd: offline-topk`), then has the teacher answer the held-out problems greedily with top-20
logprobs and measures each student's mean KL(teacher top-20 at T=1 || student) per token on
those held-out traces, next to held-out accuracy from the run's evaluation. Results:
bench/results/kd_demo.md and .json.

    .venv/bin/python bench/bench_kd_demo.py [--skip-run]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "runs" / "kd_demo"
STUDENTS = ("cut-sft", "cut-topk")


def heldout_traces() -> Path:
    out = OUT / "heldout"
    if not (out / "manifest.json").exists():
        subprocess.run(
            [sys.executable, "-m", "cotdistill", "generate", "--problems",
             "data/word_problems/test.jsonl", "--limit", "100", "--n", "1", "--temperature", "0",
             "--max-tokens", "128", "--prompt-template", "plain", "--topk-logprobs", "20",
             "--dtype", "bfloat16", "--out", str(out)], cwd=ROOT, check=True)
    return out


def mean_kl(model_dir: Path, traces_dir: Path) -> dict:
    """Mean per-token KL(teacher's top-20 renormalised || student) on the held-out traces."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.losses.topk import topk_kl
    from cotdistill.topk import TopkStore, align
    from cotdistill.train import Example, tokenize_example

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    store = TopkStore.open([traces_dir])
    total, tokens, mismatched = 0.0, 0, 0
    for line in (traces_dir / "traces.jsonl").read_text().splitlines():
        trace = json.loads(line)
        example = Example(prompt=trace["messages"],
                          completion=[{"role": "assistant", "content": trace["completion"]}],
                          teacher="teacher", problem_id=trace["problem_id"], file="", line=0)
        row = tokenize_example(tokenizer, example, 4096)
        rows = store.get((trace["problem_id"], trace["sample_index"]))
        n, whole = align(row.input_ids, row.completion_mask, rows["sampled"])
        mismatched += not whole
        if not n:
            continue
        start = row.completion_mask.index(1)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([row.input_ids])).logits[0].float()
        kl = topk_kl(logits[start - 1:start - 1 + n][:, :len(tokenizer)],
                     torch.from_numpy(rows["ids"][:n].copy()),
                     torch.from_numpy(rows["logprobs"][:n].astype("float32")), temperature=1.0)
        total += float(kl.sum())
        tokens += n
    return {"mean_kl": round(total / max(tokens, 1), 4), "tokens": tokens,
            "traces_not_whole": mismatched}


def accuracy() -> dict:
    """Held-out accuracy (greedy, 100 problems) per model, from the run's evaluation."""
    summary = json.loads((OUT / "evaluate" / "summary.json").read_text())
    return {name: model["accuracy"] for name, model in summary["models"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-run", action="store_true", help="Reuse runs/kd_demo.")
    args = parser.parse_args()
    if not args.skip_run:
        subprocess.run([sys.executable, "-m", "cotdistill", "run", "--config",
                        "bench/kd_demo.yaml"], cwd=ROOT, check=True)
    traces = heldout_traces()
    # Both students start from the same cut (same layers of the same teacher).
    result: dict = {"kl": {"cut (start)": mean_kl(OUT / "students" / STUDENTS[0] / "init",
                                                  traces)}, "train": {}}
    for name in STUDENTS:
        folder = OUT / "students" / name
        result["kl"][name] = mean_kl(folder / "model", traces)
        manifest = json.loads((folder / "model" / "manifest.json").read_text())
        result["train"][name] = {k: manifest.get(k) for k in ("train_loss", "kd")}
        result["train"][name]["steps"] = manifest["counts"]["steps"]
    result["evaluate"] = accuracy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kd_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    acc, kl, kd = result["evaluate"], result["kl"], result["train"]["cut-topk"]["kd"]
    lines = [
        "# Cut student: SFT alone vs offline top-20 KD (bench/bench_kd_demo.py)", "",
        "Teacher: the embedded SmolLM2-135M-Instruct; students: its 10-of-30-layer cut, both "
        f"trained {result['train']['cut-sft']['steps']} steps on the same kept traces "
        "(bench/kd_demo.yaml); KL = mean per-token KL(teacher's top-20 at T=1 || student) on "
        f"the teacher's greedy answers to 100 held-out problems ({kl['cut-sft']['tokens']} "
        "tokens).", "",
        "| model | held-out accuracy | mean KL to the teacher |", "|---|---:|---:|",
        f"| teacher | {acc.get('teacher')} | 0 |",
        f"| cut, before training | | {kl['cut (start)']['mean_kl']} |",
        f"| cut + SFT | {acc.get('cut-sft')} | {kl['cut-sft']['mean_kl']} |",
        f"| cut + offline top-20 KD (alpha 0.5, T 1) | {acc.get('cut-topk')} | "
        f"{kl['cut-topk']['mean_kl']} |", "",
        f"Alignment of the KD student's data: {kd['aligned']} of {kd['examples']} examples "
        f"whole, {kd['token_mismatch']} differing partway ({kd['kd_tokens_lost_to_mismatch']} "
        f"teacher rows unused), {kd['kd_tokens']} tokens with teacher rows.", "",
    ]
    (RESULTS / "kd_demo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
