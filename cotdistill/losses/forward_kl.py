"""Forward KL, the seeds' distillation divergence (Hinton et al. 2015).

Per token, with p_t = softmax(z_t / T) and p_s = softmax(z_s / T):

    KL(p_t || p_s) = sum_v p_t(v) * (log p_t(v) - log p_s(v))

Mean seeking: the student is pushed to cover every token the teacher gives mass to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_t || p_s) per row; inputs are log-probabilities (n, V) at temperature T."""
    import torch

    # xlogy-style: a teacher probability of exactly 0 contributes 0, never 0 * -inf.
    p_t = teacher_logp.exp()
    return torch.where(p_t > 0, p_t * (teacher_logp - student_logp), 0.0).sum(-1)
