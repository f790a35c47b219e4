"""A trained student is saved in the dtype it is served in, its fp32 master beside it, and
training that continues from it starts from the master (tiny models only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.models import saved_dtypes
from cotdistill.train.config import TrainConfig
from cotdistill.train.prepare import prepare
from cotdistill.train.stage import run_train
from cotdistill.train.trainer import build_trainer
from tests.helpers.sft import sft_record, write_sft


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    return write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(8)])


@pytest.fixture
def bf16_teacher(tiny_model: Path, tmp_path: Path) -> Path:
    """The tiny model stored in bfloat16, as the embedded teacher is."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "teacher-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


def config_for(data: Path, student: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=[data], student=str(student), out=out, max_steps=3, learning_rate=1e-3,
                  batch_size=4, logging_steps=1, save_steps=100)
    return TrainConfig(**{**values, **overrides})


def weights_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


@pytest.mark.train
def test_saved_in_the_teachers_dtype_with_the_fp32_master_beside(
        bf16_teacher: Path, sft_file: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    out = tmp_path / "student"
    manifest = run_train(config_for(sft_file, bf16_teacher, out))
    assert manifest["save_dtype"] == "bfloat16"
    assert saved_dtypes(out) == {"BF16"}
    saved = json.loads((out / "config.json").read_text())
    assert saved["dtype"] == "bfloat16"
    assert saved["use_cache"] is True  # TRL trains without the KV cache; served with it
    assert weights_bytes(out) <= weights_bytes(bf16_teacher)
    assert manifest["outputs"]["master"] == str(out / "master")
    assert saved_dtypes(out / "master") == {"F32"}
    assert not (out / "master" / "training_args.bin").exists()
    # The served weights are the master's, rounded.
    served, master = load_file(out / "model.safetensors"), load_file(
        out / "master" / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(served[name], master[name].to(torch.bfloat16))
    assert not torch.equal(master[name], master[name].to(torch.bfloat16).float())

    # Training on from this student (a refinement round, a chain) starts from the master.
    again = config_for(sft_file, out, tmp_path / "round2")
    prepared = prepare(again)
    assert prepared.weights_path == str(out / "master")
    assert prepared.save_dtype == "bfloat16"  # served as its parent is
    trainer = build_trainer(again, prepared, tmp_path / "round2")
    loaded = dict(trainer.model.named_parameters())[name]
    assert loaded.dtype == torch.float32 and torch.equal(loaded.detach(), master[name])

    # LoRA freezes the base: it trains on the folder that is served, which its adapter names.
    assert prepare(again.model_copy(update={"lora": True})).weights_path == str(out)


@pytest.mark.train
def test_save_dtype_float32_keeps_fp32_and_drops_a_stale_master(
        bf16_teacher: Path, sft_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "student"
    run_train(config_for(sft_file, bf16_teacher, out))
    assert (out / "master").is_dir()
    manifest = run_train(config_for(sft_file, bf16_teacher, out, save_dtype="float32",
                                    max_steps=4))
    assert manifest["save_dtype"] == "float32" and "master" not in manifest["outputs"]
    assert saved_dtypes(out) == {"F32"}
    assert not (out / "master").exists()  # it would be trained from next time


@pytest.mark.train
def test_lora_merged_folder_is_saved_as_served(bf16_teacher: Path, sft_file: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "lora"
    run_train(config_for(sft_file, bf16_teacher, out, lora=True, merge=True, lora_r=4,
                         lora_target_modules=["q_proj", "v_proj"]))
    assert saved_dtypes(out / "merged") == {"BF16"}
    assert weights_bytes(out / "merged") <= weights_bytes(bf16_teacher)
    assert not (out / "master").exists()  # the adapter is what was trained
