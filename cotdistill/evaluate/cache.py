"""Reusing a model's samples: the cache key covers weights, problems and sampling settings."""

from __future__ import annotations

import json
from pathlib import Path

from cotdistill.evaluate.config import EvalSample, EvaluateConfig, ModelRun
from cotdistill.evaluate.sources import WeightsId
from cotdistill.infra.files import read_jsonl, sha256_text, write_jsonl
from cotdistill.prompts import PromptTemplate

# Settings that do not change what a model generates or how a sample is scored.
_NOT_SAMPLE_SETTINGS = {
    "model", "out", "reference", "batch_size", "bootstrap_resamples", "bootstrap_seed",
    "confidence", "calibration_bins", "collapse_below", "failure_examples",
}


def sample_key(config: EvaluateConfig, weights: WeightsId, problems_hash: str,
               template: PromptTemplate) -> str | None:
    """Identity of one model's samples: its weights, the problems, prompt and sampling; None
    (never reused) when nothing identifies the weights."""
    if weights.value is None:
        return None
    settings = config.model_dump(mode="json", exclude=_NOT_SAMPLE_SETTINGS)
    return sha256_text(json.dumps(
        {"settings": settings, "problems": problems_hash, "template": template.hash,
         "model": weights.value}, sort_keys=True,
    ))


def load_cached(folder: Path, name: str, key: str) -> ModelRun | None:
    """A model's samples from an earlier run with the same key (its .json is written last)."""
    meta_path, samples_path = folder / f"{name}.json", folder / f"{name}.jsonl"
    if not meta_path.exists() or not samples_path.exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("key") != key:
        return None
    samples = list(read_jsonl(samples_path, EvalSample))
    return ModelRun(samples, meta["generation_s"], meta["load_s"], meta["peak_memory_mb"],
                    {**meta["extra"], "cached": True})


def save_cached(folder: Path, name: str, key: str, run: ModelRun) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / f"{name}.jsonl", run.samples)
    meta = {"key": key, "generation_s": run.generation_s, "load_s": run.load_s,
            "peak_memory_mb": run.peak_memory_mb, "extra": run.extra}
    tmp = folder / f"{name}.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder / f"{name}.json")
