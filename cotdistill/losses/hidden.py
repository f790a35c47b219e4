"""Hidden-state (hint / feature) distillation (FitNets, Romero et al. 2015; TinyBERT).

Over the assistant tokens (labels != -100) and the mapped layer pairs (i, map(i)):

    L_hint = sum_i MSE(W_i h_s[i], h_t[map(i)])              (hidden_loss "mse")
    L_hint = sum_i mean_tokens (1 - cos(W_i h_s[i], h_t[map(i)]))   ("cosine", scale-free)

MSE is the mean over tokens and features of one pair; pairs are summed, as in the formula.
Layer numbers follow `output_hidden_states`: 0 is the embeddings, i the output of decoder
block i, the last one the final (normed) hidden state. W_i is a learned linear projection
(student width -> teacher width) when the widths differ and the identity when they match.
The projections exist for training only: they are not part of the student and are never
saved with it (a checkpoint resumed later starts them afresh).

    pairs = layer_pairs("uniform", student_layers=10, teacher_layers=30)   # or "last", "3:12,6:24"
    proj = projections(pairs, student_width=576, teacher_width=960)        # None if equal
    loss = hidden_loss(out_s.hidden_states, out_t.hidden_states, mask, pairs, proj, "mse")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

HiddenLoss = Literal["mse", "cosine"]
Pairs = list[tuple[int, int]]


def layer_pairs(spec: str, student_layers: int, teacher_layers: int) -> Pairs:
    """(student layer, teacher layer) pairs from `uniform`, `last` or `S:T,S:T,...`.

    uniform: every student block i (1..S) to teacher block round(i * T / S), so the last
    goes to the last and a student as deep as its teacher maps to itself (the identity).
    Raises ValueError naming the bad item.
    """
    text = spec.strip()
    if text == "uniform":
        return [(i, round(i * teacher_layers / student_layers))
                for i in range(1, student_layers + 1)]
    if text == "last":
        return [(student_layers, teacher_layers)]
    pairs: Pairs = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        left, sep, right = item.partition(":")
        try:
            pair = (int(left), int(right))
        except ValueError:
            pair = None
        if not sep or pair is None:
            raise ValueError(f"expected uniform, last or STUDENT:TEACHER pairs such as "
                             f"3:12,6:24; got {item!r}")
        if not 0 <= pair[0] <= student_layers:
            raise ValueError(f"{item!r}: the student has layers 0..{student_layers}")
        if not 0 <= pair[1] <= teacher_layers:
            raise ValueError(f"{item!r}: the teacher has layers 0..{teacher_layers}")
        pairs.append(pair)
    if not pairs:
        raise ValueError("the layer map names no pairs")
    return pairs


def projections(pairs: Pairs, student_width: int, teacher_width: int) -> torch.nn.ModuleList | None:
    """One Linear(student_width, teacher_width) per pair, or None when the widths match."""
    import torch

    if student_width == teacher_width:
        return None
    return torch.nn.ModuleList(torch.nn.Linear(student_width, teacher_width) for _ in pairs)


def hidden_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    mask: torch.Tensor,
    pairs: Pairs,
    projection: torch.nn.ModuleList | None = None,
    kind: HiddenLoss = "mse",
) -> torch.Tensor:
    """L_hint above; hidden states (B, L, H) per layer, `mask` (B, L) True on assistant tokens."""
    import torch
    import torch.nn.functional as F

    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    if not bool(mask.any()):
        return total + 0.0 * student_hidden[0].sum()  # keeps the graph; nothing to match
    for n, (i, j) in enumerate(pairs):
        s = student_hidden[i][mask].float()
        t = teacher_hidden[j][mask].detach().float()
        if projection is not None:
            weight = projection[n].weight
            s = projection[n](s.to(weight.dtype)).float()
        if s.shape[-1] != t.shape[-1]:
            raise ValueError(f"student layer {i} has width {s.shape[-1]}, teacher layer {j} "
                             f"{t.shape[-1]}: a projection is needed")
        if kind == "mse":
            total = total + F.mse_loss(s, t)
        else:
            total = total + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
    return total
