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

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from cotdistill.config import StrictModel
from cotdistill.errors import InputError
from cotdistill.locking import locks_output
from cotdistill.logs import is_quiet
from cotdistill.reasoning import split_reasoning
from cotdistill.records import Message, Record, sha256_file, write_manifest
from cotdistill.traces_in import sft_records

TRAIN_LOG = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
RUN_STAMP = "run.json"  # beside the checkpoints: the data and config they were made from


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
    kd: Literal["online", "offline-topk", "on-policy"] | None = Field(
        None,
        description="Logit distillation: online (the --teacher model runs on each batch), "
        "offline-topk (the teacher's top-K logprobs stored by `generate --topk-logprobs`, no "
        "teacher loaded) or on-policy (the student samples answers to the prompts and the "
        "--teacher scores them; TRL's GKD loop); unset: online when --teacher is given, else "
        "plain SFT.",
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


class SftRecord(Record):
    """One line of the filter's sft.jsonl."""

    messages: list[Message]
    problem_id: str | None = None
    sample_index: int | None = None
    teacher: str | None = None
    # Reasoning traces (written by the filter, see cotdistill/reasoning.py); None otherwise.
    reasoning: str | None = None
    answer_text: str | None = None


@dataclass
class Example:
    """A training pair: everything before the last message is the prompt, the last the target."""

    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    teacher: str
    problem_id: str
    file: str
    line: int
    reasoning: str | None = None  # the thinking in the assistant turn, if a reasoning trace
    sample_index: int | None = None  # with problem_id, the key of stored top-k rows
    answer_text: str | None = None


@dataclass
class Tokenized:
    input_ids: list[int]
    completion_mask: list[int]
    teacher: str
    problem_id: str
    truncated_tokens: int = 0
    sample_index: int | None = None


@dataclass
class DataStats:
    records: int = 0
    truncated: int = 0
    truncated_tokens: int = 0
    tokens: int = 0
    completion_tokens: int = 0
    by_teacher: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------- data (no models needed)


def to_example(record: SftRecord, file: str, line: int) -> Example:
    """Split a record into prompt and completion; a record without an answer is an error."""
    messages = [m.model_dump() for m in record.messages]
    if not messages or messages[-1]["role"] != "assistant":
        raise InputError(
            "the last message must be the assistant turn (the trace to learn)",
            file=file, line=line, field="messages",
        )
    if len(messages) < 2:
        raise InputError("no prompt before the assistant turn", file=file, line=line,
                         field="messages")
    if not messages[-1]["content"].strip():
        raise InputError("the assistant turn is empty", file=file, line=line,
                         field="messages.content")
    reasoning, answer_text = turn_reasoning(record, messages[-1]["content"])
    return Example(
        prompt=messages[:-1],
        completion=messages[-1:],
        teacher=record.teacher or "unknown",
        problem_id=record.problem_id or f"{file}:{line}",
        file=file,
        line=line,
        reasoning=reasoning,
        answer_text=answer_text,
        sample_index=record.sample_index,
    )


def turn_reasoning(record: SftRecord, content: str) -> tuple[str | None, str | None]:
    """(thinking, answer) of the assistant turn: the filter's fields when it wrote them, else
    read from the turn itself.

    Chat datasets and raw traces of other tools carry their thinking only inside the turn
    (`<think>` markers, or `reasoning_content` folded in by `records.Message`); reading it here
    lets the template guard and `reasoning_format: plain` treat them like the filter's output.
    """
    if record.reasoning is not None:
        return record.reasoning, record.answer_text
    split = split_reasoning(content)
    if split.reasoning is None:
        return None, None
    return split.reasoning, split.answer_text


def _rows(path: Path) -> Iterable[tuple[str, int, Any]]:
    """(file, line, raw) for a jsonl file, a folder of them, or a `datasets` folder."""
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield str(path), lineno, line
        return
    if not path.is_dir():
        raise InputError("no such file or folder", file=path, field="data")
    if any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        from datasets import DatasetDict, load_from_disk

        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if "train" not in dataset:
                raise InputError("dataset has no 'train' split", file=path, field="data")
            dataset = dataset["train"]
        for index, row in enumerate(dataset, start=1):
            yield str(path), index, row
        return
    files = sorted(path.glob("*.jsonl"))
    if not files:
        raise InputError("folder holds neither a `datasets` dataset nor .jsonl files", file=path,
                         field="data")
    for file in files:
        yield from _rows(file)


def load_examples(paths: Sequence[Path]) -> list[Example]:
    """Read and validate every record; the first bad one raises InputError naming its line."""
    if not paths:
        raise InputError("train needs --data (sft.jsonl files or a datasets folder)",
                         field="data")
    examples = []
    for path in paths:
        for file, line, raw in _rows(Path(path)):
            # Traces (ours, or another tool's: see traces_in) become prompt + completion here.
            for row in sft_records(raw, file, line):
                examples.append(to_example(_validate_row(row, file, line), file, line))
    if not examples:
        raise InputError("no training records", file=", ".join(map(str, paths)), field="data")
    return examples


def _validate_row(row: dict[str, Any], file: str, line: int) -> SftRecord:
    from pydantic import ValidationError

    try:
        return SftRecord.model_validate(row)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InputError(first["msg"], file=file, line=line,
                         field=".".join(str(p) for p in first["loc"])) from exc


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_example(tokenizer: Any, example: Example, max_length: int) -> Tokenized:
    """Chat-template the pair as TRL does; mask the prompt; cut at max_length (keep start).

    A prompt that fills max_length leaves nothing to learn; TRL would drop it silently, so it
    is an error here naming the record.
    """
    prompt_ids = tokenizer.apply_chat_template(
        example.prompt, tokenize=True, return_dict=True, add_generation_prompt=True
    )["input_ids"]
    full_ids = tokenizer.apply_chat_template(
        example.prompt + example.completion, tokenize=True, return_dict=True
    )["input_ids"]
    # Some templates render a prompt alone differently; the completion starts where they part.
    prompt_len = _common_prefix(prompt_ids, full_ids)
    if prompt_len >= max_length:
        raise InputError(
            f"the prompt is {prompt_len} tokens, max_length is {max_length}: nothing of the "
            "answer would be trained; raise --max-length or shorten the prompt",
            file=example.file, line=example.line, field="messages",
        )
    mask = [0] * prompt_len + [1] * (len(full_ids) - prompt_len)
    cut = max(len(full_ids) - max_length, 0)
    return Tokenized(
        input_ids=full_ids[:max_length],
        completion_mask=mask[:max_length],
        teacher=example.teacher,
        problem_id=example.problem_id,
        truncated_tokens=cut,
        sample_index=example.sample_index,
    )


def read_chat_template(path: Path) -> str:
    """A Jinja chat template file (`--chat-template`), read before any model loads."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read the chat template: {exc}", file=path,
                         field="chat_template") from exc
    if "{%" not in text and "{{" not in text:
        raise InputError("not a Jinja chat template", file=path, field="chat_template")
    return text


def format_reasoning(examples: Sequence[Example], fmt: str) -> list[Example]:
    """`plain`: a reasoning trace's assistant turn becomes thinking then answer, no markers.

    `think` leaves the turn as the filter wrote it (the thinking inside `<think>` markers).
    """
    if fmt == "think":
        return list(examples)
    out = []
    for e in examples:
        if e.reasoning is None:
            out.append(e)
            continue
        text = f"{e.reasoning}\n\n{e.answer_text or ''}".strip()
        out.append(replace(e, completion=[{"role": "assistant", "content": text}]))
    return out


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def check_reasoning_survives(tokenizer: Any, examples: Sequence[Example],
                             template_source: Path | str,
                             rows: Sequence[Tokenized] | None = None) -> None:
    """Every record whose assistant turn carries thinking must keep it in the trained
    (unmasked) tokens once rendered through the chat template.

    Several templates (DeepSeek-R1 distills', Qwen3's for earlier turns) drop `<think>` blocks
    from assistant turns: training would then teach the student to skip its thinking. Each
    record is checked, not a sample: a template may drop the thinking only from some turns,
    and the records may come from several sources. `rows` (the same examples tokenized) spare
    a second rendering of every record that was not cut at max_length.
    """
    if rows is not None and len(rows) != len(examples):
        raise ValueError(f"{len(rows)} tokenized rows for {len(examples)} examples")
    lost = [e for i, e in enumerate(examples)
            if e.reasoning and not _thinking_trained(
                tokenizer, e, rows[i] if rows is not None else None)]
    if not lost:
        return
    named = ", ".join(f"{e.file}:{e.line}" for e in lost[:3]) + (", ..." if len(lost) > 3 else "")
    carrying = sum(bool(e.reasoning) for e in examples)
    raise InputError(
        "the student's chat template drops the thinking from the assistant turn, so the "
        "student would learn to skip it; pass a template that keeps it (--chat-template "
        f"FILE) or train the thinking as plain text (reasoning_format: plain); {len(lost)} "
        f"of {carrying} records with thinking lose it when rendered ({named})",
        file=template_source, field="chat_template",
    )


def _thinking_trained(tokenizer: Any, example: Example, row: Tokenized | None) -> bool:
    """Whether the example's thinking is in its trained tokens (rendered again, uncut, when
    `row` is missing or was cut at max_length)."""
    if row is None or row.truncated_tokens:
        row = tokenize_example(tokenizer, example, max_length=1 << 30)
    trained = tokenizer.decode(
        [t for t, m in zip(row.input_ids, row.completion_mask, strict=True) if m]
    )
    return _squeeze(example.reasoning or "") in _squeeze(trained)


def tokenize_examples(
    tokenizer: Any, examples: Sequence[Example], max_length: int
) -> tuple[list[Tokenized], DataStats]:
    rows = [tokenize_example(tokenizer, e, max_length) for e in examples]
    stats = DataStats(
        records=len(rows),
        truncated=sum(r.truncated_tokens > 0 for r in rows),
        truncated_tokens=sum(r.truncated_tokens for r in rows),
        tokens=sum(len(r.input_ids) for r in rows),
        completion_tokens=sum(sum(r.completion_mask) for r in rows),
        by_teacher=dict(Counter(r.teacher for r in rows)),
    )
    return rows, stats


def split_eval(
    rows: Sequence[Tokenized], fraction: float, seed: int
) -> tuple[list[Tokenized], list[Tokenized]]:
    """Hold out whole problems (all their traces), so no eval problem is seen in training."""
    if fraction <= 0:
        return list(rows), []
    problems = sorted({r.problem_id for r in rows})
    if len(problems) < 2:
        raise InputError("eval_fraction needs at least two distinct problems in the data",
                         field="eval_fraction")
    random.Random(seed).shuffle(problems)
    held = set(problems[: min(max(1, round(fraction * len(problems))), len(problems) - 1)])
    return [r for r in rows if r.problem_id not in held], [r for r in rows if r.problem_id in held]


def apply_teacher_weights(
    rows: Sequence[Tokenized], weights: dict[str, float], seed: int
) -> list[Tokenized]:
    """Repeat each row about `weight` times (whole copies plus a seeded coin for the rest).

    Done on the dataset rather than in a sampler so it composes with packing, padding-free
    batching and several processes unchanged.
    """
    if not weights:
        return list(rows)
    present = {r.teacher for r in rows}
    unknown = sorted(set(weights) - present)
    if unknown:
        raise InputError(
            f"no records from teacher(s) {unknown}; teachers in the data: {sorted(present)}",
            field="teacher_weights",
        )
    rng = random.Random(seed)
    out: list[Tokenized] = []
    for row in rows:
        weight = weights.get(row.teacher, 1.0)
        copies = int(weight) + (rng.random() < weight - int(weight))
        out.extend([row] * copies)
    if not out:
        raise InputError("the teacher weights leave no training records", field="teacher_weights")
    return out


def to_dataset(rows: Sequence[Tokenized], kd_first_row: int | None = None) -> Any:
    """With `kd_first_row`, a `kd_row` column numbers the rows from it (offline top-k table)."""
    from datasets import Dataset

    columns: dict[str, Any] = {
        "input_ids": [r.input_ids for r in rows],
        "completion_mask": [r.completion_mask for r in rows],
    }
    if kd_first_row is not None:
        columns["kd_row"] = list(range(kd_first_row, kd_first_row + len(rows)))
    return Dataset.from_dict(columns)


# ---------------------------------------------------------------- library configs


def use_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def mixed_bf16(config: TrainConfig, cuda: bool) -> bool:
    """bf16 autocast (`bf16=True`): asked for, or by default on GPU."""
    return config.dtype == "bfloat16" or (config.dtype == "auto" and cuda)


def train_dtype(config: TrainConfig, cuda: bool) -> Any:
    """The compute dtype: bfloat16 under mixed precision, else float32."""
    import torch

    return torch.bfloat16 if mixed_bf16(config, cuda) else torch.float32


def weights_dtype(config: TrainConfig, cuda: bool) -> Any:
    """The dtype the student's weights are loaded (and updated) in.

    A full fine-tune keeps fp32 master weights under bf16 autocast: AdamW steps on bf16
    parameters round away most updates at lr 2e-5 (bf16 keeps 8 bits of mantissa). LoRA's
    base weights are frozen, so bf16 there only saves memory; peft keeps the adapters in fp32.
    """
    import torch

    if config.lora and mixed_bf16(config, cuda):
        return torch.bfloat16
    return torch.float32


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
        report_to=[],
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


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


# Keys that change how often things are saved or logged, or where, but not the weights.
_NOT_IN_STAMP = ("data", "out", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
                 "resume", "merge", "compile")


def model_fingerprint(model: str | None) -> str | None:
    """A cheap identity for a local model folder: each top-level file's name, size and three
    1 MiB samples (a re-cut or retrained start at the same path differs); None for hub ids."""
    import hashlib

    if model is None or not Path(model).is_dir():
        return None
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(model).iterdir() if p.is_file() and p.name != ".lock"):
        size = file.stat().st_size
        digest.update(f"{file.name}:{size}\n".encode())
        with open(file, "rb") as fh:
            for offset in sorted({0, max(size // 2 - 2**19, 0), max(size - 2**20, 0)}):
                fh.seek(offset)
                digest.update(fh.read(2**20))
    return digest.hexdigest()


def run_stamp(config: TrainConfig) -> dict[str, Any]:
    """What the checkpoints in out/checkpoints were made from: data, starting models, config."""
    template = getattr(config, "chat_template", None)
    return {
        "data_sha256": [sha256_file(Path(p)) for p in config.data],
        "student_fingerprint": model_fingerprint(config.student),
        "teacher_fingerprint": model_fingerprint(config.teacher),
        # The template file shapes every training sequence; its path alone says too little.
        "chat_template_sha256": sha256_file(Path(template)) if template else None,
        "config": config.model_dump(mode="json", exclude=set(_NOT_IN_STAMP)),
    }


def stamp_difference(old: dict[str, Any] | None, new: dict[str, Any]) -> str | None:
    """None when `old` matches `new`, else a few words naming what changed."""
    if old is None:
        return "they carry no run.json stamp (data and config unknown)"
    if old.get("data_sha256") != new["data_sha256"]:
        return "the training data changed"
    for who in ("student", "teacher"):
        if old.get(f"{who}_fingerprint") != new[f"{who}_fingerprint"]:
            return f"the {who} model's files changed"
    if old.get("chat_template_sha256") != new["chat_template_sha256"]:
        return "the chat template file changed"
    before, after = old.get("config") or {}, new["config"]
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        return "the training config changed (" + ", ".join(
            f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:3]
        ) + (", ..." if len(changed) > 3 else "") + ")"
    return None


def last_checkpoint(out: Path) -> Path | None:
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resumable_checkpoint(out: Path, stamp: dict[str, Any]) -> tuple[Path | None, str | None]:
    """(checkpoint to resume, None), or (None, why the checkpoints there are stale).

    Checkpoints count only if out/checkpoints/run.json says they were made from the same data
    and config: resuming anything else would train on (or just save) a stale model.
    """
    checkpoint = last_checkpoint(out)
    if checkpoint is None:
        return None, None
    stamp_path = out / CHECKPOINTS / RUN_STAMP
    try:
        old = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
    except json.JSONDecodeError:
        old = None
    why = stamp_difference(old, stamp)
    return (None, why) if why else (checkpoint, None)


def start_checkpoints(out: Path, stamp: dict[str, Any], stale: str | None) -> None:
    """Move stale checkpoints aside (kept, never deleted) and stamp the folder for this run."""
    folder = out / CHECKPOINTS
    if stale is not None:
        aside = out / f"{CHECKPOINTS}.stale-{time.strftime('%Y%m%d-%H%M%S')}"
        for extra in range(2, 1000):
            if not aside.exists():
                break
            aside = aside.with_name(f"{aside.name.rsplit('+', 1)[0]}+{extra}")  # same second
        folder.rename(aside)
        print(f"train: not resuming: {stale}; old checkpoints moved to {aside}, starting fresh")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")


def trim_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint we resume from: those steps are trained again."""
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip()
            and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in kept))


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


def stage_memory(cuda: bool) -> Any:
    """Peak memory of this stage: torch's GPU allocator on GPU, else this process's RSS."""
    from cotdistill.memory import PeakMemory

    return PeakMemory(children=False, gpu="torch" if cuda else None)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[-1])


def _finished(checkpoint: Path) -> bool:
    """The checkpoint is the last step of its run (transformers saves one at the end)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return 0 < state.get("max_steps", 0) <= state.get("global_step", 0)


def reload_finished(trainer: Any, checkpoint: Path, log_path: Path) -> dict[str, Any]:
    """Load a finished run's final weights instead of resuming it.

    Resuming at the last step is not a no-op in transformers 5.19: its loop trains one more
    step before it checks `max_steps`. The metrics come from the run's own log.
    """
    from transformers import TrainerState

    print(f"train: {checkpoint} is the end of this same training; saving it, no new steps")
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    metrics: dict[str, Any] = {}
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            metrics.update({k: entry[k] for k in ("train_loss", "train_runtime") if k in entry})
    return metrics


def load_model(path: str, config: TrainConfig, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": config.trust_remote_code}
    if config.attn_implementation:
        kwargs["attn_implementation"] = config.attn_implementation
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


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
    on_policy: Any = None  # --kd on-policy: {"train": [{"messages": ...}], "eval": [...]}


def prepare(config: TrainConfig) -> Prepared:
    """Read, validate and tokenize the data; check the models' tokenizers. No weights loaded."""
    from transformers import AutoConfig, AutoTokenizer

    from cotdistill.models import resolve_model
    from cotdistill.student import load_pretrained

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
        from cotdistill.distill import prepare_offline

        kd = prepare_offline(config.topk_from, tokenizer, [*train_rows, *eval_rows],
                             config.topk_on_mismatch)
        teacher_name = kd.meta.get("teacher") or kd.meta.get("tokenizer") or "stored top-k"
    on_policy = None
    if config.kd == "on-policy":
        # Only the prompts matter: the student answers them itself at every step.
        held = {r.problem_id for r in eval_rows}
        on_policy = {part: [{"messages": e.prompt + e.completion} for e in examples
                            if (e.problem_id in held) == (part == "eval")]
                     for part in ("train", "eval")}
    return Prepared(student_path, student_name, teacher_path, teacher_name, tokenizer, stats,
                    train_rows, eval_rows, kd, on_policy)


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

    from cotdistill.student import load_pretrained

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

    from cotdistill.models import resolve_model
    from cotdistill.student import load_pretrained

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
        "model": load_model(prepared.student_path, config, weights_dtype(config, cuda)),
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
    from cotdistill.distill import KDSettings, distillation_trainer_class

    settings = KDSettings(
        temperature=config.distill_temperature, alpha=config.distill_alpha,
        divergence=config.kd_loss, beta=config.kd_beta, vocab_size=len(prepared.tokenizer),
        chunk_size=config.kd_chunk_size, tail=config.topk_tail,
    )
    if offline:
        return distillation_trainer_class()(**common, settings=settings,
                                            topk=prepared.offline.table)
    if prepared.on_policy is not None:
        from datasets import Dataset

        from cotdistill.distill import on_policy_args, on_policy_trainer_class

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


def compile_layers(model: Any) -> int:
    """Compile every decoder layer in place (regional compilation); returns how many.

    The layers are found by the classes the model names in `_no_split_modules` (the repeated
    block of every transformers decoder). `Module.compile` keeps parameter names, so saved
    weights and checkpoints are the same as without it. Measured on the embedded 135M model
    on CPU (bench/bench_cpu_dtype.py): fp32 steps 3.1x faster after the first, identical losses.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise InputError("--compile: this model names no repeated decoder layer to compile "
                         "(_no_split_modules is empty)", field="compile")
    for layer in layers:
        layer.compile()
    return len(layers)


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun (RANK is set there), else True."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


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
            trim_log(log_path, _step_of(resume_from))
            print(f"train: resuming from {resume_from}")

    tokenizer, teacher_name, cuda = prepared.tokenizer, prepared.teacher_name, use_cuda()
    # Measured over this stage only: inside one `cotdistill run`, each student gets its own.
    with stage_memory(cuda) as memory:
        trainer = build_trainer(config, prepared, out, [train_log_callback(log_path)])
        if config.compile:
            compile_layers(trainer.model)
        if is_quiet():
            quiet_progress(trainer)
        if resume_from is not None and _finished(resume_from):
            metrics = reload_finished(trainer, resume_from, log_path)
        else:
            metrics = trainer.train(
                resume_from_checkpoint=str(resume_from) if resume_from else None
            ).metrics
        eval_loss = final_eval_loss(trainer) if eval_rows else None
        outputs = save_outputs(trainer, tokenizer, out, config)
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
            "new_steps": trainer.state.global_step - (_step_of(resume_from) if resume_from else 0),
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
            "peak_memory_bytes": memory.peak_bytes,
            "peak_memory_what": memory.what,
        },
    )
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


def save_outputs(trainer: Any, tokenizer: Any, out: Path, config: TrainConfig) -> dict[str, str]:
    """Full fine-tune: a model folder in `out`. LoRA: the adapter there, merged in out/merged."""
    trainer.save_model(str(out))  # every rank takes part (sharded weights are gathered)
    if not trainer.is_world_process_zero():
        return {}
    # The Trainer also pickles its arguments there; the manifest holds the config instead.
    (out / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(str(out))
    if not config.lora:
        return {"model": str(out)}
    outputs = {"adapter": str(out)}
    if config.merge:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(out / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(out / "merged"))
        outputs["merged"] = str(out / "merged")
    return outputs
