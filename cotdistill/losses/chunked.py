"""The chunked driver: every distillation loss over assistant tokens, a chunk of rows at a time.

    total = (alpha * T^2 * sum_tokens D(p_t, p_s) + (1 - alpha) * sum_tokens CE(z_s, y)) / N

over the tokens whose label is not -100 (the assistant turn), D one of `DIVERGENCES`, N the
number of label tokens in the whole (gradient-accumulated, all-process) batch when given, else
in this batch. The T^2 keeps the soft term's gradients on the CE term's scale (Hinton et al.).

Memory: the caller passes the rows that matter (n, H): hidden states with the output head as
`student_head`, or logits with no head. The head, log-softmax and loss run `chunk_size` rows
at a time, so only one chunk's (rows, V) tensors exist at once. With a plain linear head the
gradient of each chunk is taken right there in the forward pass (as Liger's fused linear
cross-entropy does) and kept only for the rows (n, H) and the head's weight, so backward costs
no recomputation; other heads go through `torch.utils.checkpoint` per chunk (recomputed in
backward). Logits are sliced to `vocab_size` (the tokenizer's length): rows of a padded
embedding matrix (Qwen2.5: 152,064 rows for 151,665 tokens) are no tokens and are left out of
both softmaxes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from cotdistill.losses.topk import Tail, topk_kl

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100
Head = Callable[["torch.Tensor"], "torch.Tensor"]


def masked_rows(
    values: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows predicting a label token, their targets): position i predicts token i + 1."""
    shift = labels[:, 1:]
    mask = shift != IGNORE_INDEX
    return values[:, :-1][mask], shift[mask]


def _logits(rows: torch.Tensor, head: Head | None, vocab_size: int | None) -> torch.Tensor:
    logits = rows if head is None else head(rows)
    if vocab_size is not None:
        if logits.shape[-1] < vocab_size:
            raise ValueError(f"model outputs {logits.shape[-1]} logits for a tokenizer of "
                             f"{vocab_size} tokens")
        logits = logits[..., :vocab_size]
    return logits.float()


def _dense_parts(
    s: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor, *,
    divergence: Callable[..., torch.Tensor], temperature: float, teacher_head: Head | None,
    vocab_size: int | None,
) -> torch.Tensor:
    """[sum of divergence, sum of CE] over one chunk; `s` the student's fp32 logits."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        t = _logits(teacher, teacher_head, vocab_size)
        teacher_logp = F.log_softmax(t / temperature, dim=-1)
    div = divergence(F.log_softmax(s / temperature, dim=-1), teacher_logp).sum()
    ce = F.cross_entropy(s, targets, reduction="sum")
    return torch.stack([div, ce])


def _topk_parts(
    s: torch.Tensor, targets: torch.Tensor, ids: torch.Tensor, logprobs: torch.Tensor,
    valid: torch.Tensor, *, temperature: float, tail: Tail,
) -> torch.Tensor:
    import torch
    import torch.nn.functional as F

    kl = topk_kl(s, ids, logprobs, temperature=temperature, tail=tail)
    div = torch.where(valid, kl, 0.0).sum()
    ce = F.cross_entropy(s, targets, reduction="sum")
    return torch.stack([div, ce])


def _linear_head(head: Head | None) -> tuple[Any, Any] | None:
    """(weight, bias) when the head is a plain linear layer (not a LoRA-wrapped one)."""
    import torch

    if type(head) is torch.nn.Linear:
        return head.weight, head.bias
    return None


def _fused_function() -> Any:
    import torch

    class FusedHeadLoss(torch.autograd.Function):
        """Head + loss per chunk with the gradient taken in the forward pass (as Liger's
        fused linear cross-entropy does): no chunk's logits are kept or recomputed; only the
        gradients for the rows (n, H) and the head's weight are."""

        @staticmethod
        def forward(ctx: Any, rows: torch.Tensor, weight: torch.Tensor, bias: Any,
                    parts_fn: Callable[..., torch.Tensor], others: tuple[Any, ...],
                    size: int, vocab: int, w_div: float, w_ce: float) -> Any:
            w = weight[:vocab]
            b = None if bias is None else bias[:vocab]
            grad_rows = torch.zeros_like(rows)
            grad_w = torch.zeros_like(weight) if weight.requires_grad else None
            grad_b = torch.zeros_like(bias) if bias is not None and bias.requires_grad else None
            sums = torch.zeros(2, device=rows.device)
            for start in range(0, rows.shape[0], size):
                r = rows[start:start + size]
                with torch.enable_grad():
                    logits = torch.nn.functional.linear(r.to(w.dtype), w, b).float()
                    logits = logits.detach().requires_grad_(True)
                    parts = parts_fn(logits, *(o[start:start + size] for o in others))
                    (g,) = torch.autograd.grad(w_div * parts[0] + w_ce * parts[1], logits)
                g = g.to(w.dtype)
                grad_rows[start:start + size] = (g @ w).to(rows.dtype)
                if grad_w is not None:
                    grad_w[:vocab].addmm_(g.t(), r.to(w.dtype))
                if grad_b is not None:
                    grad_b[:vocab] += g.sum(0)
                sums += parts.detach()
            ctx.save_for_backward(grad_rows, *(x for x in (grad_w, grad_b) if x is not None))
            ctx.has = (grad_w is not None, grad_b is not None)
            ctx.mark_non_differentiable(sums)
            return w_div * sums[0] + w_ce * sums[1], sums

        @staticmethod
        def backward(ctx: Any, grad_loss: torch.Tensor, _: Any) -> Any:
            saved = list(ctx.saved_tensors)
            grad_rows = saved.pop(0) * grad_loss
            grad_w = saved.pop(0) * grad_loss if ctx.has[0] else None
            grad_b = saved.pop(0) * grad_loss if ctx.has[1] else None
            return grad_rows, grad_w, grad_b, None, None, None, None, None, None

    return FusedHeadLoss


def _weighted(
    parts_fn: Callable[..., torch.Tensor], rows: torch.Tensor, head: Head | None,
    vocab_size: int | None, others: Sequence[torch.Tensor], chunk_size: int | None,
    w_div: float, w_ce: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_div * sum div + w_ce * sum CE, the two sums detached), a chunk of rows at a time.

    Three ways, same numbers: a plain linear head with gradients on -> the fused function
    above (fastest, least memory); another head or logits given -> per-chunk
    `torch.utils.checkpoint` (each chunk recomputed in backward); no gradients -> a loop.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    count = rows.shape[0]
    size = count if not chunk_size or chunk_size >= count else chunk_size
    size = max(size, 1)
    grad = torch.is_grad_enabled() and (rows.requires_grad or any(
        p.requires_grad for p in getattr(head, "parameters", lambda: [])()))
    linear = _linear_head(head)
    if grad and linear is not None and count:
        weight, bias = linear
        vocab = vocab_size or weight.shape[0]
        if weight.shape[0] < vocab:
            raise ValueError(f"model outputs {weight.shape[0]} logits for a tokenizer of "
                             f"{vocab} tokens")
        return _fused_function().apply(rows, weight, bias, parts_fn, tuple(others), size, vocab,
                                       w_div, w_ce)

    def chunk_loss(r: torch.Tensor, *o: torch.Tensor) -> torch.Tensor:
        return parts_fn(_logits(r, head, vocab_size), *o)

    sums = rows.sum() * 0.0 + torch.zeros(2, device=rows.device)  # keeps a graph if empty
    for start in range(0, count, size):
        chunk = [t[start:start + size] for t in (rows, *others)]
        if grad and size < count:
            sums = sums + checkpoint(chunk_loss, *chunk, use_reentrant=False)
        else:
            sums = sums + chunk_loss(*chunk)
    return w_div * sums[0] + w_ce * sums[1], sums.detach()


def _weights(rows: int, *, temperature: float, alpha: float, num_items: Any
             ) -> tuple[float, float]:
    count = max(float(rows if num_items is None else num_items), 1.0)
    return alpha * temperature**2 / count, (1 - alpha) / count


def _parts(sums: torch.Tensor, rows: int) -> dict[str, float]:
    tokens = max(rows, 1)
    return {"distill_kl": sums[0].item() / tokens, "distill_ce": sums[1].item() / tokens}


def kd_loss(
    student_rows: torch.Tensor,
    targets: torch.Tensor,
    teacher_rows: torch.Tensor,
    *,
    divergence: str = "forward",
    beta: float = 0.5,
    temperature: float,
    alpha: float,
    vocab_size: int | None = None,
    student_head: Head | None = None,
    teacher_head: Head | None = None,
    chunk_size: int | None = 256,
    num_items: Any = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The dense loss above over matching rows (n, ·) of student and teacher; targets (n,).

    Returns the loss and its parts for logging: per-token means of the divergence ("distill_kl",
    whichever divergence it is) and of the CE.
    """
    from cotdistill.losses.divergences import DIVERGENCES

    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r} "
                         f"(choose from {', '.join(DIVERGENCES)})")
    fn = DIVERGENCES[divergence]
    if divergence == "jsd":
        fn = partial(fn, beta=beta)
    parts_fn = partial(_dense_parts, divergence=fn, temperature=temperature,
                       teacher_head=teacher_head, vocab_size=vocab_size)
    rows = int(targets.shape[0])
    w_div, w_ce = _weights(rows, temperature=temperature, alpha=alpha, num_items=num_items)
    loss, sums = _weighted(parts_fn, student_rows, student_head, vocab_size,
                           [targets, teacher_rows], chunk_size, w_div, w_ce)
    return loss, _parts(sums, rows)


def topk_kd_loss(
    student_rows: torch.Tensor,
    targets: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    valid: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    tail: Tail = "ignore",
    vocab_size: int | None = None,
    student_head: Head | None = None,
    chunk_size: int | None = 256,
    num_items: Any = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The offline top-K loss (see `topk.py`) in the same frame: KL only on `valid` rows.

    Rows whose example failed the token alignment check (or has no stored rows) carry
    `valid = False`: they get the CE term only, and still count in the loss's denominator, as
    every label token does. The logged "distill_kl" is the mean over the valid rows only (0
    when there are none): rows without teacher data have no KL, and counting them as 0 would
    make the teacher look closer than it is. "distill_kl_share" is the share of valid rows.
    """
    parts_fn = partial(_topk_parts, temperature=temperature, tail=tail)
    rows = int(targets.shape[0])
    w_div, w_ce = _weights(rows, temperature=temperature, alpha=alpha, num_items=num_items)
    loss, sums = _weighted(parts_fn, student_rows, student_head, vocab_size,
                           [targets, topk_ids, topk_logprobs, valid], chunk_size, w_div, w_ce)
    with_teacher = int(valid.sum())
    parts = _parts(sums, rows)
    parts["distill_kl"] = sums[0].item() / with_teacher if with_teacher else 0.0
    parts["distill_kl_share"] = with_teacher / rows if rows else 0.0
    return loss, parts
