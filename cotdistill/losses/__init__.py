"""Distillation losses: one divergence per file, one chunked driver that applies them.

Each divergence maps per-token log-probabilities (rows of shape (n, V), already divided by the
temperature T) to one loss per row; `chunked.kd_loss` applies it over the assistant tokens in
chunks of rows, so no (batch, length, vocab) fp32 tensor of either model is ever built:

    loss, parts = kd_loss(student_rows, targets, teacher_rows, divergence="forward",
                          temperature=2.0, alpha=0.5, vocab_size=len(tokenizer),
                          student_head=lm_head, teacher_head=teacher_lm_head)
    loss, parts = topk_kd_loss(student_rows, targets, topk_ids, topk_logprobs, valid, ...)

| name        | file            | per token                                               |
|-------------|-----------------|---------------------------------------------------------|
| forward     | forward_kl.py   | KL(p_t || p_s) (Hinton et al.; the seeds' loss)          |
| reverse     | reverse_kl.py   | KL(p_s || p_t) (mode seeking; MiniLLM)                   |
| jsd         | jsd.py          | beta KL(p_t || m) + (1 - beta) KL(p_s || m), m mixture  |
| offline-topk| topk.py         | KL over the teacher's stored top-K ids (tail: ignore/bucket) |
"""

from __future__ import annotations

from cotdistill.losses.chunked import IGNORE_INDEX, kd_loss, masked_rows, topk_kd_loss
from cotdistill.losses.divergences import DIVERGENCES
from cotdistill.losses.forward_kl import forward_kl
from cotdistill.losses.jsd import generalized_jsd
from cotdistill.losses.reverse_kl import reverse_kl

__all__ = ["DIVERGENCES", "IGNORE_INDEX", "forward_kl", "generalized_jsd", "kd_loss",
           "masked_rows", "reverse_kl", "topk_kd_loss"]
