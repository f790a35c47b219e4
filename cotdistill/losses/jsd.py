"""Generalized Jensen-Shannon divergence (GKD, Agarwal et al. 2024; TRL's `generalized_jsd_loss`).

Per token, with p_t = softmax(z_t / T), p_s = softmax(z_s / T) and 0 < beta < 1:

    m        = beta * p_t + (1 - beta) * p_s
    JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)

beta = 0.5 is the symmetric JSD. Near beta -> 0 it behaves like a scaled forward KL, near
beta -> 1 like a scaled reverse KL (both ends vanish exactly; use `forward` / `reverse` there).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def generalized_jsd(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5
) -> torch.Tensor:
    """JSD_beta(p_t, p_s) per row; inputs are log-probabilities (n, V) at temperature T."""
    import torch

    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
    log_m = torch.logsumexp(
        torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), dim=0
    )
    p_t, p_s = teacher_logp.exp(), student_logp.exp()
    kl_t = torch.where(p_t > 0, p_t * (teacher_logp - log_m), 0.0).sum(-1)
    kl_s = torch.where(p_s > 0, p_s * (student_logp - log_m), 0.0).sum(-1)
    return beta * kl_t + (1 - beta) * kl_s
