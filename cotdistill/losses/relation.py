"""Relation-based distillation (RKD, Park et al. 2019, "Relational Knowledge Distillation").

Each sequence of the batch is one example; its representation is the mean of a model's final
hidden state over the sequence's assistant tokens (any width: only relations are compared,
so no projection is needed). With s_i the student's and t_i the teacher's representations:

    distance:  psi_D(a_i, a_j) = ||a_i - a_j||_2 / mu,  mu = mean over pairs i != j of ||a_i - a_j||
               L_D = mean_{i != j} Huber(psi_D(s_i, s_j), psi_D(t_i, t_j))
    angle:     psi_A(a_i, a_j, a_k) = <e_ij, e_kj>,  e_ij = (a_i - a_j) / ||a_i - a_j||
               L_A = mean_{i, j, k} Huber(psi_A(s), psi_A(t))
    L_rel = L_D + 2 * L_A          (the paper's weights: lambda_D = 1, lambda_A = 2)

Huber is smooth L1 (delta 1), as in the paper. Normalising distances by their mean makes the
loss independent of each model's scale. It needs several sequences per micro-batch: with
fewer than 2 (3 for the angle) the corresponding part is 0. Padding-free batches (one row of
concatenated sequences) are split at position_ids == 0.

    reps_s = sequence_means(hidden_s, mask, position_ids)
    loss, parts = relation_loss(reps_s, reps_t)     # parts: relation_distance, relation_angle
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ANGLE_WEIGHT = 2.0


def sequence_means(hidden: torch.Tensor, mask: torch.Tensor,
                   position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(sequences, H): mean hidden state over each sequence's assistant tokens.

    A row is one sequence, or with `position_ids` several (a new one starts where the position
    is 0). Sequences without assistant tokens are left out.
    """
    import torch

    b, length = mask.shape
    if position_ids is None:
        seg = torch.zeros_like(mask, dtype=torch.long)
    else:
        seg = (position_ids.reshape(b, length) == 0).long().cumsum(1)
    seg = seg + torch.arange(b, device=mask.device).unsqueeze(1) * (length + 1)
    ids = seg[mask]
    _, index = torch.unique(ids, return_inverse=True)
    count = int(index.max()) + 1 if index.numel() else 0
    rows = hidden[mask].float()
    sums = rows.new_zeros(count, rows.shape[-1]).index_add(0, index, rows)
    sizes = torch.bincount(index, minlength=count).clamp_min(1).unsqueeze(1)
    return sums / sizes


def _distances(reps: torch.Tensor) -> torch.Tensor:
    """Pairwise distances over i != j, divided by their mean (psi_D)."""
    import torch

    n = reps.shape[0]
    diff = reps.unsqueeze(0) - reps.unsqueeze(1)
    off = ~torch.eye(n, dtype=torch.bool, device=reps.device)
    # sqrt of a clamped square: the gradient of ||x|| at 0 is undefined.
    dist = diff.pow(2).sum(-1).clamp_min(1e-12).sqrt()[off]
    return dist / dist.mean().clamp_min(1e-12)


def _angles(reps: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every (i, j, k) (psi_A)."""
    import torch.nn.functional as F

    e = F.normalize(reps.unsqueeze(0) - reps.unsqueeze(1), p=2, dim=2)  # e[j, i] = e_ij
    return (e @ e.transpose(1, 2)).reshape(-1)


def relation_loss(student: torch.Tensor, teacher: torch.Tensor
                  ) -> tuple[torch.Tensor, dict[str, float]]:
    """L_rel above for representations (N, Hs) and (N, Ht); parts for logging."""
    import torch.nn.functional as F

    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"{student.shape[0]} student sequences vs {teacher.shape[0]} teacher")
    student, teacher = student.float(), teacher.detach().float()
    zero = student.sum() * 0.0  # keeps the graph when there is nothing to compare
    n = student.shape[0]
    distance = (F.smooth_l1_loss(_distances(student), _distances(teacher)) if n >= 2
                else zero)
    angle = F.smooth_l1_loss(_angles(student), _angles(teacher)) if n >= 3 else zero
    return distance + ANGLE_WEIGHT * angle, {"relation_distance": float(distance.detach()),
                                             "relation_angle": float(angle.detach())}
