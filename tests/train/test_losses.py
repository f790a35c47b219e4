"""The distillation losses: zero at equality, chunked == unchunked, top-K == dense at K = V."""

from __future__ import annotations

import math

import pytest

from cotdistill.losses import forward_kl, generalized_jsd, kd_loss, reverse_kl, topk_kd_loss
from cotdistill.losses.topk import topk_kl


def _logits(rows: int, vocab: int, seed: int, scale: float = 3.0):
    import torch

    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("name", ["forward", "reverse", "jsd"])
def test_each_divergence_is_zero_when_student_equals_teacher(name: str) -> None:
    import torch

    fn = {"forward": forward_kl, "reverse": reverse_kl, "jsd": generalized_jsd}[name]
    z = torch.log_softmax(_logits(6, 50, 0), -1)
    assert fn(z, z.clone()).abs().max().item() < 1e-6
    other = torch.log_softmax(_logits(6, 50, 1), -1)
    assert (fn(z, other) > 1e-3).all()  # and positive when they differ


def test_divergences_match_their_formulas() -> None:
    import torch

    s, t = torch.log_softmax(_logits(4, 7, 2), -1), torch.log_softmax(_logits(4, 7, 3), -1)
    ps, pt = s.exp(), t.exp()
    assert torch.allclose(forward_kl(s, t), (pt * (t - s)).sum(-1), atol=1e-6)
    assert torch.allclose(reverse_kl(s, t), (ps * (s - t)).sum(-1), atol=1e-6)
    beta = 0.3
    m = beta * pt + (1 - beta) * ps
    expected = beta * (pt * (t - m.log())).sum(-1) + (1 - beta) * (ps * (s - m.log())).sum(-1)
    assert torch.allclose(generalized_jsd(s, t, beta), expected, atol=1e-6)
    with pytest.raises(ValueError, match="0 < beta < 1"):
        generalized_jsd(s, t, 1.0)


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_chunked_equals_unchunked_loss_and_gradients(divergence: str) -> None:
    import torch

    hidden = _logits(37, 16, 4, 1.0).requires_grad_(True)
    head = torch.nn.Linear(16, 61, bias=False)
    teacher = _logits(37, 16, 5, 1.0)
    teacher_head = torch.nn.Linear(16, 64, bias=False)  # a padded teacher: 3 extra rows
    targets = torch.randint(0, 61, (37,), generator=torch.Generator().manual_seed(6))
    results = []
    # A plain linear head takes the fused path (gradients in the forward pass); any other
    # callable the checkpointed one; full logits with no head plain autograd. All agree.
    not_linear = lambda h: head(h)  # noqa: E731
    for chunk, student_head in ((None, head), (5, head), (1000, head), (5, not_linear),
                                (None, not_linear)):
        hidden.grad, head.weight.grad = None, None
        loss, parts = kd_loss(hidden, targets, teacher, divergence=divergence, beta=0.4,
                              temperature=2.0, alpha=0.6, vocab_size=61,
                              student_head=student_head, teacher_head=teacher_head,
                              chunk_size=chunk, num_items=50)
        loss.backward()
        results.append((loss.item(), hidden.grad.clone(), head.weight.grad.clone(), parts))
    base = results[0]
    for other in results[1:]:
        assert other[0] == pytest.approx(base[0], abs=1e-5)
        assert torch.allclose(other[1], base[1], atol=1e-5)
        assert torch.allclose(other[2], base[2], atol=1e-5)
    assert base[3]["distill_kl"] > 0


def test_padded_vocabulary_rows_are_ignored() -> None:
    """Logits past the tokenizer's length change nothing: both sides are cut there."""
    import torch

    s, t = _logits(5, 20, 7), _logits(5, 24, 8)
    y = torch.randint(0, 20, (5,))
    padded_s = torch.cat([s, torch.full((5, 4), 50.0)], -1)  # huge logits on non-tokens
    a, _ = kd_loss(s, y, t[:, :20], temperature=2.0, alpha=0.5, vocab_size=None)
    b, _ = kd_loss(padded_s, y, t, temperature=2.0, alpha=0.5, vocab_size=20)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def _as_topk(teacher_logits, k: int):
    """What vLLM stores: the K best ids and their raw log-probabilities."""
    import torch

    logp = torch.log_softmax(teacher_logits, -1)
    values, ids = logp.topk(k, dim=-1)
    return ids.int(), values


@pytest.mark.parametrize("tail", ["ignore", "bucket"])
def test_topk_equals_dense_when_k_is_the_vocabulary(tail: str) -> None:
    import torch

    s, t = _logits(9, 40, 9).requires_grad_(True), _logits(9, 40, 10)
    y = torch.randint(0, 40, (9,), generator=torch.Generator().manual_seed(1))
    ids, values = _as_topk(t, 40)
    valid = torch.ones(9, dtype=torch.bool)
    dense, _ = kd_loss(s, y, t, temperature=2.0, alpha=0.7)
    (g_dense,) = torch.autograd.grad(dense, s)
    top, _ = topk_kd_loss(s, y, ids, values, valid, temperature=2.0, alpha=0.7, tail=tail,
                          chunk_size=4)
    (g_top,) = torch.autograd.grad(top, s)
    assert top.item() == pytest.approx(dense.item(), abs=1e-5)
    assert torch.allclose(g_top, g_dense, atol=1e-5)
    # Through a linear head (the fused path), chunked, against the same in full logits.
    hidden = _logits(9, 8, 12, 1.0).requires_grad_(True)
    head = torch.nn.Linear(8, 40, bias=False)
    fused, _ = topk_kd_loss(hidden, y, ids, values, valid, temperature=2.0, alpha=0.7,
                            tail=tail, student_head=head, chunk_size=2)
    fused.backward()
    plain, _ = topk_kd_loss(head(hidden), y, ids, values, valid, temperature=2.0, alpha=0.7,
                            tail=tail)
    assert fused.item() == pytest.approx(plain.item(), abs=1e-5)
    g_hidden, g_weight = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    plain.backward()
    assert torch.allclose(g_hidden, hidden.grad, atol=1e-5)
    assert torch.allclose(g_weight, head.weight.grad, atol=1e-5)
    # float16 storage, as on disk: finite, and close.
    half, _ = topk_kd_loss(s, y, ids, values.half(), valid, temperature=2.0, alpha=0.7,
                           tail=tail)
    (g_half,) = torch.autograd.grad(half, s)
    assert math.isfinite(half.item()) and torch.isfinite(g_half).all()
    assert half.item() == pytest.approx(dense.item(), rel=1e-2)


def test_topk_tail_treatment() -> None:
    import torch

    t = _logits(3, 30, 11)
    ids, values = _as_topk(t, 5)
    # ignore: zero when the student's tempered distribution on the K ids is the renormalised
    # teacher's and it puts no mass elsewhere.
    student = torch.full((3, 30), -1e4).scatter(-1, ids.long(), values / 1.0)
    assert topk_kl(student, ids, values, temperature=1.0).abs().max() < 1e-5
    # bucket: that student lacks the teacher's tail mass, so the bucket term is positive; the
    # teacher itself scores zero (exactly at T = 1, where the tail needs no tempering).
    assert (topk_kl(student, ids, values, temperature=1.0, tail="bucket") > 1e-3).all()
    assert topk_kl(t, ids, values, temperature=1.0, tail="bucket").abs().max() < 1e-5
    # Rows marked invalid get CE only.
    y = torch.zeros(3, dtype=torch.long)
    none = torch.zeros(3, dtype=torch.bool)
    loss, parts = topk_kd_loss(t, y, ids, values, none, temperature=2.0, alpha=1.0)
    assert loss.item() == 0.0 and parts["distill_kl"] == 0.0
    # Ids outside the student's vocabulary (a padded teacher) are dropped, not gathered.
    bad = ids.clone()
    bad[:, -1] = 31
    assert torch.isfinite(topk_kl(t, bad, values, temperature=1.0)).all()


def test_topk_distill_kl_is_the_mean_over_rows_with_teacher_data() -> None:
    """Rows without teacher data (alignment failed, no stored rows) have no KL: they must not
    pull the logged figure towards 0 (issue 19, item 19)."""
    import torch

    t, s = _logits(6, 30, 12), _logits(6, 30, 13)
    ids, values = _as_topk(t, 5)
    y = torch.zeros(6, dtype=torch.long)
    valid = torch.tensor([True, False, True, False, False, True])
    _, parts = topk_kd_loss(s, y, ids, values, valid, temperature=2.0, alpha=0.5)
    per_row = topk_kl(s, ids, values, temperature=2.0)
    assert parts["distill_kl"] == pytest.approx(per_row[valid].mean().item(), rel=1e-5)
    assert parts["distill_kl_share"] == pytest.approx(0.5)
    # All rows with teacher data: the plain mean, share 1.
    _, full = topk_kd_loss(s, y, ids, values, torch.ones(6, dtype=torch.bool),
                           temperature=2.0, alpha=0.5)
    assert full["distill_kl"] == pytest.approx(per_row.mean().item(), rel=1e-5)
    assert full["distill_kl_share"] == 1.0
