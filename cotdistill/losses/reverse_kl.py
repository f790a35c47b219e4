"""Reverse KL: the student's distribution against the teacher's (MiniLLM, Gu et al. 2024).

Per token, with p_t = softmax(z_t / T) and p_s = softmax(z_s / T):

    KL(p_s || p_t) = sum_v p_s(v) * (log p_s(v) - log p_t(v))

Mode seeking: a small student puts its mass on the teacher's main modes instead of
spreading it thinly over everything the teacher considers possible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(p_s || p_t) per row; inputs are log-probabilities (n, V) at temperature T."""
    import torch

    p_s = student_logp.exp()
    return torch.where(p_s > 0, p_s * (student_logp - teacher_logp), 0.0).sum(-1)
