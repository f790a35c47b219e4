"""Offline top-K distillation: forward KL against the teacher's stored top-K log-probabilities.

`generate --topk-logprobs K` stores, for each completion token, the teacher's K most likely
token ids and their raw log-probabilities lp_k = z_k - logsumexp(z) (vLLM reports them before
temperature). At training temperature T the teacher's distribution over those ids is

    q_k = exp(lp_k / T) / sum_j exp(lp_j / T)                 (tail = "ignore")

which is exactly softmax(z_t / T) restricted to the K ids and renormalised; with K = V it is
the full tempered teacher distribution, so this loss then equals `forward_kl`. With
tail = "bucket" the mass outside the K ids, r = 1 - sum_k exp(lp_k), becomes one extra
outcome with log-probability log r, tempered like the others:

    q = softmax([lp_1 / T, ..., lp_K / T, log(r) / T])       (tail = "bucket")

and the student's matching outcome is its own tempered mass outside the K ids. At T = 1 this
is exact; at other T, tempering the tail as if it were one token is an approximation (the
true tempered tail needs the tail's logits, which were not stored). Per token:

    ignore: KL = sum_k q_k * (log q_k - log p_s(k))          p_s = softmax(z_s / T) over V
    bucket: KL = ignore's sum + q_tail * (log q_tail - log sum_{v not in K} p_s(v))

`ignore` leaves the student's mass outside the K ids unconstrained except through the sum
above (which rewards mass on the K ids); `bucket` also matches how much mass lies outside.
A tail under 1e-4 counts as 0 (float16 rounding of K probabilities is of that order).
Ids outside the student's vocabulary (a teacher with a padded embedding matrix) are dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Tail = Literal["ignore", "bucket"]
TAIL_FLOOR = 1e-4  # tail mass below this is taken as 0 (float16 noise)


def topk_kl(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    *,
    temperature: float,
    tail: Tail = "ignore",
) -> torch.Tensor:
    """Per-row KL above. student_logits (n, V) fp32; topk_ids (n, K) int; topk_logprobs (n, K)."""
    import torch

    vocab = student_logits.shape[-1]
    ok = (topk_ids >= 0) & (topk_ids < vocab)
    ids = topk_ids.long().clamp(0, vocab - 1)
    raw = topk_logprobs.float()
    teacher = (raw / temperature).masked_fill(~ok, float("-inf"))
    student_all = torch.log_softmax(student_logits / temperature, dim=-1)
    student = student_all.gather(-1, ids)
    if tail == "bucket":
        # float16 storage can make the stored probabilities sum past 1 by a rounding step.
        kept = raw.exp().masked_fill(~ok, 0.0).sum(-1)
        rest = 1.0 - kept
        # Below float16's resolution of the stored probabilities a "tail" is rounding noise
        # (with K = V it must be exactly 0 for the loss to equal the dense one).
        rest = torch.where(rest > TAIL_FLOOR, rest, 0.0)
        teacher = torch.cat([teacher, (rest.log() / temperature).unsqueeze(-1)], dim=-1)
        # The student's tempered mass outside the K ids, as a log: mask the K ids with a large
        # finite negative (not -inf: with K = V every entry is masked and -inf gives NaN grads).
        outside = student_all.scatter(-1, ids, -1e30).masked_fill(student_all.isneginf(), -1e30)
        # Floored at e^-30 so a student with (numerically) no mass outside stays finite.
        outside_logp = torch.logsumexp(outside, -1, keepdim=True).clamp(min=-30.0)
        student = torch.cat([student, outside_logp], dim=-1)
    log_q = torch.log_softmax(teacher, dim=-1)
    q = log_q.exp()
    return torch.where(q > 0, q * (log_q - student), 0.0).sum(-1)
