"""Settings of the train stage, and the names of the files it writes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from cotdistill.config import StrictModel

TRAIN_LOG = "train_log.jsonl"


CHECKPOINTS = "checkpoints"


RUN_STAMP = "run.json"  # beside the checkpoints: the data and config they were made from


TEACHER_KD = ("online", "on-policy", "on-policy-vllm")  # `kd:` modes that load a teacher
MASTER = "master"  # out/master: the fp32 weights a full fine-tune trained, when saved narrower


class TrainConfig(StrictModel):
    data: list[Path] = Field(
        default_factory=list,
        description="sft.jsonl files (chat `messages` ending in the assistant turn) or "
        "`datasets` folders in the same format; an assistant turn's `reasoning_content` (or "
        "`reasoning`) is trained inside <think> markers before its content.",
    )
    student: str | None = Field(
        None, description="Model folder or hub id to train; default: the embedded SmolLM2."
    )
    out: Path | None = Field(None, description="Output directory (model or adapter, logs).")
    lora: bool = Field(False, description="Train a LoRA adapter instead of all weights.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    # Not 0.05: peft drops out each adapted module's input separately, keeping a mask and a
    # copy of it per module; with all-linear targets that made LoRA on SmolLM2-135M peak
    # higher than full fine-tuning (bench/results/train_smollm2.md).
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input "
                                "(each adapted module keeps a mask and a copy of its input).")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["all-linear"],
        description="Module names to adapt, or `all-linear`.",
    )
    merge: bool = Field(False, description="With --lora, also save merged weights in out/merged.")
    teacher: str | None = Field(
        None,
        description="Teacher model for logit distillation (must share the student's tokenizer); "
        "unset: plain SFT.",
    )
    distill_temperature: float = Field(
        2.0, gt=0.0, description="Softmax temperature T of the distillation KL."
    )
    distill_alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of T^2 * KL; CE on the trace gets 1 - alpha."
    )
    kd: Literal["online", "offline-topk", "on-policy", "on-policy-vllm"] | None = Field(
        None,
        description="Logit distillation: online (the --teacher model runs on each batch), "
        "offline-topk (the teacher's top-K logprobs stored by `generate --topk-logprobs`, no "
        "teacher loaded), on-policy (the student samples answers to the prompts and the "
        "--teacher scores them; TRL's GKD loop) or on-policy-vllm (the same with the student's "
        "rollouts on a colocated vLLM engine and the teacher's top-K logprobs from a vLLM "
        "engine or --kd-teacher-server: the trainer holds only the student); unset: online when "
        "--teacher is given, else plain SFT.",
    )
    kd_loss: Literal["forward", "reverse", "jsd"] = Field(
        "forward", description="Online KD divergence: forward KL(p_t||p_s) (the seeds'), "
        "reverse KL(p_s||p_t), or generalized JSD with --kd-beta (cotdistill/losses/)."
    )
    kd_beta: float = Field(
        0.5, gt=0.0, lt=1.0, description="JSD mixture weight beta (m = beta p_t + (1-beta) p_s)."
    )
    kd_chunk_size: int = Field(
        256, gt=0, description="Assistant tokens per chunk of the KD loss: bounds the "
        "(tokens x vocab) fp32 tensors held at once (256 x 151,936 x 4 B = 156 MB each)."
    )
    kd_max_new_tokens: int = Field(
        256, gt=0, description="--kd on-policy: tokens the student samples per prompt."
    )
    kd_sample_temperature: float = Field(
        1.0, gt=0.0, description="--kd on-policy: the student's sampling temperature."
    )
    kd_topk: int = Field(
        20, gt=0, le=20, description="--kd on-policy-vllm: teacher log-probs kept per token (the "
        "top K; vLLM's default limit is 20)."
    )
    kd_rollout_every: int = Field(
        1, gt=0, description="--kd on-policy-vllm: copy the student's weights into the rollout "
        "engine every N optimizer steps (1: every step, fully on-policy)."
    )
    kd_sft_mix: float = Field(
        0.0, ge=0.0, lt=1.0, description="--kd on-policy-vllm: weight of CE on the --data traces "
        "mixed into the loss: (1 - mix) * KD + mix * CE, one batch of traces per micro-batch."
    )
    kd_teacher_server: str | None = Field(
        None, description="--kd on-policy-vllm: URL of a vLLM server serving --teacher (e.g. "
        "http://127.0.0.1:8000); its top-K prompt logprobs replace the in-process teacher engine."
    )
    topk_from: list[Path] = Field(
        default_factory=list,
        description="--kd offline-topk: generate output folders (or their traces.jsonl) whose "
        "topk/ holds the teacher's top-K logprobs.",
    )
    topk_tail: Literal["ignore", "bucket"] = Field(
        "ignore", description="Teacher mass outside the stored K ids: ignore (renormalise over "
        "K) or bucket (one extra outcome matched against the student's mass outside K)."
    )
    topk_on_mismatch: Literal["skip", "error"] = Field(
        "skip", description="An example whose tokens differ from the teacher's sampled ids: "
        "train it with CE only (counted and reported) or stop."
    )
    # Intermediate-representation terms (cotdistill/losses/{hidden,attention,relation}.py),
    # added to the KD/CE loss with these weights. All off by default: each needs an online
    # --teacher and has both models keep every layer's hidden states (attention: also every
    # layer's heads x length^2 weights, and eager attention), and none has been shown to lift
    # a cut student here yet (README, "Feature distillation").
    hidden_weight: float = Field(
        0.0, ge=0.0, description="Weight of the hidden-state (hint) loss over --hidden-layer-map "
        "on assistant tokens, with a learned projection when widths differ (training only, not "
        "saved with the student); 0 = off. Needs --teacher.")
    attention_weight: float = Field(
        0.0, ge=0.0, description="Weight of the attention loss: KL between the teacher's and "
        "student's attention rows of mapped layers, per head, averaged; 0 = off. Loads both "
        "models with eager attention (the only kind that returns the weights).")
    relation_weight: float = Field(
        0.0, ge=0.0, description="Weight of the relational (RKD) loss: distance + 2 x angle "
        "between the batch's sequence representations (Park et al. 2019); 0 = off. Needs "
        "batches of 3 or more sequences.")
    hidden_layer_map: str = Field(
        "uniform", description="Student:teacher layer pairs for the hidden and attention "
        "losses: uniform (each student block i to teacher block round(i*T/S): every depth gets "
        "a hint, the last maps to the last), last, or pairs such as 3:12,6:24 (0 = embeddings).")
    hidden_loss: Literal["mse", "cosine"] = Field(
        "mse", description="Hidden-state distance: mse (FitNets' hint loss, the default) or "
        "cosine (1 - cos: ignores scale, for teachers whose hidden states are much larger).")
    teachers: dict[str, float] = Field(
        default_factory=dict,
        description="Multi-teacher soft targets instead of --teacher: {model: weight} (or "
        "`a=2,b=1`), each teacher's tempered distribution mixed per token with these weights "
        "(normalised) as the KD target (cotdistill/losses/multi_teacher.py). All must share the "
        "student's tokenizer.",
    )
    teacher_weights: dict[str, float] = Field(
        default_factory=dict,
        description="Per-teacher sampling weight, e.g. `big=2,small=0.5`: each record of that "
        "teacher is seen weight times per epoch on average; unnamed teachers get 1.",
    )
    epochs: float = Field(2.0, gt=0.0, description="Training epochs (ignored if max_steps > 0).")
    max_steps: int = Field(-1, description="Optimizer steps; -1 = use epochs.")
    learning_rate: float = Field(2e-5, gt=0.0, description="Peak learning rate.")
    lr_scheduler: str = Field(
        "linear", description="Schedule after warmup: linear, cosine, constant, ..."
    )
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="Fraction of steps warming up.")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.")
    batch_size: int = Field(8, gt=0, description="Sequences per device per micro-batch.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per step.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward (less memory, ~30% slower)."
    )
    max_length: int = Field(
        1024, gt=0, description="Tokens per sequence; longer traces are cut and counted."
    )
    packing: bool = Field(
        False, description="Pack sequences into max_length blocks (best-fit, no cross-attention)."
    )
    padding_free: bool = Field(
        False, description="Concatenate each batch into one unpadded sequence."
    )
    eval_fraction: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of problems held out (all their traces) to report an eval loss.",
    )
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N steps; default: at "
                                   "each save and at the end.")
    save_steps: int = Field(200, gt=0, description="Checkpoint every N steps.")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept (oldest deleted).")
    keep_checkpoints: bool = Field(
        True, description="Keep out/checkpoints once training finished (the last one lets an "
        "identical rerun finish at once); false deletes them then (the model, its fp32 master "
        "and the manifest stay). `cotdistill run` sets false unless told otherwise: its "
        "manifests make reruns free, and each checkpoint holds the optimizer state (1.6 GB for "
        "a 135M model).",
    )
    resume: bool = Field(
        True, description="Continue from the last checkpoint in out/checkpoints if present."
    )
    logging_steps: int = Field(5, gt=0, description="Log loss and tokens/s every N steps.")
    seed: int = Field(0, description="Seed for shuffling, eval split, weights and init.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="bfloat16: bf16 mixed precision (autocast; a full fine-tune keeps "
        "fp32 master weights); float32: no autocast; auto: bfloat16 on GPU, float32 on CPU."
    )
    attn_implementation: str | None = Field(
        None, description="Attention kernel (sdpa, flash_attention_2, eager); default: library's."
    )
    compile: bool = Field(
        False, description="Compile each decoder layer with torch.compile (regional: one graph "
        "reused by every layer; the first step pays the compilation). Needs a C compiler on CPU."
    )
    save_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the saved student (the one it is served in); auto: the "
        "starting student's saved dtype (a cut or copy of the teacher: the teacher's). A full "
        "fine-tune saved narrower than float32 keeps its fp32 master weights in out/master, "
        "which later training from this folder starts from.")
    report_to: Literal["none", "tensorboard", "trackio", "wandb"] = Field(
        "none", description="Tracker TRL reports the losses to: tensorboard (event files in "
        "out/tensorboard/RUN_NAME), trackio (local unless configured otherwise), wandb (its own "
        "login and network); none: train_log.jsonl only.")
    run_name: str | None = Field(
        None, description="Name of the run in the tracker; default: the --out folder's name.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (unsafe).")
    chat_template: Path | None = Field(
        None,
        description="Jinja chat template file to use instead of the student's own (e.g. one "
        "that keeps <think> blocks in assistant turns).",
    )
    reasoning_format: Literal["think", "plain"] = Field(
        "think",
        description="Reasoning traces: think = the thinking inside <think> markers in the "
        "assistant turn; plain = thinking then answer as plain text (survives any template).",
    )

    @field_validator("hidden_layer_map")
    @classmethod
    def _layer_map_syntax(cls, value: str) -> str:
        from cotdistill.losses.hidden import layer_pairs

        layer_pairs(value, 10**6, 10**6)  # syntax only; the layer counts are checked in prepare
        return value.strip()

    @field_validator("teacher_weights", "teachers", mode="before")
    @classmethod
    def _parse_weights(cls, value: Any) -> Any:
        """Accept `a=2,b=0.5` (the generated flag passes one string) or a JSON object."""
        if isinstance(value, list):
            value = ",".join(value)
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        weights = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            name, sep, weight = item.rpartition("=")
            if not sep or not name:
                raise ValueError(f"expected NAME=WEIGHT, got {item!r}")
            weights[name] = float(weight)
        return weights

    @field_validator("teacher_weights", "teachers")
    @classmethod
    def _non_negative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if not weight >= 0 or math.isinf(weight):
                raise ValueError(f"weight of {name!r} must be a finite number >= 0")
        return value
