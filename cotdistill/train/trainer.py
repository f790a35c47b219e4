"""Building the TRL trainer: the model, SFTConfig, LoraConfig, callbacks."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotdistill.train.config import CHECKPOINTS, TrainConfig
from cotdistill.train.data import to_dataset
from cotdistill.train.device import mixed_bf16, train_dtype, use_cuda, weights_dtype
from cotdistill.train.prepare import Prepared, feature_settings


def sft_config(config: TrainConfig, out: Path, has_eval: bool, cuda: bool) -> Any:
    """TRL SFTConfig for this run. Data arrive tokenized with `completion_mask` (see above)."""
    from trl import SFTConfig

    eval_steps = config.eval_steps or config.save_steps
    return SFTConfig(
        output_dir=str(out / CHECKPOINTS),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_checkpointing=config.gradient_checkpointing,
        bf16=mixed_bf16(config, cuda),
        use_cpu=not cuda,
        completion_only_loss=True,
        # Sequences are already cut to max_length; packing still needs the block size.
        max_length=config.max_length if config.packing else None,
        packing=config.packing,
        packing_strategy="bfd",
        padding_free=config.padding_free,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        seed=config.seed,
        data_seed=config.seed,
        report_to=[] if config.report_to == "none" else [config.report_to],
        run_name=run_name(config, out),
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def run_name(config: TrainConfig, out: Path) -> str:
    return config.run_name or Path(out).resolve().name


def tensorboard_dir(config: TrainConfig, out: Path) -> Path:
    """Event files go beside the model (out/tensorboard/RUN), not under its checkpoints."""
    return Path(out) / "tensorboard" / run_name(config, out)


def place_tracker_logs(trainer: Any, config: TrainConfig, out: Path) -> None:
    """Point TensorBoard's callback at `tensorboard_dir` (transformers reads the folder from an
    environment variable or puts it under output_dir/runs/DATE_HOST otherwise)."""
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            callback.logging_dir = str(tensorboard_dir(config, out))


def lora_config(config: TrainConfig) -> Any:
    from peft import LoraConfig

    targets: str | list[str] = config.lora_target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
    )


def train_log_callback(path: Path) -> Any:
    """Appends each log to train_log.jsonl and adds tokens/s to the logs (and progress bar)."""
    from transformers import TrainerCallback

    keys = ("loss", "learning_rate", "grad_norm", "eval_loss", "mean_token_accuracy",
            "distill_kl", "distill_kl_share", "distill_ce", "num_tokens", "epoch", "train_loss",
            "train_runtime")
    # Every feature-distillation term, whatever its name (losses/features.py), train and eval.
    prefixes = tuple(f"{mode}{term}_" for mode in ("", "eval_")
                     for term in ("hidden", "attention", "relation"))

    class TrainLog(TrainerCallback):
        def __init__(self) -> None:
            self.last_time = time.time()
            self.last_tokens = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last_time, self.last_tokens = time.time(), 0.0

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            if not logs or not state.is_world_process_zero:
                return
            now = time.time()
            tokens = logs.get("num_tokens")
            if tokens is not None and "loss" in logs:
                if tokens >= self.last_tokens and now > self.last_time:
                    logs["tokens_per_s"] = round((tokens - self.last_tokens) /
                                                 (now - self.last_time), 1)
                self.last_time, self.last_tokens = now, tokens
            entry = {"step": state.global_step, "time": round(now, 3)}
            entry.update({k: logs[k] for k in (*keys, "tokens_per_s") if k in logs})
            entry.update({k: v for k, v in logs.items() if k.startswith(prefixes)})
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry) + "\n")

    return TrainLog()


def load_model(path: str, config: TrainConfig, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def build_trainer(
    config: TrainConfig, prepared: Prepared, out: Path, callbacks: Sequence[Any] = ()
) -> Any:
    """The SFTTrainer (or its distillation variant) for this run, models loaded."""
    if config.attention_weight > 0 and config.attn_implementation is None:
        print("train: --attention-weight: loading student and teacher with eager attention "
              "(sdpa and flash attention do not return attention weights)")
        config = config.model_copy(update={"attn_implementation": "eager"})
    cuda = use_cuda()
    dtype = train_dtype(config, cuda)
    offline = prepared.offline is not None
    common: dict[str, Any] = {
        "model": load_model(prepared.weights_path, config, weights_dtype(config, cuda)),
        "args": sft_config(config, out, bool(prepared.eval_rows), cuda),
        "train_dataset": to_dataset(prepared.train_rows, 0 if offline else None),
        "eval_dataset": to_dataset(prepared.eval_rows, len(prepared.train_rows) if offline
                                   else None) if prepared.eval_rows else None,
        "processing_class": prepared.tokenizer,
        "peft_config": lora_config(config) if config.lora else None,
        "callbacks": list(callbacks),
    }
    if prepared.teacher_path is None and not offline:
        from trl import SFTTrainer

        return SFTTrainer(**common)
    from cotdistill.train.kd import KDSettings, distillation_trainer_class

    settings = KDSettings(
        temperature=config.distill_temperature, alpha=config.distill_alpha,
        divergence=config.kd_loss, beta=config.kd_beta, vocab_size=len(prepared.tokenizer),
        chunk_size=config.kd_chunk_size, tail=config.topk_tail,
    )
    if offline:
        return distillation_trainer_class()(**common, settings=settings,
                                            topk=prepared.offline.table)
    if config.kd == "on-policy-vllm":
        from cotdistill.train.on_policy_vllm import build_on_policy_vllm_trainer

        return build_on_policy_vllm_trainer(config, prepared, common)
    if prepared.on_policy is not None:
        from datasets import Dataset

        from cotdistill.train.on_policy import on_policy_args, on_policy_trainer_class

        common["args"] = on_policy_args(
            common["args"], max_new_tokens=config.kd_max_new_tokens,
            sample_temperature=config.kd_sample_temperature, max_length=config.max_length)
        common["train_dataset"] = Dataset.from_list(prepared.on_policy["train"])
        common["eval_dataset"] = (Dataset.from_list(prepared.on_policy["eval"])
                                  if prepared.on_policy["eval"] else None)
        return on_policy_trainer_class()(
            **common, settings=settings,
            teacher_model=load_model(prepared.teacher_path, config, dtype))
    if config.teachers:
        from cotdistill.losses.multi_teacher import teacher_mixture_class
        from cotdistill.models import resolve_model

        teacher_model = teacher_mixture_class()(
            [load_model(resolve_model(name)[0], config, dtype) for name in config.teachers],
            list(config.teachers.values()), temperature=config.distill_temperature,
            vocab_size=len(prepared.tokenizer))
    else:
        teacher_model = load_model(prepared.teacher_path, config, dtype)
    features = None
    if feature_settings(config).active:
        from cotdistill.losses.features import FeatureDistiller

        features = FeatureDistiller.build(feature_settings(config), common["model"].config,
                                          teacher_model.config)
    return distillation_trainer_class()(
        **common, settings=settings, teacher_model=teacher_model, features=features,
    )


def quiet_progress(trainer: Any) -> None:
    """Keep the Trainer's step bar but not the metrics dict it prints every `logging_steps`
    (the same figures are in train_log.jsonl; the quiet terminal has one line per stage)."""
    from transformers.trainer_callback import ProgressCallback

    class StepBar(ProgressCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kwargs: Any) -> None:
            return None

    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StepBar)
