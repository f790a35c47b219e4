"""Prune a teacher's width and depth by measured importance (Minitron style), one shot.

Scores come from activations on calibration text (`compress/importance.py`); the lowest-scored
MLP channels, attention heads, hidden channels and decoder blocks are cut out of the teacher's
own weights, which are otherwise copied exactly (pruning nothing reproduces the teacher's
logits). The result is a normal model folder (config.json with the new sizes, `head_dim` kept
explicit) that transformers loads and vLLM serves; recovery training is a separate step
(`cotdistill train --student DIR`).

    cotdistill student prune --teacher MODEL --out runs/pruned --calibration sft.jsonl \
        --target-params 0.5
    cotdistill student prune --calibration sft.jsonl --out runs/pruned --mlp 768 --hidden 448 \
        --heads 6 --layers 24

Done with plain torch rather than torch-pruning: for Llama-family layers it is a few index
selects, and it keeps grouped-query attention consistent, which torch-pruning's open issues
(#516, #461) say it does not always do.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from cotdistill.compress.importance import (
    Plan,
    calibration_texts,
    measure_importance,
    plan_cuts,
    token_sequences,
)
from cotdistill.compress.student_init import student_config
from cotdistill.config import StrictModel
from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_file, write_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.models import load_pretrained


class PruneConfig(StrictModel):
    teacher: str | None = Field(
        None, description="Teacher model folder or hub id; default: the embedded SmolLM2."
    )
    out: Path | None = Field(None, description="Output model folder.")
    calibration: Path | None = Field(
        None, description="Traces, sft or problems JSONL whose activations rank what is cut "
        "(`run` passes its kept traces).",
    )
    target_params: float | None = Field(
        None, gt=0.0, le=1.0, description="Keep about this fraction of the teacher's "
        "parameters by shrinking the MLP and hidden widths (the MLP more); heads go only "
        "where the hidden width needs it, depth only with --layers.",
    )
    mlp: int | None = Field(None, gt=0, description="MLP width (intermediate_size) to keep.")
    hidden: int | None = Field(None, gt=0, description="Hidden (embedding) width to keep.")
    heads: int | None = Field(None, gt=0, description="Query heads to keep per layer.")
    head_mode: Literal["kv_groups", "within_groups"] = Field(
        "kv_groups", description="Cut whole KV groups (fewer KV heads), or the same number of "
        "query heads within every group (KV heads kept).",
    )
    layers: int | None = Field(
        None, gt=0, description="Decoder layers to keep (the least important blocks go)."
    )
    multiple_of: int = Field(64, gt=0, description="Pruned MLP and hidden widths are "
                             "multiples of this (a width no larger stays as it is).")
    calibration_tokens: int = Field(4096, gt=0, description="Calibration tokens to measure on.")
    max_length: int = Field(512, gt=0, description="Longest calibration text, in tokens.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (unsafe).")


@dataclass(frozen=True)
class Shape:
    """The sizes that pruning changes, and what parameter counting also needs."""

    layers: int
    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def of(cls, config: Any) -> Shape:
        text = config.get_text_config()
        heads = text.num_attention_heads
        return cls(
            layers=text.num_hidden_layers, hidden=text.hidden_size, mlp=text.intermediate_size,
            heads=heads, kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab=text.vocab_size,
            tied=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def parameters(self) -> int:
        """Parameters of a Llama-family model of this shape (no biases)."""
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        layer = 2 * h * q + 2 * h * kv + 3 * h * self.mlp + 2 * h
        return self.layers * layer + self.vocab * h * (1 if self.tied else 2) + h


def widths(size: int, multiple: int) -> list[int]:
    """The widths a dimension may be pruned to, largest first: itself, then multiples."""
    return [size] + [w for w in range(size - size % multiple, 0, -multiple) if w < size]


def _check_width(value: int | None, size: int, multiple: int, name: str) -> None:
    if value is None:
        return
    if value > size:
        raise InputError(f"the teacher's {name} width is {size}; cannot keep {value}",
                         field=name)
    if value not in widths(size, multiple):
        raise InputError(f"{value} is not a multiple of {multiple} (--multiple-of) nor the "
                         f"teacher's {size}", field=name)


def head_counts(config: PruneConfig, teacher: Shape) -> list[int]:
    """Query-head counts `head_mode` can keep, largest first (GQA groups stay whole / even)."""
    step = teacher.heads // teacher.kv_heads if config.head_mode == "kv_groups" \
        else teacher.kv_heads
    return list(range(teacher.heads, 0, -step))


def kv_heads_kept(config: PruneConfig, teacher: Shape, heads: int) -> int:
    """How many KV heads remain when `heads` query heads are kept in `config.head_mode`."""
    group = teacher.heads // teacher.kv_heads
    if config.head_mode == "kv_groups":
        if heads % group:
            raise InputError(f"with head_mode kv_groups, heads must be a multiple of the "
                             f"{group} query heads per KV group", field="heads")
        return heads // group
    if heads % teacher.kv_heads:
        raise InputError(f"with head_mode within_groups, heads must be a multiple of the "
                         f"{teacher.kv_heads} KV groups", field="heads")
    return teacher.kv_heads


def target_shape(config: PruneConfig, teacher: Shape) -> Shape:
    """The pruned sizes, checked against the teacher before any weight is read."""
    given = [config.mlp, config.hidden, config.heads, config.layers]
    if config.target_params is None and all(v is None for v in given):
        raise InputError("give --target-params or at least one of --mlp, --hidden, --heads, "
                         "--layers", field="target_params")
    m = config.multiple_of
    _check_width(config.mlp, teacher.mlp, m, "mlp")
    _check_width(config.hidden, teacher.hidden, m, "hidden")
    if config.heads is not None and config.heads > teacher.heads:
        raise InputError(f"the teacher has {teacher.heads} query heads; cannot keep "
                         f"{config.heads}", field="heads")
    if config.layers is not None and config.layers > teacher.layers:
        raise InputError(f"the teacher has {teacher.layers} layers; cannot keep "
                         f"{config.layers}", field="layers")
    heads = config.heads or teacher.heads
    shape = replace(teacher, heads=heads, kv_heads=kv_heads_kept(config, teacher, heads),
                    layers=config.layers or teacher.layers, mlp=config.mlp or teacher.mlp,
                    hidden=config.hidden or teacher.hidden)
    if config.target_params is None:
        if shape.hidden % shape.heads:
            # transformers' Llama-family configs refuse this even with head_dim explicit
            raise InputError(f"transformers needs the hidden width divisible by the query "
                             f"heads: {shape.hidden} is not divisible by {shape.heads}",
                             field="hidden")
        return shape
    if config.mlp is not None and config.hidden is not None:
        raise InputError("--target-params sizes the MLP and hidden widths; with both given "
                         "there is nothing left for it to choose", field="target_params")
    return solve_widths(shape, config, teacher)


def solve_widths(shape: Shape, config: PruneConfig, teacher: Shape) -> Shape:
    """MLP and hidden widths (multiples of `multiple_of`) for the parameter target.

    Of the shapes within the budget whose MLP keeps no larger a fraction than the hidden width,
    and the hidden width none larger than the heads (Minitron's 8B -> 4B cut kept 0.64 of the
    MLP, 0.75 of the hidden width and every head), those within 2%
    of the teacher's parameters of the largest; of these, the one nearest the path
    hidden = sqrt(mlp) in fractions, then the one with most heads. Widths and heads given
    explicitly stay fixed. Query heads are cut only where that lets the hidden width shrink:
    transformers needs hidden divisible by heads (9 heads and multiples of 64: 576 only).
    """
    assert config.target_params is not None
    total = teacher.parameters()
    budget = config.target_params * total
    mlps = [config.mlp] if config.mlp else widths(teacher.mlp, config.multiple_of)
    hiddens = [config.hidden] if config.hidden else widths(teacher.hidden, config.multiple_of)
    heads = [config.heads] if config.heads else head_counts(config, teacher)
    free = config.mlp is None and config.hidden is None

    def ordered(m: int, h: int, q: int) -> bool:  # MLP cut deepest, then hidden, then heads
        mlp_first = not free or m / teacher.mlp <= h / teacher.hidden + 1e-9
        return mlp_first and (config.heads is not None
                              or q / teacher.heads >= h / teacher.hidden - 1e-9)

    shapes = [replace(shape, mlp=m, hidden=h, heads=q, kv_heads=kv_heads_kept(config, teacher, q))
              for m in mlps for h in hiddens for q in heads if h % q == 0 and ordered(m, h, q)]
    fitting = [s for s in shapes if s.parameters() <= budget]
    if not fitting:
        smallest = min(shapes, key=Shape.parameters, default=None)
        allowed = (f"{smallest.parameters() / total:.3f} of the teacher: mlp {smallest.mlp}, "
                   f"hidden {smallest.hidden}, {smallest.heads} heads, {smallest.layers} "
                   "layers" if smallest else "no width divisible by the heads")
        raise InputError(f"--target-params {config.target_params} is below the smallest "
                         f"shape these settings allow ({allowed})", field="target_params")
    most = max(s.parameters() for s in fitting)
    near = [s for s in fitting if s.parameters() >= most - 0.02 * total]

    def off_path(s: Shape) -> float:
        return abs(math.log(s.hidden / teacher.hidden) - 0.5 * math.log(s.mlp / teacher.mlp))

    return min(near, key=lambda s: (round(off_path(s), 6), -s.heads, -s.parameters()))


def _rows(units: list[int], size: int) -> list[int]:
    """Row indices of whole heads (each `size` rows) in a projection."""
    return [u * size + k for u in units for k in range(size)]


def prune_state_dict(state: dict[str, Any], prefix: str, plan: Plan,
                     head_dim: int) -> dict[str, Any]:
    """The student's tensors: kept layers renumbered, every tensor cut to the kept indices.

    `prefix` is the layer list's ("model.layers."); embeddings, final norm and head sit beside
    it. A tensor the rules do not name passes unchanged (the new model's loader checks it).
    """
    import torch

    hid = torch.tensor(plan.hidden)
    base = prefix.removesuffix("layers.")
    result = {}
    for key, tensor in state.items():
        if key.startswith(prefix):
            index, _, name = key[len(prefix):].partition(".")
            if int(index) not in plan.mlp:
                continue
            key = f"{prefix}{plan.layers.index(int(index))}.{name}"
            tensor = _cut_layer_tensor(name, tensor, plan, int(index), hid, head_dim)
        elif key in (f"{base}embed_tokens.weight", "lm_head.weight"):
            tensor = tensor.index_select(1, hid)
        elif key in (f"{base}norm.weight", f"{base}norm.bias"):
            tensor = tensor.index_select(0, hid)
        result[key] = tensor.contiguous()
    return result


def _cut_layer_tensor(name: str, tensor: Any, plan: Plan, layer: int, hid: Any,
                      head_dim: int) -> Any:
    import torch

    module, _, kind = name.rpartition(".")
    q = torch.tensor(_rows(plan.heads[layer], head_dim))
    kv = torch.tensor(_rows(plan.kv_heads[layer], head_dim))
    mlp = torch.tensor(plan.mlp[layer])
    # (rows, columns) each projection keeps: rows are outputs, columns inputs.
    cuts = {
        "self_attn.q_proj": (q, hid), "self_attn.k_proj": (kv, hid),
        "self_attn.v_proj": (kv, hid), "self_attn.o_proj": (hid, q),
        "mlp.gate_proj": (mlp, hid), "mlp.up_proj": (mlp, hid), "mlp.down_proj": (hid, mlp),
        "input_layernorm": (hid, None), "post_attention_layernorm": (hid, None),
    }
    if module not in cuts:
        return tensor
    rows, cols = cuts[module]
    tensor = tensor.index_select(0, rows)
    return tensor.index_select(1, cols) if kind == "weight" and cols is not None else tensor


def pruned_config(teacher_config: Any, shape: Shape, layers: list[int]) -> Any:
    """The teacher's config with the new sizes; per-layer lists subset to the kept layers."""
    config = student_config(teacher_config, layers)
    text = config.get_text_config()
    text.hidden_size, text.intermediate_size = shape.hidden, shape.mlp
    text.num_attention_heads, text.num_key_value_heads = shape.heads, shape.kv_heads
    text.head_dim = shape.head_dim  # no longer hidden_size // heads
    return config


def build_pruned(teacher: Any, shape: Shape, plan: Plan) -> Any:
    """A fresh model of the teacher's class holding the teacher's kept weights."""
    from transformers import AutoModelForCausalLM

    from cotdistill.compress.student_init import layer_stack

    prefix, _ = layer_stack(teacher)
    config = pruned_config(teacher.config, shape, plan.layers)
    student = AutoModelForCausalLM.from_config(config, dtype=teacher.dtype,
                                               trust_remote_code=False)
    state = prune_state_dict(teacher.state_dict(), prefix, plan, shape.head_dim)
    try:
        missing, unexpected = student.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a size mismatch: a tensor these rules do not cut
        raise InputError(f"this model has weights prune does not know how to cut: {exc}",
                         field="teacher") from exc
    tied = getattr(student, "_tied_weights_keys", None) or {}
    missing = [k for k in missing if k not in set(tied)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    student.generation_config = teacher.generation_config
    return student


def cut_record(plan: Plan, teacher: Shape) -> dict[str, Any]:
    """What was cut, per teacher layer, for the manifest."""
    return {
        "removed_layers": [i for i in range(teacher.layers) if i not in plan.layers],
        "kept_layers": plan.layers,
        "removed_hidden_channels": sorted(set(range(teacher.hidden)) - set(plan.hidden)),
        "per_layer": [
            {"teacher_layer": i, "new_layer": j,
             "removed_heads": sorted(set(range(teacher.heads)) - set(plan.heads[i])),
             "removed_kv_heads": sorted(set(range(teacher.kv_heads)) - set(plan.kv_heads[i])),
             "removed_mlp_channels": sorted(set(range(teacher.mlp)) - set(plan.mlp[i]))}
            for j, i in enumerate(plan.layers)
        ],
    }


def saved_dtype(config: Any) -> Any:
    """The dtype a checkpoint's config says its weights are in (float32 when it says none)."""
    import torch

    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


@locks_output("student prune")
def run_prune(config: PruneConfig) -> dict[str, Any]:
    """Measure importance on the calibration text, cut, write the model folder; the manifest."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from cotdistill.models import resolve_model

    started = time.time()
    if config.out is None:
        raise InputError("student prune needs --out", field="out")
    if config.calibration is None:
        raise InputError("student prune needs --calibration (a traces, sft or problems JSONL "
                         "to measure importance on); `cotdistill run` passes its kept traces",
                         field="calibration")
    path, name = resolve_model(config.teacher)
    teacher_config = load_pretrained(AutoConfig, path, config.trust_remote_code, "teacher")
    teacher_shape = Shape.of(teacher_config)
    shape = target_shape(config, teacher_shape)  # bad targets stop before the weights load
    tokenizer = load_pretrained(AutoTokenizer, path, config.trust_remote_code, "teacher")
    texts = calibration_texts(config.calibration, tokenizer)
    sequences = token_sequences(texts, tokenizer, config.calibration_tokens, config.max_length)

    # Measured in float32 (on this CPU faster than bfloat16, and exact sums); the student is
    # saved in the dtype the teacher was saved in, which the round trip through float32 keeps.
    teacher = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=config.trust_remote_code).eval()
    scores = measure_importance(teacher, sequences)
    plan = plan_cuts(scores, layers=shape.layers, hidden=shape.hidden, mlp=shape.mlp,
                     heads=shape.heads, kv_heads=shape.kv_heads,
                     teacher_kv_heads=teacher_shape.kv_heads, head_mode=config.head_mode)
    student = build_pruned(teacher, shape, plan).to(saved_dtype(teacher_config))

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    student.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in student.parameters())
    teacher_params = sum(p.numel() for p in teacher.parameters())
    sizes = ("layers", "hidden", "mlp", "heads", "kv_heads", "head_dim")
    inputs = {str(config.calibration): sha256_file(config.calibration)}
    if Path(path).exists():
        inputs[name] = sha256_file(Path(path))
    manifest = write_manifest(
        out, stage="student_prune", config=config, inputs=inputs,
        counts={"parameters": params, "teacher_parameters": teacher_params,
                "calibration_texts": scores.texts, "calibration_tokens": scores.tokens},
        started=started,
        extra={"teacher": name, "dtype": str(student.dtype),
               "parameter_fraction": round(params / teacher_params, 4),
               "teacher_shape": {k: getattr(teacher_shape, k) for k in sizes},
               "shape": {k: getattr(shape, k) for k in sizes},
               "block_importance": [round(b, 6) for b in scores.blocks],
               "cut": cut_record(plan, teacher_shape)},
    )
    print(f"student prune: {name} {teacher_params / 1e6:.1f}M -> {params / 1e6:.1f}M parameters "
          f"({params / teacher_params:.2f}x; layers {shape.layers}, hidden {shape.hidden}, "
          f"mlp {shape.mlp}, heads {shape.heads}/{shape.kv_heads} kv) "
          f"from {scores.tokens} calibration tokens -> {out}")
    return manifest
