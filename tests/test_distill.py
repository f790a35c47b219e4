"""Logit distillation: the loss against a hand computation, and training with a teacher."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from cotdistill.distill import distillation_loss
from cotdistill.errors import InputError
from cotdistill.train import TrainConfig, prepare, run_train
from tests.test_train import sft_record, write_sft


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(x / t) for x in row]
    return [e / sum(exps) for e in exps]


def _by_hand(student, teacher, labels, t: float, alpha: float) -> float:
    """Per-token alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE, averaged over label tokens."""
    total, count = 0.0, 0
    for b in range(len(labels)):
        for i in range(len(labels[b]) - 1):
            target = labels[b][i + 1]
            if target == -100:
                continue
            p_t, p_s = _softmax(teacher[b][i], t), _softmax(student[b][i], t)
            kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
            ce = -math.log(_softmax(student[b][i], 1.0)[target])
            total += alpha * t * t * kl + (1 - alpha) * ce
            count += 1
    return total / count


STUDENT = [[[1.0, 0.5, -1.0], [0.2, 0.1, 0.0], [2.0, -2.0, 0.5], [0.0, 0.0, 3.0]],
           [[-1.0, 1.0, 0.0], [0.3, 0.3, -0.3], [1.5, 0.0, 0.0], [9.0, 9.0, 9.0]]]
TEACHER = [[[0.5, 0.5, 0.0], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
           [[0.0, 3.0, -3.0], [1.0, 0.0, 1.0], [-0.5, 0.5, 2.5], [0.0, 0.0, 0.0]]]
# Position 0 (prompt) and padding are -100; the last logits predict nothing.
LABELS = [[-100, 2, 0, 1], [-100, -100, 1, -100]]


@pytest.mark.parametrize(("t", "alpha"), [(1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (0.5, 0.0)])
def test_loss_equals_hand_computation(t: float, alpha: float) -> None:
    import torch

    loss, parts = distillation_loss(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS),
        temperature=t, alpha=alpha,
    )
    assert loss.item() == pytest.approx(_by_hand(STUDENT, TEACHER, LABELS, t, alpha), rel=1e-5)
    assert parts["distill_kl"] >= 0


def test_num_items_sets_the_denominator_and_alpha_zero_is_plain_ce() -> None:
    import torch
    import torch.nn.functional as F

    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    mean, _ = distillation_loss(s, t, y, temperature=2.0, alpha=0.5)
    summed, _ = distillation_loss(s, t, y, temperature=2.0, alpha=0.5, num_items=8)
    assert summed.item() == pytest.approx(mean.item() * 4 / 8)
    ce, _ = distillation_loss(s, t, y, temperature=3.0, alpha=0.0)
    expected = F.cross_entropy(s[:, :-1].reshape(-1, 3), y[:, 1:].reshape(-1), ignore_index=-100)
    assert ce.item() == pytest.approx(expected.item())
    same, parts = distillation_loss(s, s.clone(), y, temperature=2.0, alpha=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6) and parts["distill_kl"] == pytest.approx(0)


@pytest.mark.train
def test_training_with_a_teacher_runs(tiny_model: Path, tiny_teacher: Path,
                                      tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(12)])
    out = tmp_path / "kd"
    manifest = run_train(TrainConfig(
        data=[data], student=str(tiny_model), teacher=str(tiny_teacher), out=out, max_steps=4,
        learning_rate=3e-3, batch_size=4, logging_steps=1, distill_temperature=2.0,
        distill_alpha=0.7, padding_free=True,
    ))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 4
    # The logged loss is the mix of its two logged parts (at T=2: 0.7 * 4 * KL + 0.3 * CE).
    first = steps[0]
    assert first["loss"] == pytest.approx(
        0.7 * 4 * first["distill_kl"] + 0.3 * first["distill_ce"], rel=1e-3)
    assert first["distill_kl"] > 0  # two different random models disagree
    assert steps[-1]["loss"] < first["loss"]
    assert manifest["distillation"] and manifest["teacher_model"] == str(tiny_teacher)
    assert (out / "model.safetensors").exists()


def test_different_tokenizers_stop_before_loading_models(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    import cotdistill.train as train

    other = tmp_path / "other_teacher"
    shutil.copytree(tiny_teacher, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|think|>"])
    tok.save_pretrained(other)
    monkeypatch.setattr(train, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(0)])
    config = TrainConfig(data=[data], student=str(tiny_model), teacher=str(other),
                         out=tmp_path / "kd")
    with pytest.raises(InputError, match="share a tokenizer") as info:
        train.run_train(config)
    assert info.value.field == "teacher"
    # The same teacher with the student's tokenizer passes the check.
    assert prepare(config.model_copy(update={"teacher": str(tiny_teacher)})).teacher_path
