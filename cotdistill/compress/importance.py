"""How much each part of a decoder matters, measured from its activations on calibration text.

The scores `student prune` ranks by, as Minitron computes them (Muralidharan et al. 2024,
"Compact Language Models via Pruning and Knowledge Distillation"), plus ShortGPT's block
influence for depth (Men et al. 2024), all from one pass of forward calls with hooks:

- MLP channel: mean |x| of the down_proj input (act(gate) * up), per layer.
- attention head: mean L2 norm of the head's output (its slice of the o_proj input), per layer.
- hidden channel: mean |x| of the input of every RMSNorm/LayerNorm (both per layer, and the
  final one), i.e. of the residual stream at every point it is read.
- block: mean over tokens of 1 - cos(block input, block output); a block that barely turns
  the residual stream is the cheapest to drop.

    texts = calibration_texts(Path("runs/demo/filter/sft.jsonl"), tokenizer)
    scores = measure_importance(model, token_sequences(texts, tokenizer, 4096, 512))
    plan = plan_cuts(scores, layers=24, hidden=448, mlp=768, heads=6, kv_heads=2,
                     teacher_kv_heads=3, head_mode="kv_groups")
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.infra.files import parse_json_object
from cotdistill.infra.progress import progress_bar
from cotdistill.traces import sft_records

# The modules of a Llama-family decoder layer (Llama, Mistral, Qwen2/3, SmolLM, ...).
LAYER_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm",
                 "post_attention_layernorm")


@dataclass
class Importance:
    """Per-part scores (higher = more important) and what they were measured on."""

    mlp: list[Any]  # per layer: tensor [intermediate_size]
    heads: list[Any]  # per layer: tensor [num_attention_heads]
    hidden: Any  # tensor [hidden_size]
    blocks: list[float]  # per layer
    tokens: int
    texts: int


def _render(messages: list[dict[str, Any]], tokenizer: Any) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n".join(str(m.get("content", "")) for m in messages)


def calibration_texts(path: Path, tokenizer: Any) -> list[str]:
    """One text per record of a traces / sft JSONL (rendered with the chat template), or per
    problem (question and answer) of a problem file; a line that is none of these is an
    InputError naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError("calibration file not found", file=path, field="calibration")
    texts = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            data = parse_json_object(line, path, lineno)
            try:
                records = sft_records(data, str(path), lineno)
            except InputError:
                question = data.get("question") or data.get("problem")
                if not isinstance(question, str):
                    raise InputError(
                        "not a trace, an sft record (messages) or a problem (question)",
                        file=path, line=lineno, field="calibration") from None
                answer = data.get("solution") or data.get("answer")
                texts.append(question + (f"\n{answer}" if answer is not None else ""))
                continue
            texts.extend(_render(record["messages"], tokenizer) for record in records)
    if not texts:
        raise InputError("the calibration file holds no records", file=path, field="calibration")
    return texts


def token_sequences(texts: Sequence[str], tokenizer: Any, budget: int,
                    max_length: int) -> list[list[int]]:
    """Token ids of the texts in order, each cut to `max_length`, until `budget` tokens."""
    sequences, total = [], 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][: min(max_length,
                                                                           budget - total)]
        if ids:
            sequences.append(ids)
            total += len(ids)
        if total >= budget:
            break
    return sequences


def decoder_parts(model: Any) -> tuple[Any, Any]:
    """(layer list, final norm) of a Llama-family model; any other layout is an InputError."""
    import torch

    config = model.config.get_text_config()
    base = model.base_model
    layers = getattr(base, "layers", None)
    norm = getattr(base, "norm", None)
    if not isinstance(layers, torch.nn.ModuleList) or norm is None:
        raise InputError(f"{config.model_type}: no `layers` list and final `norm` to prune",
                         field="teacher")
    names = {name for name, _ in layers[0].named_modules()}
    missing = [m for m in LAYER_MODULES if m not in names]
    if missing:
        raise InputError(
            f"{config.model_type} is not a Llama-family decoder (its layers lack "
            f"{', '.join(missing)}); prune handles q/k/v/o_proj + gate/up/down_proj layers",
            field="teacher")
    return layers, norm


def measure_importance(model: Any, sequences: Sequence[list[int]]) -> Importance:
    """Run the model over each sequence (batch 1, no padding to mask) and score its parts."""
    import torch

    config = model.config.get_text_config()
    layers, final_norm = decoder_parts(model)
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    count = len(layers)
    mlp = [torch.zeros(config.intermediate_size, dtype=torch.float64) for _ in range(count)]
    heads = [torch.zeros(n_heads, dtype=torch.float64) for _ in range(count)]
    hidden = torch.zeros(config.hidden_size, dtype=torch.float64)
    blocks = torch.zeros(count, dtype=torch.float64)
    # The residual stream entering each layer (and the final norm) in the current pass.
    stream: list[Any] = [None] * (count + 1)

    def flat(x: Any) -> Any:
        return x.detach().reshape(-1, x.shape[-1]).double()

    def on_norm(index: int | None) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = flat(args[0])
            hidden.add_(x.abs().sum(0))
            if index is not None:
                stream[index] = x
        return hook

    def on_mlp(index: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            mlp[index].add_(flat(args[0]).abs().sum(0))
        return hook

    def on_heads(index: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = flat(args[0])
            heads[index].add_(x.reshape(x.shape[0], n_heads, head_dim).norm(dim=-1).sum(0))
        return hook

    handles = [final_norm.register_forward_pre_hook(on_norm(count))]
    for i, layer in enumerate(layers):
        handles += [
            layer.input_layernorm.register_forward_pre_hook(on_norm(i)),
            layer.post_attention_layernorm.register_forward_pre_hook(on_norm(None)),
            layer.mlp.down_proj.register_forward_pre_hook(on_mlp(i)),
            layer.self_attn.o_proj.register_forward_pre_hook(on_heads(i)),
        ]
    tokens = 0
    device = next(model.parameters()).device
    bar = progress_bar(sum(len(s) for s in sequences), "prune: calibration", unit="tok",
                       leave=False)
    try:
        with torch.no_grad():
            for ids in sequences:
                model(torch.tensor([ids], device=device), use_cache=False)
                for i in range(count):
                    cos = torch.nn.functional.cosine_similarity(stream[i], stream[i + 1], dim=-1)
                    blocks[i] += (1 - cos).sum()
                tokens += len(ids)
                bar.update(len(ids))
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise InputError("no calibration tokens", field="calibration")
    return Importance(
        mlp=[m / tokens for m in mlp], heads=[h / tokens for h in heads],
        hidden=hidden / (tokens * (2 * count + 1)), blocks=(blocks / tokens).tolist(),
        tokens=tokens, texts=len(sequences),
    )


@dataclass
class Plan:
    """Which of the teacher's layers, channels and heads the student keeps (sorted indices)."""

    layers: list[int]
    hidden: list[int]
    mlp: dict[int, list[int]]  # by teacher layer
    heads: dict[int, list[int]]
    kv_heads: dict[int, list[int]]


def _top(scores: Any, count: int) -> list[int]:
    import torch

    return sorted(torch.topk(scores, count, sorted=False).indices.tolist())


def plan_cuts(scores: Importance, *, layers: int, hidden: int, mlp: int, heads: int,
              kv_heads: int, teacher_kv_heads: int, head_mode: str) -> Plan:
    """Keep the highest-scored parts: blocks by influence, then widths in every kept layer.

    Heads stay GQA-consistent: `kv_groups` keeps the `kv_heads` groups of highest summed score
    with all their query heads; `within_groups` keeps every group and in each the same number
    of its best query heads. Kept indices are sorted, so nothing is reordered.
    """
    import torch

    kept_layers = _top(torch.tensor(scores.blocks), layers)
    group = len(scores.heads[0]) // teacher_kv_heads
    plan = Plan(layers=kept_layers, hidden=_top(scores.hidden, hidden), mlp={}, heads={},
                kv_heads={})
    for i in kept_layers:
        plan.mlp[i] = _top(scores.mlp[i], mlp)
        by_group = scores.heads[i].reshape(teacher_kv_heads, group)
        if head_mode == "kv_groups":
            plan.kv_heads[i] = _top(by_group.sum(1), kv_heads)
        else:
            plan.kv_heads[i] = list(range(teacher_kv_heads))
        per_group = heads // len(plan.kv_heads[i])
        plan.heads[i] = [g * group + j for g in plan.kv_heads[i]
                         for j in (range(group) if head_mode == "kv_groups"
                                   else _top(by_group[g], per_group))]
    return plan
