"""The student's model card: README.md in the train output folder (Hub model-card format).

    write_model_card(out, config, manifest, out / "train_log.jsonl")

The YAML header names the base model, the data, the library and tags; the body the method and
its loss terms, the hyperparameters, the data counts and the final losses. `evaluate` later adds
its measured rows (`model-index`) to the same file (`cotdistill.cards.add_model_index`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotdistill.cards import CARD, table, write_card
from cotdistill.train.config import TrainConfig

# The embedded teacher is a conversion of this Hub model (models.py).
_EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

_HYPERPARAMETERS = (
    "epochs", "max_steps", "learning_rate", "lr_scheduler", "warmup_ratio", "weight_decay",
    "batch_size", "gradient_accumulation_steps", "max_length", "packing", "padding_free",
    "eval_fraction", "seed", "dtype", "save_dtype", "reasoning_format",
)
_LORA = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
_KD = ("distill_temperature", "distill_alpha", "kd_loss", "kd_beta", "kd_max_new_tokens",
       "kd_sample_temperature", "topk_tail", "hidden_weight", "attention_weight",
       "relation_weight", "hidden_layer_map", "hidden_loss")
# Loss terms in train_log.jsonl besides the total.
_TERMS = ("distill_kl", "distill_ce", "mean_token_accuracy")
_DIVERGENCE = {"forward": "KL(p_t || p_s)", "reverse": "KL(p_s || p_t)",
               "jsd": "JSD_beta(p_t, p_s)"}


def hub_name(name: str | None) -> str | None:
    if name is not None and name.startswith("embedded:"):
        return _EMBEDDED_HUB_ID
    return name


def method(config: TrainConfig, manifest: dict[str, Any]) -> list[str]:
    """What was trained and the loss, as the lines of a markdown section."""
    teacher = manifest.get("teacher_model")
    how = "a LoRA adapter" if config.lora else "all weights (full fine-tune)"
    if teacher is None:
        return [f"Supervised fine-tuning of {how} on the teacher's verified traces.", "",
                "Loss: cross-entropy on the assistant tokens only (the prompt is masked)."]
    mode = (manifest.get("kd") or {}).get("mode", "online")
    divergence = _DIVERGENCE[config.kd_loss].replace("beta", f"{config.kd_beta:g}")
    where = {"online": "the teacher runs on each batch",
             "offline-topk": "the teacher's top-K log-probabilities stored by generate",
             "on-policy": "the student samples answers and the teacher scores them (GKD)",
             "on-policy-vllm": "the student samples on vLLM and a vLLM teacher scores its "
                               "top-K"}[mode]
    lines = [f"Logit distillation ({mode}: {where}) of {how} from `{teacher}`.", "",
             f"Loss: `(1 - alpha) * CE + alpha * T^2 * {divergence}` with alpha = "
             f"{config.distill_alpha:g}, T = {config.distill_temperature:g} (p_t, p_s: the "
             "teacher's and student's tempered next-token distributions on the assistant tokens)."]
    terms = [f"{w:g} x {name}" for name, w in (("hidden-state", config.hidden_weight),
                                               ("attention", config.attention_weight),
                                               ("relation (RKD)", config.relation_weight)) if w]
    if terms:
        lines += ["", "Plus feature terms: " + ", ".join(terms) + "."]
    return lines


def final_losses(manifest: dict[str, Any], log_path: Path) -> list[list[Any]]:
    """(measure, value, step) rows: the run's mean loss, the eval loss and the last logged
    value of each loss term."""
    rows: list[list[Any]] = [["train_loss (mean over the run)", manifest.get("train_loss"),
                              manifest["counts"].get("steps")],
                             ["eval_loss", manifest.get("eval_loss"),
                              manifest["counts"].get("steps")]]
    last: dict[str, tuple[Any, Any]] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            for key, value in entry.items():
                if key in ("loss", *_TERMS) or key.startswith(("hidden_", "attention_",
                                                               "relation_")):
                    last[key] = (value, entry.get("step"))
    rows += [[f"{key} (last logged)", value, step] for key, (value, step) in last.items()]
    return [[m, round(v, 4) if isinstance(v, float) else v, s] for m, v, s in rows
            if v is not None]


def model_card(config: TrainConfig, manifest: dict[str, Any], log_path: Path
               ) -> tuple[dict[str, Any], str]:
    distilled = manifest.get("teacher_model") is not None
    meta: dict[str, Any] = {
        "base_model": hub_name(manifest.get("base_model")),
        "datasets": [str(p) for p in config.data],
        "library_name": "peft" if config.lora else "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["cotdistill", "chain-of-thought", "distillation",
                 "knowledge-distillation" if distilled else "sft",
                 *(["lora"] if config.lora else [])],
    }
    settings = config.model_dump(mode="json")
    keys = [*_HYPERPARAMETERS, *(_LORA if config.lora else ()), *(_KD if distilled else ())]
    counts = manifest["counts"]
    outputs = manifest.get("outputs") or {}
    body = [
        "# Distilled student", "",
        f"Trained by `cotdistill train` from `{manifest.get('base_model')}` on "
        + ", ".join(f"`{p}`" for p in config.data) + ".", "",
        "## Method", "", *method(config, manifest), "",
        "## Hyperparameters", "",
        table(["setting", "value"], [[k, f"`{json.dumps(settings[k])}`"] for k in keys]), "",
        "## Data", "",
        f"{counts.get('train_examples')} training examples ({counts.get('eval_examples')} "
        f"held out), {counts.get('tokens')} tokens of which {counts.get('completion_tokens')} "
        f"trained on; {counts.get('truncated')} cut to max_length. {counts.get('steps')} "
        f"optimizer steps in {manifest.get('train_runtime_s')} s on "
        f"{manifest.get('device')}.", "",
        "## Final losses", "",
        table(["measure", "value", "step"], final_losses(manifest, log_path)), "",
        "## Files", "",
        f"Weights saved in {manifest.get('save_dtype')}"
        + (f"; the fp32 master weights it trained in `{Path(outputs['master']).name}/` "
           "(later training from this folder starts there)" if outputs.get("master") else "")
        + ". Measured results (`model-index` in the header, and an Evaluation section) are "
        "added by `cotdistill evaluate`.",
    ]
    return meta, "\n".join(body)


def write_model_card(out: Path, config: TrainConfig, manifest: dict[str, Any],
                     log_path: Path) -> None:
    """README.md in `out` (and in out/merged). Rows an earlier evaluate added go: they measured
    weights this training replaced."""
    meta, body = model_card(config, manifest, log_path)
    write_card(Path(out) / CARD, meta, body)
    merged = (manifest.get("outputs") or {}).get("merged")
    if merged:
        write_card(Path(merged) / CARD, {**meta, "library_name": "transformers",
                                         "tags": [*meta["tags"], "merged"]}, body)
