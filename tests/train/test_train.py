"""The training stage: data checks, prompt masking, SFT, LoRA, resume (tiny models only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.config import load_config
from cotdistill.errors import InputError
from cotdistill.train.config import TrainConfig
from cotdistill.train.data import (
    Tokenized,
    apply_teacher_weights,
    load_examples,
    split_eval,
    tokenize_example,
)
from cotdistill.train.prepare import prepare
from cotdistill.train.stage import run_train
from cotdistill.train.trainer import build_trainer
from tests.helpers.sft import sft_record, write_sft


@pytest.fixture
def sft_file(tmp_path: Path) -> Path:
    return write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(16)])


def fast(data: Path, student: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=[data], student=str(student), out=out, max_steps=4, learning_rate=1e-3,
                  batch_size=4, logging_steps=1, save_steps=100)
    values.update(overrides)
    return TrainConfig(**values)


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- config and data


def test_teacher_weights_accept_flag_string_json_and_yaml(tmp_path: Path) -> None:
    assert TrainConfig(teacher_weights="big=2, small=0.5").teacher_weights == {
        "big": 2.0, "small": 0.5}
    assert TrainConfig(teacher_weights='{"a": 3}').teacher_weights == {"a": 3.0}
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text("train:\n  lora: true\n  teacher_weights: {a: 1.5}\n  epochs: 1\n")
    config = load_config(TrainConfig, yaml_file, section="train", overrides={"epochs": 3.0})
    assert (config.lora, config.teacher_weights, config.epochs) == (True, {"a": 1.5}, 3.0)
    with pytest.raises(InputError, match="teacher_weights"):
        load_config(TrainConfig, overrides={"teacher_weights": "a=-1"})


@pytest.mark.parametrize(
    ("lines", "line", "field"),
    [
        (['{"messages": [{"role": "user", "content": "q"}]}'], 1, "messages"),
        ([json.dumps(sft_record(0)), "{not json"], 2, None),
        ([json.dumps(sft_record(0)), '{"messages": [{"role": "bot", "content": "x"}]}'], 2,
         "messages.0.role"),
        (['{"messages": [{"role": "assistant", "content": "a"}]}'], 1, "messages"),
        (['{"messages": [{"role": "user", "content": "q"}, '
          '{"role": "assistant", "content": "  "}]}'], 1, "messages.content"),
    ],
)
def test_bad_records_name_file_line_and_field(
    tmp_path: Path, lines: list[str], line: int, field: str | None
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        load_examples([path])
    assert (info.value.file, info.value.line, info.value.field) == (str(path), line, field)


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="no training records"):
        load_examples([empty])


def test_datasets_folder_and_several_files(tmp_path: Path, sft_file: Path) -> None:
    from datasets import Dataset

    folder = tmp_path / "ds"
    Dataset.from_list([sft_record(i, "t2") for i in range(3)]).save_to_disk(str(folder))
    examples = load_examples([sft_file, folder])
    assert len(examples) == 19
    assert [e.teacher for e in examples[-3:]] == ["t2"] * 3
    assert examples[-1].completion[0]["role"] == "assistant"
    assert examples[-1].prompt[-1]["role"] == "user"


def test_prompt_is_masked_and_truncation_counted(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    (example,) = load_examples([write_sft(tmp_path / "one.jsonl", [sft_record(3)])])
    row = tokenize_example(tok, example, max_length=1024)
    target = [t for t, m in zip(row.input_ids, row.completion_mask, strict=True) if m]
    prompt = [t for t, m in zip(row.input_ids, row.completion_mask, strict=True) if not m]
    assert tok.decode(target) == example.completion[0]["content"] + "<|im_end|>\n"
    assert tok.decode(prompt) == tok.apply_chat_template(
        example.prompt, add_generation_prompt=True, tokenize=False)
    assert row.truncated_tokens == 0

    cut = tokenize_example(tok, example, max_length=len(prompt) + 3)
    assert len(cut.input_ids) == len(prompt) + 3
    assert sum(cut.completion_mask) == 3
    assert cut.truncated_tokens == len(row.input_ids) - len(prompt) - 3

    with pytest.raises(InputError, match="prompt is") as info:
        tokenize_example(tok, example, max_length=len(prompt))
    assert (info.value.line, info.value.field) == (1, "messages")


def _rows(teachers: list[str], problems: list[str] | None = None) -> list[Tokenized]:
    problems = problems or [f"p{i}" for i in range(len(teachers))]
    return [Tokenized([1], [1], t, p) for t, p in zip(teachers, problems, strict=True)]


def test_teacher_weights_resample_rows() -> None:
    rows = _rows(["a"] * 200 + ["b"] * 200)
    out = apply_teacher_weights(rows, {"a": 2.0, "b": 0.5}, seed=0)
    counts = {t: sum(r.teacher == t for r in out) for t in "ab"}
    assert counts["a"] == 400
    assert 70 < counts["b"] < 130
    assert apply_teacher_weights(rows, {}, seed=0) == rows
    assert not any(r.teacher == "b" for r in apply_teacher_weights(rows, {"b": 0}, seed=0))
    with pytest.raises(InputError, match="no records from teacher"):
        apply_teacher_weights(rows, {"c": 1.0}, seed=0)


def test_eval_split_holds_out_whole_problems() -> None:
    rows = _rows(["t"] * 40, [f"p{i // 4}" for i in range(40)])
    train, held = split_eval(rows, 0.2, seed=1)
    assert len(train) + len(held) == 40
    assert len({r.problem_id for r in held}) == 2
    assert not {r.problem_id for r in held} & {r.problem_id for r in train}


# ---------------------------------------------------------------- real training (tiny models)


@pytest.mark.train
def test_collator_batch_masks_prompt_tokens(tiny_model: Path, sft_file: Path,
                                            tmp_path: Path) -> None:
    config = fast(sft_file, tiny_model, tmp_path / "out")
    trainer = build_trainer(config, prepare(config), tmp_path / "out")
    batch = next(iter(trainer.get_train_dataloader()))
    tok = trainer.processing_class
    for ids, labels, attention in zip(batch["input_ids"], batch["labels"],
                                      batch["attention_mask"], strict=True):
        trained = ids[labels != -100]
        text = tok.decode(trained)
        assert "What is" not in text and "Solve" not in text  # no prompt token is learned
        assert text.endswith("<|im_end|>\n") and "The answer is" in text
        # Everything after the assistant header is trained; padding never is.
        start = int((labels != -100).nonzero()[0])
        assert tok.decode(ids[:start]).endswith("<|im_start|>assistant\n")
        assert bool((labels[attention == 0] == -100).all())
        real = attention[start:] == 1
        assert bool((labels[start:][real] == ids[start:][real]).all())


@pytest.mark.train
def test_cli_full_finetune_loss_goes_down(tiny_model: Path, sft_file: Path,
                                          tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from cotdistill.cli import main

    out = tmp_path / "student"
    code = main(["train", "--data", str(sft_file), "--student", str(tiny_model), "--out", str(out),
                 "--no-lora", "--max-steps", "12", "--learning-rate", "3e-3", "--batch-size", "4",
                 "--logging-steps", "1", "--eval-fraction", "0.25", "--max-length", "64"])
    assert code == 0
    losses = [e["loss"] for e in log_lines(out) if "loss" in e]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert all(e["tokens_per_s"] > 0 for e in log_lines(out) if "loss" in e)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == 12
    assert manifest["counts"]["eval_examples"] == 4
    assert manifest["eval_loss"] is not None and manifest["peak_memory_bytes"] > 0
    assert manifest["inputs"][str(sft_file)]
    assert not (out / "training_args.bin").exists()
    # `out` is a plain model folder.
    model = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not model.model.embed_tokens.weight.equal(base.model.embed_tokens.weight)


@pytest.mark.train
def test_lora_changes_adapter_not_base_and_merges(tiny_model: Path, sft_file: Path,
                                                  tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    config = fast(sft_file, tiny_model, out, lora=True, merge=True, lora_r=4,
                  lora_target_modules=["q_proj", "v_proj"])
    prepared = prepare(config)
    trainer = build_trainer(config, prepared, out)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    lora_b = [k for k in before if "lora_B" in k]
    assert lora_b and all(not before[k].equal(after[k]) for k in lora_b)
    base = [k for k in before if "lora_" not in k]
    assert base and all(before[k].equal(after[k]) for k in base)

    manifest = run_train(config)
    assert (out / "adapter_config.json").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    assert manifest["outputs"]["merged"] == str(out / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out / "merged")
    original = AutoModelForCausalLM.from_pretrained(tiny_model)
    layer, orig = merged.model.layers[0].self_attn, original.model.layers[0].self_attn
    assert not torch.equal(layer.q_proj.weight, orig.q_proj.weight)
    assert torch.equal(layer.k_proj.weight, orig.k_proj.weight)  # not a target module


@pytest.mark.train
def test_resume_continues_at_checkpoint_step(tiny_model: Path, sft_file: Path,
                                             tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    config = fast(sft_file, tiny_model, out, max_steps=6, save_steps=3, save_total_limit=3)
    run_train(config)
    full = {e["step"]: e["loss"] for e in log_lines(out) if "loss" in e}
    # An interruption after the step-3 checkpoint: the later checkpoint and outputs never came.
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    (out / "manifest.json").unlink()

    manifest = run_train(config)
    assert manifest["resumed_from"] == str(out / "checkpoints" / "checkpoint-3")
    assert manifest["counts"]["steps"] == 6
    steps = [e["step"] for e in log_lines(out) if "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6]  # steps 4-6 trained once more, not twice in the log
    resumed = {e["step"]: e["loss"] for e in log_lines(out) if "loss" in e}
    # Same optimizer state, schedule and data order as the uninterrupted run.
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(full[step], rel=1e-4)


def test_shipped_accelerate_config_is_valid_fsdp() -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    path = Path(__file__).resolve().parents[2] / "configs" / "accelerate_fsdp.yaml"
    config = ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == "FSDP"
    # A normal model folder at the end needs the full state dict gathered for saving.
    assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


# ---------------------------------------------------------------- issue 14: wrong models, figures


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.train
def test_resume_only_from_checkpoints_of_the_same_data_and_config(
    tiny_model: Path, sft_file: Path, tmp_path: Path
) -> None:
    import resource

    import torch

    out = tmp_path / "run"
    config = fast(sft_file, tiny_model, out, max_steps=2)
    first = run_train(config)
    assert first["counts"]["new_steps"] == 2
    stamp = json.loads((out / "checkpoints" / "run.json").read_text())
    assert stamp["data_sha256"] and "save_steps" not in stamp["config"]
    before = _weights(out)

    # Unchanged (but for how often it saves): resumes the final checkpoint, trains 0 steps.
    # A 1.5 GB spike first: the peak reported for the rerun is its own, not the process's.
    spike = b"x" * 1_500_000_000
    del spike
    lifetime_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    again = run_train(fast(sft_file, tiny_model, out, max_steps=2, save_steps=50))
    assert again["resumed_from"] == str(out / "checkpoints" / "checkpoint-2")
    assert again["counts"]["new_steps"] == 0
    assert again["peak_memory_bytes"] < lifetime_peak - 1_000_000_000
    assert "RSS" in again["peak_memory_what"]

    # The filter kept other traces: the old checkpoint must not be resumed (nor re-saved).
    write_sft(sft_file, [sft_record(i) for i in range(20, 36)])
    changed = run_train(config)
    assert changed["resumed_from"] is None
    assert changed["counts"]["new_steps"] == 2
    after = _weights(out)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert len(list(out.glob("checkpoints.stale-*"))) == 1


def test_stamp_names_what_changed(sft_file: Path, tmp_path: Path) -> None:
    from cotdistill.train.checkpoints import run_stamp, stamp_difference

    base = run_stamp(fast(sft_file, Path("m"), tmp_path))
    assert stamp_difference(base, run_stamp(fast(sft_file, Path("m"), tmp_path,
                                                 save_steps=7, logging_steps=3))) is None
    why = stamp_difference(base, run_stamp(fast(sft_file, Path("m"), tmp_path,
                                                learning_rate=5e-4)))
    assert why is not None and "learning_rate" in why
    write_sft(sft_file, [sft_record(1)])
    assert "data" in stamp_difference(base, run_stamp(fast(sft_file, Path("m"), tmp_path)))
    # A student re-cut at the same path (pipeline `init` with other layers).
    start = tmp_path / "init"
    start.mkdir()
    (start / "model.safetensors").write_bytes(b"a" * 3_000_000)
    cut = run_stamp(fast(sft_file, start, tmp_path))
    (start / "model.safetensors").write_bytes(b"a" * 1_500_000 + b"b" + b"a" * 1_499_999)
    assert "student model's files changed" in stamp_difference(
        cut, run_stamp(fast(sft_file, start, tmp_path)))
    assert "no run.json" in stamp_difference(None, base)


@pytest.mark.train
@pytest.mark.parametrize("lora", [False, True])
def test_bf16_mixed_precision_keeps_fp32_master_weights(
    tiny_model: Path, sft_file: Path, tmp_path: Path, lora: bool
) -> None:
    import torch

    config = fast(sft_file, tiny_model, tmp_path / "out", dtype="bfloat16", lora=lora,
                  lora_r=4, max_steps=1)
    trainer = build_trainer(config, prepare(config), tmp_path / "out")
    assert trainer.args.bf16  # autocast, on this CPU too
    trainable = {p.dtype for p in trainer.model.parameters() if p.requires_grad}
    assert trainable == {torch.float32}
    frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    assert frozen == ({torch.bfloat16} if lora else set())
    trainer.train()  # one bf16-autocast step runs


@pytest.mark.train
def test_distillation_loss_is_the_same_with_gradient_accumulation(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path
) -> None:
    # Records of different lengths, so a loss averaged per micro-batch (instead of over the
    # tokens of the whole accumulated batch) would show.
    records = [sft_record(i) for i in range(8)]
    for i, record in enumerate(records):
        record["messages"][-1]["content"] += " Check: done." * (i % 4)
    data = write_sft(tmp_path / "sft.jsonl", records)

    def losses(batch: int, accumulate: int) -> list[float]:
        out = tmp_path / f"kd-{batch}x{accumulate}"
        run_train(fast(data, tiny_model, out, teacher=str(tiny_teacher), max_steps=2,
                       batch_size=batch, gradient_accumulation_steps=accumulate,
                       learning_rate=1e-2))
        return [e["loss"] for e in log_lines(out) if "loss" in e]

    whole = losses(4, 1)
    accumulated = losses(2, 2)
    assert len(whole) == len(accumulated) == 2
    # Same examples per optimizer step: the same loss, before and after the first update.
    assert accumulated == pytest.approx(whole, rel=2e-3)


def test_teacher_weights_is_a_real_flag_and_help_lists_yaml_only_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from cotdistill.cli import build_parser

    parser = build_parser()
    for text in ("big=2,small=0.5", '{"big": 2, "small": 0.5}'):
        args = parser.parse_args(["train", "--teacher-weights", text])
        config = load_config(TrainConfig, overrides={"teacher_weights": args.teacher_weights})
        assert config.teacher_weights == {"big": 2.0, "small": 0.5}
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--teacher-weights", "big"])
    assert "expected NAME=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--help"])
    assert "YAML file only (no flag): engine, generate, filter, students, evaluate" in " ".join(
        capsys.readouterr().out.split())


@pytest.mark.train
def test_compile_runs_compiled_decoder_layers_with_the_same_losses(
        tiny_model: Path, sft_file: Path, tmp_path: Path) -> None:
    import torch

    from cotdistill.train.stage import run_train

    losses = {}
    for compiled in (False, True):
        out = tmp_path / f"compile-{compiled}"
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        run_train(fast(sft_file, tiny_model, out, compile=compiled, max_steps=3,
                       logging_steps=1))
        losses[compiled] = [e["loss"] for e in log_lines(out) if "loss" in e]
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        assert (graphs > 0) == compiled  # the compiled run really ran compiled graphs
        # Regional compilation keeps parameter names: the saved folder is a plain model.
        assert not any(k.startswith("_orig_mod") for k in _weights(out))
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.train
def test_keep_checkpoints_false_deletes_them_once_finished(tiny_model: Path, sft_file: Path,
                                                           tmp_path: Path) -> None:
    kept = run_train(fast(sft_file, tiny_model, tmp_path / "kept", max_steps=2, save_steps=1))
    assert (tmp_path / "kept" / "checkpoints" / "checkpoint-2").is_dir()
    assert kept["checkpoints"] == "kept"
    out = tmp_path / "dropped"
    dropped = run_train(fast(sft_file, tiny_model, out, max_steps=2, save_steps=1,
                             keep_checkpoints=False))
    assert not (out / "checkpoints").exists()
    assert dropped["checkpoints"] == "deleted once finished"
    assert (out / "model.safetensors").is_file() and (out / "manifest.json").is_file()
    assert _weights(out).keys() == _weights(tmp_path / "kept").keys()
