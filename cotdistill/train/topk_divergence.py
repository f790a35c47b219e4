"""The on-policy loss against a teacher's top-K log-probabilities (`--kd on-policy-vllm`).

A teacher served by vLLM returns, per completion token, its K most likely ids and their raw
log-probabilities lp_k (before temperature). The loss is `alpha * T^2 * D` averaged over the
sampled tokens (alpha = 1: the tokens are the student's own samples, not targets), D by name:

- forward: exactly the offline top-K loss (`cotdistill/losses/topk.py`, `topk_kd_loss`):
  KL(q || p_s) over the K ids, q_k = softmax(lp_k / T), p_s = softmax(z_s / T) over V.
- reverse, jsd: the divergence (`cotdistill/losses/{reverse_kl,jsd}.py`) between the two
  distributions coarse-grained onto the teacher's support:

      tail = "ignore":  q = softmax(lp_K / T),             p = softmax(z_s[K] / T)
      tail = "bucket":  q = softmax([lp_K, log r] / T),    p = [p_s(K), 1 - sum_K p_s]

  with r = 1 - sum_k exp(lp_k) the teacher's mass outside the K ids (tempered as one outcome,
  as topk.py does; exact at T = 1). Coarse-graining never increases a divergence (data
  processing), so this is a lower bound on the dense one, equal to it when K = V; `ignore`
  compares the two distributions renormalised over the K ids and says nothing about the
  student's mass outside them, `bucket` also matches how much mass lies outside.

    loss, parts = topk_divergence_loss(rows, targets, ids, logprobs, valid, divergence="reverse",
                                       temperature=1.0, student_head=lm_head)
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from cotdistill.losses import DIVERGENCES, topk_kd_loss
from cotdistill.losses.topk import TAIL_FLOOR

if TYPE_CHECKING:
    import torch

# Masked outcomes get this log-probability instead of -inf: exp() is 0 and differences stay
# finite, so neither the divergence nor its gradient sees inf - inf.
NEG = -1e30


def coarse_logps(student_logits: torch.Tensor, topk_ids: torch.Tensor,
                 topk_logprobs: torch.Tensor, *, temperature: float, tail: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(student, teacher) log-probabilities (n, K) or (n, K + 1) over the teacher's support."""
    import torch

    vocab = student_logits.shape[-1]
    ok = (topk_ids >= 0) & (topk_ids < vocab) & torch.isfinite(topk_logprobs)
    ids = topk_ids.long().clamp(0, vocab - 1)
    raw = topk_logprobs.float()
    student_all = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    student = student_all.gather(-1, ids).masked_fill(~ok, NEG)
    teacher = (raw / temperature).masked_fill(~ok, NEG)
    if tail == "bucket":
        rest = 1.0 - raw.exp().masked_fill(~ok, 0.0).sum(-1)
        rest_logp = torch.where(rest > TAIL_FLOOR, rest.clamp(min=TAIL_FLOOR).log() / temperature,
                                NEG)
        teacher = torch.cat([teacher, rest_logp.unsqueeze(-1)], dim=-1)
        # The student's tempered mass outside the K ids (the K ids masked with a large finite
        # negative, not -inf: with K = V every entry is masked), floored at e^-30 as topk.py does.
        outside = student_all.scatter(-1, ids, NEG).masked_fill(student_all.isneginf(), NEG)
        outside_logp = torch.logsumexp(outside, -1, keepdim=True).clamp(min=-30.0)
        student = torch.cat([student, outside_logp], dim=-1)
    return torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1)


def _coarse_sum(logits: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor,
                valid: torch.Tensor, *, divergence: Any, temperature: float, tail: str
                ) -> torch.Tensor:
    import torch

    student, teacher = coarse_logps(logits, ids, logprobs, temperature=temperature, tail=tail)
    return torch.where(valid, divergence(student, teacher), 0.0).sum()


def topk_divergence_loss(
    student_rows: torch.Tensor, targets: torch.Tensor, topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor, valid: torch.Tensor, *, divergence: str = "forward",
    beta: float = 0.5, temperature: float, tail: str = "ignore", vocab_size: int | None = None,
    student_head: Any = None, chunk_size: int | None = 256, num_items: Any = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """T^2 * sum over valid rows of D / N (N: `num_items`, else the rows), and its parts.

    `student_rows` (n, H) hidden states with `student_head`, or (n, V) logits without;
    `topk_ids`, `topk_logprobs` (n, K); `valid` (n,) rows that have teacher data. The head and
    the loss run `chunk_size` rows at a time (each chunk recomputed in backward).
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    if divergence == "forward":
        return topk_kd_loss(student_rows, targets, topk_ids, topk_logprobs, valid,
                            temperature=temperature, alpha=1.0, tail=tail,  # type: ignore[arg-type]
                            vocab_size=vocab_size, student_head=student_head,
                            chunk_size=chunk_size, num_items=num_items)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r} "
                         f"(choose from {', '.join(DIVERGENCES)})")
    fn = DIVERGENCES[divergence]
    if divergence == "jsd":
        fn = partial(fn, beta=beta)
    chunk_sum = partial(_coarse_sum, divergence=fn, temperature=temperature, tail=tail)

    def chunk_loss(rows: torch.Tensor, ids: torch.Tensor, lps: torch.Tensor, ok: torch.Tensor
                   ) -> torch.Tensor:
        logits = rows if student_head is None else student_head(rows)
        if vocab_size is not None:
            logits = logits[..., :vocab_size]
        return chunk_sum(logits.float(), ids, lps, ok)

    count = int(targets.shape[0])
    size = max(1, count if not chunk_size or chunk_size >= count else chunk_size)
    grad = torch.is_grad_enabled() and student_rows.requires_grad
    total = student_rows.sum() * 0.0  # keeps a graph when there are no rows
    for start in range(0, count, size):
        chunk = [t[start:start + size] for t in (student_rows, topk_ids, topk_logprobs, valid)]
        if grad and size < count:
            total = total + checkpoint(chunk_loss, *chunk, use_reentrant=False)
        else:
            total = total + chunk_loss(*chunk)
    denominator = max(float(count if num_items is None else num_items), 1.0)
    loss = temperature**2 * total / denominator
    with_teacher = int(valid.sum())
    return loss, {"distill_kl": total.item() / with_teacher if with_teacher else 0.0,
                  "distill_kl_share": with_teacher / count if count else 0.0}
