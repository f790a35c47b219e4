"""Stage 3: train the student on the kept traces (TRL SFT, optional LoRA and logit distillation).

The loss covers the assistant turn only (the teacher's reasoning), never the prompt: each record
becomes a conversational prompt-completion pair and is tokenized here the way TRL does it
(`completion_mask`), so truncation is counted exactly and a prompt too long for `max_length`
stops the run instead of being dropped silently by TRL.

    cotdistill train --data runs/filter/sft.jsonl --out runs/student [--lora] [--epochs 2]
    cotdistill train --data sft.jsonl --student runs/cut --teacher runs/teacher --out runs/kd

Core pieces, testable without models: `load_examples` (files -> validated examples),
`tokenize_examples`, `split_eval`, `apply_teacher_weights`, `sft_config`, `lora_config`;
`run_train` adds the edges (models, trainer, saving, train_log.jsonl, manifest.json).
Output: a full fine-tune is a normal model folder in `out`; LoRA leaves the adapter in `out`
(and with `--merge` merged weights in `out/merged`); checkpoints in `out/checkpoints/`.
Under `accelerate launch` (see configs/accelerate_fsdp.yaml) it runs unchanged on many GPUs.
"""

from cotdistill.train.checkpoints import (
    last_checkpoint,
    model_fingerprint,
    reload_finished,
    resumable_checkpoint,
    run_stamp,
    stamp_difference,
    start_checkpoints,
    trim_log,
)
from cotdistill.train.config import CHECKPOINTS, RUN_STAMP, TRAIN_LOG, TrainConfig
from cotdistill.train.data import (
    DataStats,
    Example,
    SftRecord,
    Tokenized,
    apply_teacher_weights,
    format_reasoning,
    load_examples,
    read_chat_template,
    split_eval,
    to_dataset,
    to_example,
    tokenize_example,
    tokenize_examples,
    turn_reasoning,
)
from cotdistill.train.device import (
    compile_layers,
    is_main_process,
    mixed_bf16,
    stage_memory,
    train_dtype,
    use_cuda,
    weights_dtype,
)
from cotdistill.train.prepare import (
    Prepared,
    check_feature_terms,
    check_same_tokenizer,
    check_teachers,
    feature_settings,
    prepare,
)
from cotdistill.train.stage import final_eval_loss, run_train, save_outputs
from cotdistill.train.template_guard import check_reasoning_survives
from cotdistill.train.trainer import (
    build_trainer,
    load_model,
    lora_config,
    quiet_progress,
    sft_config,
    train_log_callback,
)

__all__ = [
    "CHECKPOINTS", "DataStats", "Example", "Prepared", "RUN_STAMP", "SftRecord", "TRAIN_LOG",
    "Tokenized", "TrainConfig", "apply_teacher_weights", "build_trainer", "check_feature_terms",
    "check_reasoning_survives", "check_same_tokenizer", "check_teachers", "compile_layers",
    "feature_settings", "final_eval_loss", "format_reasoning", "is_main_process",
    "last_checkpoint", "load_examples", "load_model", "lora_config", "mixed_bf16",
    "model_fingerprint", "prepare", "quiet_progress", "read_chat_template", "reload_finished",
    "resumable_checkpoint", "run_stamp", "run_train", "save_outputs", "sft_config",
    "split_eval", "stage_memory", "stamp_difference", "start_checkpoints", "to_dataset",
    "to_example", "tokenize_example", "tokenize_examples", "train_dtype", "train_log_callback",
    "trim_log", "turn_reasoning", "use_cuda", "weights_dtype",
]
