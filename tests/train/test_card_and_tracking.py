"""The student's model card, and losses reported to TensorBoard (tiny models only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.cards import CARD, read_card
from cotdistill.train.config import TrainConfig
from cotdistill.train.stage import run_train
from tests.helpers.sft import sft_record, write_sft


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    return write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(8)])


def scalars(logdir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = {p.parent for p in logdir.rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(run))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.train
def test_distillation_losses_reach_tensorboard_and_the_card(
        tiny_model: Path, tiny_teacher: Path, sft_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    config = TrainConfig(data=[sft_file], student=str(tiny_model), teacher=str(tiny_teacher),
                         out=out, max_steps=3, learning_rate=1e-3, batch_size=4,
                         logging_steps=1, save_steps=100, report_to="tensorboard",
                         run_name="kd-run", distill_alpha=0.7)
    manifest = run_train(config)
    logged = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]

    assert manifest["tracker"]["logdir"] == str(out / "tensorboard" / "kd-run")
    found = scalars(out / "tensorboard" / "kd-run")
    for term in ("loss", "distill_kl", "distill_ce"):
        assert found[f"train/{term}"] == pytest.approx(
            [e[term] for e in logged if term in e and "train_loss" not in e], rel=1e-5)
    assert not list((out / "checkpoints").rglob("events.out.tfevents.*"))

    meta, body = read_card(out / CARD)
    assert meta["base_model"] == str(tiny_model)
    assert meta["datasets"] == [str(sft_file)]
    assert meta["library_name"] == "transformers"
    assert "knowledge-distillation" in meta["tags"]
    assert "(1 - alpha) * CE + alpha * T^2 * KL(p_t || p_s)` with alpha = 0.7, T = 2" in body
    assert "| learning_rate | `0.001` |" in body and "| distill_alpha | `0.7` |" in body
    assert f"| train_loss (mean over the run) | {round(manifest['train_loss'], 4)} | 3 |" in body
    last = [e for e in logged if "distill_kl" in e][-1]
    assert f"| distill_kl (last logged) | {round(last['distill_kl'], 4)} | 3 |" in body


@pytest.mark.train
def test_no_tracker_by_default_and_a_lora_card(tiny_model: Path, sft_file: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "lora"
    manifest = run_train(TrainConfig(data=[sft_file], student=str(tiny_model), out=out,
                                     max_steps=2, batch_size=4, lora=True, lora_r=4))
    assert manifest["tracker"] is None
    assert not list(out.rglob("events.out.tfevents.*"))
    meta, body = read_card(out / CARD)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"] and "sft" in meta["tags"]
    assert "Supervised fine-tuning of a LoRA adapter" in body and "| lora_r | `4` |" in body


def test_a_missing_tracker_package_is_named_before_any_work(
        sft_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from cotdistill.errors import InputError
    from cotdistill.train.prepare import prepare

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    config = TrainConfig(data=[sft_file], out=tmp_path / "s", report_to="wandb")
    with pytest.raises(InputError, match="--report-to wandb needs the 'wandb' package") as error:
        prepare(config)
    assert error.value.field == "report_to"
