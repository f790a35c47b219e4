"""The train stage: `run_train` and what it saves."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_file, write_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.infra.logs import is_quiet
from cotdistill.train.card import write_model_card
from cotdistill.train.checkpoints import (
    is_finished,
    reload_finished,
    resumable_checkpoint,
    run_stamp,
    start_checkpoints,
    step_of,
    trim_log,
)
from cotdistill.train.config import MASTER, TRAIN_LOG, TrainConfig
from cotdistill.train.device import (
    compile_layers,
    is_main_process,
    stage_memory,
    train_dtype,
    use_cuda,
)
from cotdistill.train.prepare import prepare
from cotdistill.train.trainer import (
    build_trainer,
    place_tracker_logs,
    quiet_progress,
    tensorboard_dir,
    train_log_callback,
)


@locks_output("train", main_rank_only=True)
def run_train(config: TrainConfig) -> dict[str, Any]:
    """Train per `config`; writes the model/adapter, train_log.jsonl, manifest.json (last)."""
    started = time.time()
    if config.out is None:
        raise InputError("train needs --out", field="out")
    if config.merge and not config.lora:
        print("train: --merge only matters with --lora; a full fine-tune is saved whole")
    prepared = prepare(config)  # every input check happens before a model is loaded
    stats, train_rows, eval_rows = prepared.stats, prepared.train_rows, prepared.eval_rows
    if stats.truncated:
        print(f"train: {stats.truncated} of {stats.records} records cut to max_length "
              f"{config.max_length} ({stats.truncated_tokens} tokens dropped)")

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    main = is_main_process()
    stamp = run_stamp(config)
    resume_from, stale = resumable_checkpoint(out, stamp)
    if not config.resume and resume_from is not None:
        resume_from, stale = None, "--no-resume was given"
    log_path = out / TRAIN_LOG
    if main:
        (out / "manifest.json").unlink(missing_ok=True)  # incomplete until this run finishes
        start_checkpoints(out, stamp, stale)
        if resume_from is None:
            log_path.unlink(missing_ok=True)
        else:
            trim_log(log_path, step_of(resume_from))
            print(f"train: resuming from {resume_from}")

    tokenizer, teacher_name, cuda = prepared.tokenizer, prepared.teacher_name, use_cuda()
    # Measured over this stage only: inside one `cotdistill run`, each student gets its own.
    with stage_memory(cuda) as memory:
        trainer = build_trainer(config, prepared, out, [train_log_callback(log_path)])
        place_tracker_logs(trainer, config, out)
        if config.compile:
            compile_layers(trainer.model)
        if is_quiet():
            quiet_progress(trainer)
        if resume_from is not None and is_finished(resume_from):
            metrics = reload_finished(trainer, resume_from, log_path)
        else:
            metrics = trainer.train(
                resume_from_checkpoint=str(resume_from) if resume_from else None
            ).metrics
        eval_loss = final_eval_loss(trainer) if eval_rows else None
        outputs = save_outputs(trainer, tokenizer, out, config, prepared.save_dtype)
    if not trainer.is_world_process_zero():
        return {}  # rank 0 writes the manifest

    train_tokens = _logged_tokens(log_path)
    train_seconds = metrics.get("train_runtime")
    manifest = write_manifest(
        out,
        stage="train",
        config=config,
        inputs={str(p): sha256_file(Path(p)) for p in config.data},
        counts={
            "records": stats.records,
            "train_examples": len(train_rows),
            "eval_examples": len(eval_rows),
            "by_teacher": stats.by_teacher,
            "truncated": stats.truncated,
            "truncated_tokens": stats.truncated_tokens,
            "tokens": stats.tokens,
            "completion_tokens": stats.completion_tokens,
            "steps": trainer.state.global_step,
            "new_steps": trainer.state.global_step - (step_of(resume_from) if resume_from else 0),
        },
        started=started,
        extra={
            "base_model": prepared.student_name,
            "teacher_model": teacher_name,
            "mode": "lora" if config.lora else "full",
            "distillation": teacher_name is not None,
            "kd": None if teacher_name is None else {
                "mode": config.kd or "online", "loss": config.kd_loss,
                "feature_terms": {k: getattr(config, k) for k in (
                    "hidden_weight", "attention_weight", "relation_weight") if getattr(config, k)},
                **(prepared.offline.summary() if prepared.offline is not None else {})},
            "outputs": outputs,
            "resumed_from": str(resume_from) if resume_from else None,
            "train_loss": metrics.get("train_loss"),
            "eval_loss": eval_loss,
            "train_runtime_s": train_seconds,
            "tokens_per_s": round(train_tokens / train_seconds, 2)
            if train_tokens and train_seconds else None,
            "device": "cuda" if cuda else "cpu",
            "dtype": str(train_dtype(config, cuda)).removeprefix("torch."),
            "save_dtype": prepared.save_dtype,
            "started_from": prepared.weights_path,
            "tracker": None if config.report_to == "none" else {
                "report_to": config.report_to, "run_name": trainer.args.run_name,
                **({"logdir": str(tensorboard_dir(config, out))}
                   if config.report_to == "tensorboard" else {})},
            "peak_memory_bytes": memory.peak_bytes,
            "peak_memory_what": memory.what,
            "checkpoints": "kept" if config.keep_checkpoints else "deleted once finished",
        },
    )
    if not config.keep_checkpoints:
        import shutil

        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    write_model_card(out, config, manifest, log_path)
    loss = metrics.get("train_loss")
    print(f"train: {trainer.state.global_step} steps"
          + (f", loss {loss:.4f}" if loss is not None else "")
          + (f", eval loss {eval_loss:.4f}" if eval_loss is not None else "")
          + f" in {time.time() - started:.0f} s -> {out}")
    return manifest


def final_eval_loss(trainer: Any) -> float:
    """The eval loss at the last step: logged already if an eval fell there, else computed."""
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry and entry.get("step") == step:
            return entry["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def _logged_tokens(log_path: Path) -> float | None:
    tokens = None
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            tokens = json.loads(line).get("num_tokens", tokens)
    return tokens


def save_outputs(trainer: Any, tokenizer: Any, out: Path, config: TrainConfig,
                 save_dtype: str = "float32") -> dict[str, str]:
    """Full fine-tune: a model folder in `out`, in `save_dtype` (the dtype it is served in),
    with the fp32 weights it trained in out/master when that is narrower. LoRA: the adapter
    there (fp32, small), merged in out/merged in `save_dtype`."""
    import shutil

    master = out / MASTER
    narrower = save_dtype != "float32" and not config.lora
    # TRL turns the KV cache off for training; the saved model generates with it, as its base.
    config_of = getattr(trainer.accelerator.unwrap_model(trainer.model), "config", None)
    if config_of is not None and hasattr(config_of, "use_cache"):
        config_of.use_cache = True
    # every rank takes part (sharded weights are gathered)
    trainer.save_model(str(master if narrower else out))
    if not trainer.is_world_process_zero():
        return {}
    # The Trainer also pickles its arguments there; the manifest holds the config instead.
    for folder in (out, master):
        (folder / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(str(out))
    if not config.lora:
        if not narrower:
            # A master left by an earlier run would be trained from next time: it is stale now.
            shutil.rmtree(master, ignore_errors=True)
            return {"model": str(out)}
        tokenizer.save_pretrained(str(master))
        served = _reload(master, save_dtype, config.trust_remote_code)
        served.save_pretrained(str(out), safe_serialization=True)
        return {"model": str(out), "master": str(master)}
    outputs = {"adapter": str(out)}
    if config.merge:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.to(_torch_dtype(save_dtype)).save_pretrained(str(out / "merged"),
                                                             safe_serialization=True)
        tokenizer.save_pretrained(str(out / "merged"))
        outputs["merged"] = str(out / "merged")
    return outputs


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def _reload(folder: Path, dtype: str, trust_remote_code: bool) -> Any:
    """The saved fp32 model loaded in `dtype`: the library casts (and ties) as for any load."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=_torch_dtype(dtype), trust_remote_code=trust_remote_code)
