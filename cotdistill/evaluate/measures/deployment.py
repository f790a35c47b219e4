"""Size and memory of each evaluated model (the deployment table's inputs; latency in
`latency.py`, the table in `deployment_table.py`).

Per model, from its served folder and its evaluation run:

- parameters (safetensors headers), size on disk (the folder's own files);
- weights memory: parameters x bytes per element of the dtype the engine served;
- model memory for one request: weights + the KV cache of one request of the longest latency
  prompt plus `max_tokens` (2 x layers x kv heads x head dim x dtype bytes per token) + an
  activation estimate of its prefill (tokens x (4 hidden + 2 intermediate) x dtype bytes, plus
  one row of float32 logits). This is what the model itself needs, as opposed to the serving
  engine's resident memory, which holds the whole KV-cache reservation (gigabytes on CPU) and
  the Python/torch runtime; that one is kept beside it ("engine peak"), with the size of the
  reservation (the engine's KV blocks x block size x bytes per token);
- single-request latency: the first `latency_prompts` evaluation prompts sent one at a time
  (batch 1, greedy), time to first token, decode time per token, and end-to-end p50/p95. The
  engine has just served those prompts, and a prefix cache would hand their prefill back for
  free, so each timed prompt starts with a tag the engine has never seen (`unseen`), which
  makes every cache block of it new; the in-process vLLM engine's prefix cache is also reset
  before each timed request, so a template prefix shared by all prompts is not reused either.
  One warm-up request (its own tag) pays for lazy initialisation and is never timed;
- batch throughput: output tokens per second of the evaluation run itself (whole batches).

On the in-process vLLM engine the requests go through `LLM.llm_engine.add_request` / `step()`
with `RequestOutputKind.DELTA`, so the first step that returns a token marks the first token
(wall clock, as a caller sees it). vLLM's own `RequestOutput.metrics` stays None on the offline
engine (`LLM` sets `disable_log_stats=True`). Other backends are timed end to end per request
only (no time to first token).

    latency = measure_latency(backend, conversations, sampling)   # while the backend is open
    table = deployment_table(summary["models"], "teacher", engine_dtype="auto", max_tokens=512)
    lines = render_deployment(table, "teacher")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path
from typing import Any

from cotdistill.backends.sizing import kv_bytes_per_token, read_model_config

DTYPE_BYTES = {"float32": 4, "float": 4, "bfloat16": 2, "float16": 2, "half": 2}


@dataclass(frozen=True)
class Timing:
    """One batch-1 request: seconds to its first token (None if not observable) and to its end."""

    ttft_s: float | None
    e2e_s: float
    output_tokens: int | None  # None: the backend could not count them
    prompt_tokens: int | None


# --- sizes and memory --------------------------------------------------------------------------


def disk_bytes(model_dir: str | Path | None) -> int | None:
    """Bytes of the folder's own files (sub-folders such as checkpoints are not the model)."""
    if not model_dir or not Path(model_dir).is_dir():
        return None
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.is_file())


# Tensors of a quantised checkpoint that store how to read the weights, not model parameters.
QUANT_AUX = frozenset({
    "weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape", "weight_global_scale",
    "input_scale", "input_zero_point", "input_global_scale", "output_scale",
    "output_zero_point", "k_scale", "v_scale",
})


# safetensors dtype names -> bytes per element.
SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2,
                     "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def quantization_label(config: Mapping[str, Any] | None) -> str | None:
    """'w8a8', 'w4a16' (weight and activation bits of a compressed-tensors checkpoint, as
    written by `cotdistill quantize`), another checkpoint's quant_method, None if unquantised."""
    quant = (config or {}).get("quantization_config")
    if not isinstance(quant, Mapping):
        return None
    for group in (quant.get("config_groups") or {}).values():
        weights = (group or {}).get("weights") if isinstance(group, Mapping) else None
        if isinstance(weights, Mapping) and weights.get("num_bits"):
            activations = group.get("input_activations") or {}
            return f"w{weights['num_bits']}a{activations.get('num_bits') or 16}"
    return str(quant.get("quant_method") or "quantized")


def quantized_weights_bytes(model_dir: str | Path | None, dtype: str | None) -> int | None:
    """Weights memory of a quantised checkpoint, from its safetensors headers: integer tensors
    (the quantised weights, packed or not) at their stored size, which vLLM keeps (its CPU
    kernels repack them, same bytes), floating tensors (embeddings, norms, scales) at the served
    dtype. None for an unquantised folder, whose weights are parameters x dtype bytes."""
    size = DTYPE_BYTES.get(str(dtype)) if dtype else None
    folder = Path(model_dir) if model_dir else None
    if folder is None or size is None or quantization_label(read_model_config(str(folder))) \
            is None:
        return None
    total = 0
    for file in sorted(folder.glob("*.safetensors")):
        with open(file, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            count = prod(entry["shape"])
            dtype_name = entry["dtype"]
            total += count * (size if dtype_name.startswith(("F", "BF")) and
                              not dtype_name.startswith("F8") else SAFETENSORS_BYTES[dtype_name])
    return total or None


def served_dtype(engine_dtype: str, config: Mapping[str, Any] | None) -> str | None:
    """The dtype an engine serves when it was not measured: the one asked for, else vLLM's
    `auto` rule (half-precision checkpoints keep their dtype, float32 ones go to the platform's
    first choice, bfloat16 on current GPUs and on CPUs with AVX-512 BF16)."""
    if engine_dtype != "auto":
        return engine_dtype
    stored = (config or {}).get("dtype") or (config or {}).get("torch_dtype")
    if stored is None:
        return None
    return str(stored) if str(stored) in ("bfloat16", "float16") else "bfloat16"


def activation_bytes(config: Mapping[str, Any], tokens: int, dtype_bytes: int) -> int:
    """Rough peak activations of one prefill: the residual stream, attention input/output and
    the MLP's gate and up projections live at once; plus float32 logits of the last token."""
    config = config.get("text_config") or config  # multimodal wrappers nest the text model
    hidden = int(config["hidden_size"])
    intermediate = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config.get("vocab_size") or 0)
    return tokens * (4 * hidden + 2 * intermediate) * dtype_bytes + vocab * 4


def model_memory(
    parameters: int | None,
    config: Mapping[str, Any] | None,
    dtype: str | None,
    request_tokens: int,
    weights_bytes: int | None = None,
) -> dict[str, int | None]:
    """Weights, one request's KV cache and activations, and their sum (bytes). The weights are
    parameters x dtype bytes, or `weights_bytes` when given (a quantised checkpoint)."""
    size = DTYPE_BYTES.get(str(dtype)) if dtype else None
    if parameters is None or size is None:
        return {"weights": None, "kv_one_request": None, "activations": None, "total": None}
    weights = parameters * size if weights_bytes is None else weights_bytes
    try:
        kv = kv_bytes_per_token(dict(config), str(dtype)) * request_tokens if config else None
        act = activation_bytes(config, request_tokens, size) if config else None
    except (KeyError, TypeError, ValueError):
        kv = act = None  # a config without the usual decoder keys: weights only
    total = weights + kv + act if kv is not None and act is not None else None
    return {"weights": weights, "kv_one_request": kv, "activations": act, "total": total}
