"""Attention distillation: match the attention distributions of mapped layers (TinyBERT,
MiniLM use the same idea).

For each layer pair (i, map(i)), head h and assistant query token q (labels != -100):

    L_att = sum_pairs mean_{h, q} KL(A_t[map(i)][h, q, :] || A_s[i][h, q, :])

Each row A[h, q, :] is a distribution over the keys (softmax output, causal). Head counts:
equal -> head h to head h; teacher heads a multiple of the student's -> each student head to
the mean of its group of consecutive teacher heads; otherwise both sides averaged over all
heads. Layers are numbered as for hidden states (1 = first decoder block); 0 (embeddings)
has no attention.

Which implementations expose the weights (transformers 5.19): only `eager` returns
`outputs.attentions`; `sdpa`, `flash_attention_2/3` and `flex_attention` compute attention
without materialising the weights and return none (sdpa logs a warning and gives an empty
tuple). Training therefore loads both models with `attn_implementation="eager"` when an
attention weight is set (printed), refuses another explicitly asked for (InputError), and
`attention_loss` raises if a model still returned no weights.

    loss = attention_loss(out_s.attentions, out_t.attentions, mask, pairs)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

EXPOSES_WEIGHTS = ("eager",)
# Keeps log(p_s) finite where a (bf16) student row underflows to 0 but the teacher's does not.
_EPS = 1e-12


def match_heads(student: torch.Tensor, teacher: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher attention (B, H, L, L) brought to the same number of heads."""
    hs, ht = student.shape[1], teacher.shape[1]
    if hs == ht:
        return student, teacher
    if ht % hs == 0:
        b, _, q, k = teacher.shape
        return student, teacher.reshape(b, hs, ht // hs, q, k).mean(2)
    return student.mean(1, keepdim=True), teacher.mean(1, keepdim=True)


def attention_kl(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(p_t || p_s) per row over the last dimension (probabilities, not logits)."""
    import torch

    s = student.float().clamp_min(_EPS)
    t = teacher.float()
    return torch.where(t > 0, t * (t.clamp_min(_EPS).log() - s.log()), 0.0).sum(-1)


def attention_loss(
    student_attentions: Sequence[torch.Tensor] | None,
    teacher_attentions: Sequence[torch.Tensor] | None,
    mask: torch.Tensor,
    pairs: list[tuple[int, int]],
) -> torch.Tensor:
    """L_att above; attentions per layer (B, H, L, L), `mask` (B, L) True on assistant tokens."""
    for who, att in (("student", student_attentions), ("teacher", teacher_attentions)):
        if not att or any(a is None for a in att):
            raise RuntimeError(
                f"the {who} returned no attention weights: only attn_implementation "
                f"{'/'.join(EXPOSES_WEIGHTS)} exposes them (sdpa and flash attention do not)")
    import torch

    assert student_attentions is not None and teacher_attentions is not None
    first = student_attentions[0]
    total = first.new_zeros((), dtype=torch.float32)
    if not bool(mask.any()):
        return total + 0.0 * first.sum()
    for i, j in pairs:
        if i < 1 or j < 1:
            raise ValueError(f"layer pair {i}:{j}: layer 0 (the embeddings) has no attention")
        s, t = match_heads(student_attentions[i - 1], teacher_attentions[j - 1].detach())
        # Rows of assistant queries: (B, H, L, L) -> (n, H, L); padding keys carry 0 mass.
        rows_s = s.transpose(1, 2)[mask]
        rows_t = t.transpose(1, 2)[mask]
        total = total + attention_kl(rows_s, rows_t).mean()
    return total
