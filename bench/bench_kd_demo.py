"""The demo's 10-layer cut: SFT alone against logit and feature distillation, at equal steps.

Runs `cotdistill run --config bench/kd_demo.yaml` (the demo's embedded SmolLM2-135M teacher,
150 word problems x 4 samples with `topk_logprobs: 20`, the kept traces, two cut students
from the same 10-of-30-layer start trained with the same schedule, one with
`kd: offline-topk`), then has the teacher answer the held-out problems greedily with top-20
logprobs and measures each student's mean KL(teacher top-20 at T=1 || student) per token on
those held-out traces, next to held-out accuracy from the run's evaluation.

`--features bench/kd_features.yaml` then trains the same cut on the same kept traces with the
same schedule once per loss (SFT, online logit KD, + hidden-state, + attention, all), with
`cotdistill train` per student and one `cotdistill evaluate` (the run's generate, filter and
teacher evaluation are reused, not redone), and adds their accuracy, KL at steps 9 and 18 and
time per step. `--features-only` takes the first part's numbers from the last
bench/results/kd_demo.json instead of measuring them again. Results: bench/results/kd_demo.md
and .json.

    .venv/bin/python bench/bench_kd_demo.py [--skip-run] [--features bench/kd_features.yaml
        [--features-only]]
"""

from __future__ import annotations

import argparse
import json
import os
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
    from cotdistill.topk_store import TopkStore
    from cotdistill.train.data import Example, tokenize_example
    from cotdistill.train.topk_table import align

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


def intervals() -> dict:
    """Each model's 95% bootstrap interval over problems, from the run's evaluation."""
    summary = json.loads((OUT / "evaluate" / "summary.json").read_text())
    return {name: model["accuracy_ci"] for name, model in summary["models"].items()}


# --- --features: the same cut, same data and schedule, one loss per student ------------------


def load_note() -> str:
    """The 1-minute load average: the machine's 2 cores are shared, so times say under what."""
    return f"{os.getloadavg()[0]:.1f}"


def train_student(spec: dict, name: str, keys: dict) -> Path:
    """`cotdistill train` for one student (skipped when its manifest exists: train writes it
    last), from a config file kept beside the model so the run can be repeated."""
    folder = ROOT / spec["out"] / name
    model = folder / "model"
    if (model / "manifest.json").exists():
        return model
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    config = {**spec["train"], **keys, "data": [spec["data"]], "student": spec["start"],
              "out": str(model.relative_to(ROOT))}
    (folder / "train.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = load_note()
    subprocess.run([sys.executable, "-m", "cotdistill", "train", "--config",
                    str(folder / "train.yaml")], cwd=ROOT, check=True)
    (folder / "load.json").write_text(json.dumps({"before": before, "after": load_note()}))
    return model


def step_times(model: Path) -> dict:
    """Seconds per optimizer step: the whole run's mean (train runtime / steps, compilation and
    checkpoints included) and the median of step-to-step times from step 3 on (after the
    regional compile's graphs are built; needs logging_steps 1)."""
    import statistics

    manifest = json.loads((model / "manifest.json").read_text())
    steps = manifest["counts"]["steps"]
    log = [json.loads(line) for line in (model / "train_log.jsonl").read_text().splitlines()]
    times = {e["step"]: e["time"] for e in log if "loss" in e and "time" in e}
    gaps = [times[s] - times[s - 1] for s in sorted(times) if s >= 3 and s - 1 in times]
    return {"steps": steps, "mean_s": round(manifest["train_runtime_s"] / steps, 2),
            "steady_s": round(statistics.median(gaps), 2) if gaps else None,
            "tokens_per_s": manifest.get("tokens_per_s")}


def evaluate_students(spec: dict, models: dict[str, Path]) -> dict:
    """`cotdistill evaluate` with kd_demo.yaml's settings (teacher left out: the run scored it on
    the same problems), over the models no earlier evaluation under `out` has scored since they
    were written, so adding a model to the spec evaluates that model only."""
    import yaml

    root = ROOT / spec["out"]
    found: dict = {}
    for summary_file in sorted(root.glob("evaluate*/summary.json")):
        config = json.loads((summary_file.parent / "manifest.json").read_text())["config"]
        scored = json.loads(summary_file.read_text())["models"]
        for name, path in (m.split("=", 1) for m in config["model"]):
            model = models.get(name)
            if (model is not None and path == str(model.relative_to(ROOT)) and name in scored
                    and summary_file.stat().st_mtime > (model / "config.json").stat().st_mtime):
                found[name] = scored[name]
    missing = [name for name in models if name not in found]
    if missing:
        out = root / ("evaluate" if not found else "evaluate-" + "-".join(missing))
        out.mkdir(parents=True, exist_ok=True)
        config = {**spec["evaluate"], "model": [f"{n}={models[n].relative_to(ROOT)}"
                                                for n in missing],
                  "out": str(out.relative_to(ROOT))}
        (out / "evaluate.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        subprocess.run([sys.executable, "-m", "cotdistill", "evaluate", "--config",
                        str(out / "evaluate.yaml")], cwd=ROOT, check=True)
        found.update(json.loads((out / "summary.json").read_text())["models"])
    return {name: {"accuracy": m["accuracy"], "accuracy_ci": m["accuracy_ci"],
                   "problems": m["problems"], "truncated_share": m["truncated_share"]}
            for name, m in found.items() if name in models}


def features(spec_path: Path, traces: Path) -> dict:
    """Train every student of the spec, evaluate them, and measure KL at steps 9 and 18."""
    import yaml

    spec = yaml.safe_load(spec_path.read_text())
    result: dict = {"spec": str(spec_path.relative_to(ROOT)), "students": {}}
    models = {}
    for name, keys in spec["students"].items():
        models[name] = train_student(spec, name, keys)
    for name, model in models.items():
        manifest = json.loads((model / "manifest.json").read_text())
        load = json.loads((model.parent / "load.json").read_text()) \
            if (model.parent / "load.json").exists() else None
        kl = {}
        steps = manifest["counts"]["steps"]
        for checkpoint in sorted((model / "checkpoints").glob("checkpoint-*"),
                                 key=lambda p: int(p.name.split("-")[1])):
            step = int(checkpoint.name.split("-")[1])
            if step < steps:  # the last checkpoint holds the final model's weights
                kl[step] = cached_kl(checkpoint, traces)["mean_kl"]
        final = cached_kl(model, traces)
        kl[steps] = final["mean_kl"]
        result["students"][name] = {
            "train": spec["students"][name], "time": step_times(model), "load": load,
            "train_loss": manifest.get("train_loss"), "kl_by_step": kl, "kl": final,
            "feature_terms": (manifest.get("kd") or {}).get("feature_terms"),
            "last_terms": last_terms(model),
        }
    # Untrained deeper cuts, for scale: what KL goes with what accuracy before any training.
    for name, keys in (spec.get("references") or {}).items():
        start = ROOT / spec["out"] / name
        if not (start / "config.json").exists():
            subprocess.run([sys.executable, "-m", "cotdistill", "student", "init", "--out",
                            str(start), "--layers", str(keys["layers"])], cwd=ROOT, check=True)
        models[name] = start
        result.setdefault("references", {})[name] = {"layers": keys["layers"],
                                                      "kl": cached_kl(start, traces)}
    result["evaluate"] = evaluate_students(spec, models)
    return result


def last_terms(model: Path) -> dict:
    """The loss terms at the first and last step (train_log.jsonl, unweighted)."""
    log = [json.loads(line) for line in (model / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    keys = [k for k in steps[0] if k in ("loss", "distill_kl", "distill_ce", "hidden_mse",
                                         "hidden_cosine", "attention_kl")]
    return {"first": {k: round(steps[0][k], 4) for k in keys},
            "last": {k: round(steps[-1][k], 4) for k in keys if k in steps[-1]}}


def cached_kl(model_dir: Path, traces: Path) -> dict:
    """mean_kl, remembered per weights file (size and mtime) so a rerun of the report is cheap."""
    cache_file = ROOT / "runs" / "kd_features" / "kl_cache.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {}
    weights = model_dir / "model.safetensors"
    key = f"{model_dir.relative_to(ROOT)}:{weights.stat().st_size}:{weights.stat().st_mtime}"
    if key not in cache:
        cache[key] = mean_kl(model_dir, traces)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(cache, indent=1))
    return cache[key]


def demo(skip_run: bool, traces: Path) -> dict:
    """The run's two students (SFT, offline top-k KD) and their start: KL and accuracy."""
    if not skip_run:
        subprocess.run([sys.executable, "-m", "cotdistill", "run", "--config",
                        "bench/kd_demo.yaml"], cwd=ROOT, check=True)
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
    return result


def demo_lines(result: dict) -> list[str]:
    acc, kl, kd = result["evaluate"], result["kl"], result["train"]["cut-topk"]["kd"]
    return [
        "# Cut student: SFT alone vs logit and feature distillation (bench/bench_kd_demo.py)", "",
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


LOSSES = {"sft": "SFT (CE)", "online-kd": "+ logit KD (online teacher, alpha 0.5, T 1)",
          "hidden": "+ hidden-state MSE (weight 0.01, uniform map, no logit KD)",
          "attention": "+ attention KL (weight 0.25, no logit KD)",
          "all": "logit KD + hidden + attention"}


def features_lines(result: dict) -> list[str]:
    feats, demo_acc = result["features"], result["evaluate"]
    ci = result.get("intervals", {})
    start = result["kl"]["cut (start)"]["mean_kl"]
    lines = [
        "## Feature distillation, same cut, data and schedule (bench/kd_features.yaml)", "",
        "Each student: the same 10-layer cut (runs/kd_demo/students/cut-sft/init), the same 69 "
        "kept traces, 2 epochs of batch 8 (18 steps), lr 1e-4, seed 0, fp32 with regional "
        "`torch.compile` (`compile: true`); only the loss differs. Accuracy: greedy, the same "
        "100 held-out problems as above, 95% bootstrap interval. KL as above, at the step-9 "
        "checkpoint and the final model (start: "
        f"{start}). s/step: median step-to-step time from step 3 on (steady: after "
        "compilation) and the whole run's mean (compilation and checkpoints included).", "",
        f"Command: `{feats['command']}` ({feats['date']}). Load: the 2 cores were shared with "
        "other sessions' jobs (vLLM engines, tests) throughout; the 1-minute load average "
        "before and after each training is in the table, so times are pessimistic and noisy "
        "(the uncompiled runs/kd_demo students ran at another time and load).", "",
        "| student | loss | accuracy [95% CI] | KL step 9 | KL step 18 | s/step steady | "
        "s/step mean | load (1-min avg) before / after |",
        "|---|---|---|---:|---:|---:|---:|---|",
        f"| teacher | | {demo_acc.get('teacher')} {ci.get('teacher', '')} | 0 | 0 | | | |",
    ]
    for name in STUDENTS:
        t = result["train"][name]
        mean = round(t["train_runtime_s"] / t["steps"], 2) if t.get("train_runtime_s") else ""
        what = "SFT (CE), not compiled" if name == "cut-sft" else \
            "offline top-20 KD (alpha 0.5, T 1), not compiled"
        lines.append(f"| {name} (runs/kd_demo) | {what} | {demo_acc.get(name)} "
                     f"{ci.get(name, '')} | | {result['kl'][name]['mean_kl']} | | {mean} | |")
    for name, s in feats["students"].items():
        ev = feats["evaluate"].get(name, {})
        load = s["load"] or {}
        lines.append(
            f"| {name} | {LOSSES.get(name, s['train'])} | {ev.get('accuracy')} "
            f"{ev.get('accuracy_ci', '')} | {s['kl_by_step'].get('9', s['kl_by_step'].get(9))} "
            f"| {s['kl']['mean_kl']} | {s['time']['steady_s']} | {s['time']['mean_s']} | "
            f"{load.get('before', '')} / {load.get('after', '')} |")
    for name, ref in (feats.get("references") or {}).items():
        ev = feats["evaluate"].get(name, {})
        lines.append(f"| {name} | untrained cut, teacher layers {ref['layers']} | "
                     f"{ev.get('accuracy')} {ev.get('accuracy_ci', '')} | | "
                     f"{ref['kl']['mean_kl']} | | | |")
    if "sft" in feats["students"]:
        same = feats["students"]["sft"]["kl"]["mean_kl"] == result["kl"]["cut-sft"]["mean_kl"]
        lines += ["", f"Compiled `sft` against uncompiled `cut-sft` (same loss, data, seed): KL "
                  f"{feats['students']['sft']['kl']['mean_kl']} vs "
                  f"{result['kl']['cut-sft']['mean_kl']} ({'identical' if same else 'differ'})."]
    lines += ["", "Loss terms at the first and last step (train_log.jsonl, unweighted):", "",
              "| student | first | last |", "|---|---|---|"]
    for name, s in feats["students"].items():
        lines.append(f"| {name} | {s['last_terms']['first']} | {s['last_terms']['last']} |")
    return lines + [""] + trend_lines(result)


def trend_lines(result: dict) -> list[str]:
    """The budget a cut student would need, from the measured KL trend (steps 9 -> 18, one
    doubling) and the KL of the untrained 27-layer cut (the deepest cut measured, and the
    lowest KL with any accuracy at all here), assuming KL keeps falling as it did per doubling
    of steps: an optimistic extrapolation (the fall slows: 6.35 in the first 9 steps)."""
    feats = result["features"]
    sft = feats["students"].get("sft")
    ref = (feats.get("references") or {}).get("cut27-start")
    if sft is None or ref is None:
        return []
    by_step = {int(k): v for k, v in sft["kl_by_step"].items()}
    drops = {name: round({int(k): v for k, v in s["kl_by_step"].items()}[9]
                         - s["kl"]["mean_kl"], 3) for name, s in feats["students"].items()}
    per_doubling = by_step[9] - by_step[18]
    target, ref_acc = ref["kl"]["mean_kl"], feats["evaluate"]["cut27-start"]["accuracy"]
    doublings = (by_step[18] - target) / per_doubling
    steps = 18 * 2 ** doublings
    sft_s, online_s = sft["time"]["steady_s"], min(
        s["time"]["steady_s"] for n, s in feats["students"].items() if n != "sft")
    feats["budget"] = {"kl_drop_9_to_18": drops, "target_kl": target, "doublings":
                       round(doublings, 2), "steps": round(steps), "examples": round(steps * 8)}
    return [
        "## Budget to lift the cut off zero, from the measured trend", "",
        f"KL fall from step 9 to 18 (one doubling of steps): {drops}. No loss changes the "
        "trend: the feature terms fall (hidden MSE and attention KL both about halve) without "
        "moving the KL to the teacher's outputs beyond SFT's.",
        f"The untrained 27-layer cut is at KL {target} and scores {ref_acc} (the 20-layer one: "
        f"KL {feats['references']['cut20-start']['kl']['mean_kl']}, "
        f"{feats['evaluate']['cut20-start']['accuracy']}): accuracy leaves zero only well "
        f"below KL 1. At SFT's {per_doubling:.2f} nats per doubling, the 10-layer cut would "
        f"need {doublings:.1f} more doublings to reach KL {target}: about {steps:.0f} steps "
        f"of batch 8 ({steps * 8:.0f} examples, {steps * 8 / 69:.0f}x the 69 kept traces), "
        f"{steps * sft_s / 3600:.1f} h of compiled SFT at {sft_s} s/step or "
        f"{steps * online_s / 3600:.1f} h with the online teacher at {online_s} s/step on "
        "this loaded machine; an optimistic bound (the fall slows with steps), and fresh "
        "traces rather than that many epochs over 69 would add the generation time.", ""]


def main() -> None:
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-run", action="store_true", help="Reuse runs/kd_demo.")
    parser.add_argument("--features", type=Path, help="Also train and compare the students of "
                        "this spec (bench/kd_features.yaml).")
    parser.add_argument("--features-only", action="store_true", help="Take the run's numbers "
                        "from the last bench/results/kd_demo.json instead of measuring again.")
    args = parser.parse_args()
    traces = heldout_traces()
    if args.features_only:
        result = json.loads((RESULTS / "kd_demo.json").read_text())
    else:
        result = demo(args.skip_run, traces)
    result["evaluate"], result["intervals"] = accuracy(), intervals()
    for name in STUDENTS:
        manifest = json.loads((OUT / "students" / name / "model" / "manifest.json").read_text())
        result["train"][name]["train_runtime_s"] = manifest.get("train_runtime_s")
    lines = demo_lines(result)
    if args.features:
        result["features"] = features(args.features.resolve(), traces)
        result["features"]["date"] = time.strftime("%Y-%m-%d")
        result["features"]["command"] = ("python bench/bench_kd_demo.py --skip-run --features "
                                         f"{args.features}")
        lines += features_lines(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kd_demo.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "kd_demo.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
