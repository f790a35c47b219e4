"""Checks and preparation before training: tokenizers, teachers, feature losses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.train.config import TrainConfig
from cotdistill.train.data import (
    DataStats,
    Tokenized,
    apply_teacher_weights,
    format_reasoning,
    load_examples,
    read_chat_template,
    split_eval,
    tokenize_examples,
)
from cotdistill.train.template_guard import check_reasoning_survives

# ---------------------------------------------------------------- edges


def check_same_tokenizer(student_tok: Any, teacher_tok: Any, student_cfg: Any,
                         teacher_cfg: Any, teacher: str) -> None:
    """Logit distillation compares distributions over one vocabulary, token id by token id."""
    problems = []
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        problems.append("different vocabularies")
    for name in ("eos_token", "bos_token", "pad_token"):
        if getattr(student_tok, name) != getattr(teacher_tok, name):
            problems.append(f"different {name}")
    # Output sizes may differ: embedding matrices are often padded past the tokenizer (Qwen2.5
    # 7B: 152,064 rows, 0.5B: 151,936, both for 151,665 tokens); the loss cuts both to it.
    for who, cfg in (("student", student_cfg), ("teacher", teacher_cfg)):
        rows = cfg.get_text_config().vocab_size
        if rows < len(student_tok):
            problems.append(f"the {who} outputs {rows} logits for {len(student_tok)} tokens")
    if problems:
        raise InputError(
            "teacher and student must share a tokenizer for logit distillation: "
            + "; ".join(problems),
            field="teacher", file=teacher,
        )


@dataclass
class Prepared:
    """Everything checked and tokenized before any model weights are loaded."""

    student_path: str
    student_name: str
    teacher_path: str | None
    teacher_name: str | None
    tokenizer: Any
    stats: DataStats
    train_rows: list[Tokenized]
    eval_rows: list[Tokenized]
    offline: Any = None  # distill.OfflineKD with --kd offline-topk
    on_policy: Any = None  # --kd on-policy(-vllm): {"train": [{"messages"|"prompt": ...}], ...}
    weights_path: str = ""  # where the student's weights load from: its fp32 master if it has one
    save_dtype: str = "float32"  # what the trained student is saved (and served) in

    def __post_init__(self) -> None:
        self.weights_path = self.weights_path or self.student_path


def starting_weights(student_path: str, lora: bool) -> str:
    """The folder a full fine-tune loads: the student's fp32 master (out/master, left by an
    earlier train that saved narrower) when there is one, so every round of training continues
    from the weights that were trained, not from their bf16 rounding. LoRA trains none of the
    base weights: it loads the folder that is served, which its adapter then names."""
    from cotdistill.train.config import MASTER

    master = Path(student_path) / MASTER
    if not lora and (master / "config.json").is_file():
        return str(master)
    return student_path


_SAVED_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


def saved_dtype(path: str | None) -> str | None:
    """The dtype a model is stored in: its safetensors headers, else its config's `dtype`."""
    if path is None:
        return None
    from cotdistill.models import saved_dtypes

    folder = Path(path)
    if folder.is_dir():
        found = {_SAVED_NAMES.get(d) for d in saved_dtypes(folder)}
        if len(found) == 1 and None not in found:
            return found.pop()
    try:
        from transformers import AutoConfig

        value = AutoConfig.from_pretrained(path).get_text_config().dtype
    except (OSError, ValueError):
        return None
    name = str(value).removeprefix("torch.") if value is not None else None
    return name if name in _SAVED_NAMES.values() else None


def resolve_save_dtype(config: TrainConfig, student_path: str, teacher_path: str | None) -> str:
    """--save-dtype auto: the starting student's stored dtype (a copy or cut of the teacher
    keeps the teacher's), else the teacher's, else float32."""
    if config.save_dtype != "auto":
        return config.save_dtype
    return saved_dtype(student_path) or saved_dtype(teacher_path) or "float32"


def prepare(config: TrainConfig) -> Prepared:
    """Read, validate and tokenize the data; check the models' tokenizers. No weights loaded."""
    from transformers import AutoConfig, AutoTokenizer

    from cotdistill.models import load_pretrained, resolve_model

    check_tracker(config)
    from cotdistill.train.on_policy_vllm import check_on_policy_vllm

    check_on_policy_vllm(config)  # before any model or engine loads
    examples = load_examples(config.data)
    student_path, student_name = resolve_model(config.student)
    tokenizer = load_pretrained(AutoTokenizer, student_path, config.trust_remote_code, "student")
    if config.chat_template is not None:
        tokenizer.chat_template = read_chat_template(config.chat_template)
    if not tokenizer.chat_template:
        raise InputError("the student's tokenizer has no chat template", field="student",
                         file=student_path)
    examples = format_reasoning(examples, config.reasoning_format)
    # Tokenized before the model checks: the template guard reads the rows it trains on.
    rows, stats = tokenize_examples(tokenizer, examples, config.max_length)
    check_reasoning_survives(tokenizer, examples, config.chat_template or student_path, rows)
    teacher_path = teacher_name = None
    offline = config.kd == "offline-topk"
    if offline and config.packing:
        raise InputError("--kd offline-topk cannot pack sequences (rows must stay whole and in "
                         "order); use --padding-free instead", field="packing")
    if config.kd in ("online", "on-policy") and config.teacher is None:
        raise InputError(f"--kd {config.kd} needs --teacher", field="teacher")
    if offline and config.kd_loss != "forward":
        raise InputError("--kd offline-topk computes forward KL over the stored top-K ids; "
                         "--kd-loss reverse/jsd need the teacher's full distribution",
                         field="kd_loss")
    if config.teacher is not None and not offline:
        teacher_path, teacher_name = resolve_model(config.teacher)
        remote = config.trust_remote_code
        check_same_tokenizer(
            tokenizer,
            load_pretrained(AutoTokenizer, teacher_path, remote, "teacher"),
            load_pretrained(AutoConfig, student_path, remote, "student"),
            load_pretrained(AutoConfig, teacher_path, remote, "teacher"),
            teacher_path,
        )
    if config.teachers:
        teacher_path, teacher_name = check_teachers(config, tokenizer, student_path)
    check_feature_terms(config, student_path, teacher_path)
    train_rows, eval_rows = split_eval(rows, config.eval_fraction, config.seed)
    train_rows = apply_teacher_weights(train_rows, config.teacher_weights, config.seed)
    kd = None
    if offline:
        from cotdistill.train.offline_kd import prepare_offline

        kd = prepare_offline(config.topk_from, tokenizer, [*train_rows, *eval_rows],
                             config.topk_on_mismatch)
        teacher_name = kd.meta.get("teacher") or kd.meta.get("tokenizer") or "stored top-k"
    on_policy = None
    if config.kd in ("on-policy", "on-policy-vllm"):
        # Only the prompts matter: the student answers them itself at every step.
        held = {r.problem_id for r in eval_rows}
        on_policy = {part: [{"messages": e.prompt + e.completion} if config.kd == "on-policy"
                            else {"prompt": e.prompt} for e in examples
                            if (e.problem_id in held) == (part == "eval")]
                     for part in ("train", "eval")}
    return Prepared(student_path, student_name, teacher_path, teacher_name, tokenizer, stats,
                    train_rows, eval_rows, kd, on_policy,
                    weights_path=starting_weights(student_path, config.lora),
                    save_dtype=resolve_save_dtype(config, student_path, teacher_path))


# --report-to -> the packages transformers' callback needs (any one of them).
_TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "trackio": ("trackio",),
                     "wandb": ("wandb",)}


def check_tracker(config: TrainConfig) -> None:
    """A tracker whose package is missing stops here, not after the data and models load."""
    import importlib.util

    wanted = _TRACKER_PACKAGES.get(config.report_to, ())
    if wanted and not any(importlib.util.find_spec(name) for name in wanted):
        raise InputError(f"--report-to {config.report_to} needs the {wanted[0]!r} package "
                         f"(pip install {wanted[0]}), or --report-to none", field="report_to")


def feature_settings(config: TrainConfig) -> Any:
    """losses.features.FeatureSettings from the config's hidden_/attention_/relation_ keys."""
    from cotdistill.losses.features import FeatureSettings

    return FeatureSettings(
        hidden_weight=config.hidden_weight, attention_weight=config.attention_weight,
        relation_weight=config.relation_weight, hidden_layer_map=config.hidden_layer_map,
        hidden_loss=config.hidden_loss)


def check_feature_terms(config: TrainConfig, student_path: str, teacher_path: str | None
                        ) -> None:
    """The hidden/attention/relation keys against the mode and both models' configs (no
    weights loaded): InputError naming the field."""
    from cotdistill.losses.attention import EXPOSES_WEIGHTS
    from cotdistill.losses.features import check_layer_map

    settings = feature_settings(config)
    if not settings.active:
        return
    field_name = next(k for k in ("hidden_weight", "attention_weight", "relation_weight")
                      if getattr(config, k) > 0)
    if teacher_path is None or config.kd not in (None, "online"):
        raise InputError("hidden/attention/relation distillation needs an online teacher "
                         "(--teacher, --kd online)", field=field_name)
    if (config.attention_weight > 0 and config.attn_implementation
            and config.attn_implementation not in EXPOSES_WEIGHTS):
        raise InputError(f"--attention-weight needs attention weights, which only "
                         f"{'/'.join(EXPOSES_WEIGHTS)} attention returns, not "
                         f"{config.attn_implementation}", field="attn_implementation")
    from transformers import AutoConfig

    from cotdistill.models import load_pretrained

    remote = config.trust_remote_code
    try:
        check_layer_map(settings, load_pretrained(AutoConfig, student_path, remote, "student"),
                        load_pretrained(AutoConfig, teacher_path, remote, "teacher"))
    except ValueError as exc:
        raise InputError(str(exc), field="hidden_layer_map") from None


def check_teachers(config: TrainConfig, tokenizer: Any, student_path: str
                   ) -> tuple[str, str]:
    """`teachers`: the mode, the weights and every teacher's tokenizer, before any weights load.

    Returns (first teacher's path, the names joined) to stand for the mixture downstream.
    """
    from transformers import AutoConfig, AutoTokenizer

    from cotdistill.models import load_pretrained, resolve_model

    if config.teacher is not None:
        raise InputError("give --teacher or teachers, not both", field="teachers")
    if config.kd not in (None, "online"):
        raise InputError("teachers mixes online teachers' distributions; --kd must be online",
                         field="teachers")
    if not sum(config.teachers.values()) > 0:
        raise InputError("the teachers' weights sum to 0", field="teachers")
    if feature_settings(config).active:
        raise InputError("hidden/attention/relation terms need a single --teacher",
                         field="teachers")
    remote = config.trust_remote_code
    paths = []
    for name in config.teachers:
        path, _ = resolve_model(name)
        check_same_tokenizer(tokenizer, load_pretrained(AutoTokenizer, path, remote, "teacher"),
                             load_pretrained(AutoConfig, student_path, remote, "student"),
                             load_pretrained(AutoConfig, path, remote, "teacher"), path)
        paths.append(path)
    return paths[0], ", ".join(f"{n} ({w:g})" for n, w in config.teachers.items())
