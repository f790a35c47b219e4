"""The teacher-vs-student deployment table: size, memory, batch-1 latency, batch throughput.

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
import secrets
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from math import prod
from pathlib import Path
from typing import Any

from cotdistill.backends.sizing import kv_bytes_per_token, read_model_config
from cotdistill.config import SamplingConfig
from cotdistill.records import Message

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


# --- latency -----------------------------------------------------------------------------------


def unseen(conversation: list[Message], tag: str) -> list[Message]:
    """The conversation with `tag` opening its first message. vLLM caches prefixes by blocks
    chained on everything before them, so a new token at the very start leaves no cached block
    of the prompt beyond the chat template's opening tokens."""
    first, *rest = conversation
    return [first.model_copy(update={"content": f"[{tag}] {first.content}"}), *rest]


def fresh_tag() -> str:
    """A tag no earlier request can have carried (a server outlives evaluation runs); letters
    only, so no number joins a math question."""
    return "ref " + "".join(secrets.choice(string.ascii_lowercase) for _ in range(10))


def latency_prompts(
    conversations: Sequence[list[Message]], tag: Callable[[], str] = fresh_tag
) -> tuple[list[Message], list[list[Message]]]:
    """(warm-up, timed): every prompt tagged apart, so none of them, the warm-up included,
    was seen by the engine before, and the warm-up is not one of the timed prompts."""
    return unseen(conversations[0], tag()), [unseen(c, tag()) for c in conversations]


def _vllm_timings(
    llm: Any, warmup: list[Message], conversations: Sequence[list[Message]],
    sampling: SamplingConfig, progress: Callable[[int], None],
    template_kwargs: Mapping[str, Any],
) -> tuple[list[Timing], dict[str, Any]]:
    """Batch-1 requests through the in-process engine's add_request/step loop, the prefix
    cache reset before each timed one; also returns the served dtype, the tokens the engine's
    KV cache reservation holds and whether every reset succeeded."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    tokenizer = llm.get_tokenizer()
    params = SamplingParams(
        n=1, temperature=sampling.temperature, top_p=sampling.top_p,
        max_tokens=sampling.max_tokens, stop=sampling.stop or None,
        output_kind=RequestOutputKind.DELTA,
    )

    def one(request_id: str, conversation: list[Message]) -> Timing:
        text = tokenizer.apply_chat_template(
            [m.model_dump() for m in conversation], tokenize=False, add_generation_prompt=True,
            **template_kwargs,
        )
        # The template already holds any BOS token; do not add a second one.
        ids = tokenizer.encode(text, add_special_tokens=False)
        first = None
        tokens = 0
        tick = time.perf_counter()
        engine.add_request(request_id, {"prompt_token_ids": ids}, params)
        while engine.has_unfinished_requests():
            for output in engine.step():
                new = sum(len(c.token_ids) for c in output.outputs)
                if new and first is None:
                    first = time.perf_counter() - tick
                tokens += new
        timing = Timing(first, time.perf_counter() - tick, tokens, len(ids))
        progress(1)
        return timing

    def reset() -> bool:
        # False when the engine refused (requests in flight) or has no prefix cache to reset.
        clear = getattr(llm, "reset_prefix_cache", None)
        return bool(clear()) if callable(clear) else False

    if engine.has_unfinished_requests():
        raise RuntimeError("latency needs an idle engine, and this one has requests in flight")
    one("latency-warmup", warmup)  # pays for lazy initialisation; never timed
    timings, resets = [], []
    for i, conversation in enumerate(conversations):
        resets.append(reset())
        timings.append(one(f"latency-{i}", conversation))
    dtype = getattr(getattr(engine, "model_config", None), "dtype", None)
    # The engine core reports its KV blocks back to the front end's config (core_client.py).
    cache = getattr(getattr(engine, "vllm_config", None), "cache_config", None)
    blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
    return timings, {
        "served_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
        "kv_cache_tokens": blocks * block_size if blocks and block_size else None,
        "prefix_cache_reset": all(resets),
    }


def _generic_timings(
    backend: Any, warmup: list[Message], conversations: Sequence[list[Message]],
    sampling: SamplingConfig, progress: Callable[[int], None],
) -> list[Timing]:
    """Any backend: one `generate` call per prompt, end to end only."""
    backend.generate([warmup], sampling)  # never timed
    progress(1)
    timings = []
    for conversation in conversations:
        tick = time.perf_counter()
        [[completion]] = backend.generate([conversation], sampling)
        timings.append(Timing(None, time.perf_counter() - tick, completion.num_tokens, None))
        progress(1)
    return timings


def _percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(np.asarray(values), q)) if values else None


def summarize_latency(timings: Sequence[Timing]) -> dict[str, Any]:
    """p50/p95 of time to first token and end to end, and the per-request records."""
    ttft = [t.ttft_s for t in timings if t.ttft_s is not None]
    e2e = [t.e2e_s for t in timings]
    # Decode time per token after the first, where both ends are known.
    per_token = [(t.e2e_s - t.ttft_s) / (t.output_tokens - 1) for t in timings
                 if t.ttft_s is not None and t.output_tokens is not None and t.output_tokens > 1]
    prompts = [t.prompt_tokens for t in timings if t.prompt_tokens is not None]
    outputs = [t.output_tokens for t in timings if t.output_tokens is not None]
    return {
        "requests": len(timings),
        "ttft_p50_s": _percentile(ttft, 50),
        "ttft_p95_s": _percentile(ttft, 95),
        "e2e_p50_s": _percentile(e2e, 50),
        "e2e_p95_s": _percentile(e2e, 95),
        "decode_s_per_token_p50": _percentile(per_token, 50),
        "mean_output_tokens": sum(outputs) / len(outputs) if outputs else None,
        "max_prompt_tokens": max(prompts) if prompts else None,
        "timings": [asdict(t) for t in timings],
    }


def measure_latency(
    backend: Any,
    conversations: Sequence[list[Message]],
    sampling: SamplingConfig,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any] | None:
    """Batch-1 latency over `conversations` (one sample each, `sampling`'s other settings),
    each sent as a prompt the engine has not seen (`latency_prompts`); `progress(1)` after each
    request, the warm-up included (len + 1 calls)."""
    if not conversations:
        return None
    progress = progress or (lambda count: None)
    single = sampling.model_copy(update={"n": 1})
    warmup, timed = latency_prompts(conversations)
    llm = getattr(backend, "llm", None)
    if getattr(llm, "llm_engine", None) is not None:
        # The backend's chat-template settings (thinking on/off), so the prompts are the same.
        template_kwargs = getattr(backend, "template_kwargs", None) or {}
        timings, engine = _vllm_timings(llm, warmup, timed, single, progress, template_kwargs)
        method = "vllm engine step loop (wall clock)"
    else:
        timings = _generic_timings(backend, warmup, timed, single, progress)
        # A server's prefix cache cannot be reset from here; the tags keep the prompts unseen.
        engine = {"served_dtype": None, "kv_cache_tokens": None, "prefix_cache_reset": None}
        method = f"{getattr(backend, 'name', 'backend')}: one generate call per prompt"
    return {"method": method, **engine, "max_tokens": single.max_tokens,
            "temperature": single.temperature, "unseen_prompts": True,
            **summarize_latency(timings)}


# --- the table ---------------------------------------------------------------------------------

_RATIO_KEYS = ("parameters", "disk_bytes", "weights_bytes", "model_memory_bytes",
               "ttft_p50_s", "decode_s_per_token", "e2e_p50_s", "e2e_p95_s", "throughput_tok_s",
               "accuracy")


def deployment_table(
    models: Mapping[str, Mapping[str, Any]],
    reference: str,
    *,
    engine_dtype: str = "auto",
    max_tokens: int = 512,
) -> dict[str, dict[str, Any]]:
    """One row per model from its evaluation summary (served_path, parameters, latency,
    throughput, accuracy, peak memory), with ratios to the reference model's row."""
    rows: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        path = m.get("served_path")
        config = read_model_config(path) if path else None
        latency = m.get("latency") or {}
        dtype = latency.get("served_dtype") or served_dtype(engine_dtype, config)
        request_tokens = (latency.get("max_prompt_tokens") or 0) + max_tokens
        memory = model_memory(m.get("parameters"), config, dtype, request_tokens,
                              quantized_weights_bytes(path, dtype))
        kv_tokens = latency.get("kv_cache_tokens")
        reserved = None
        if kv_tokens and memory["kv_one_request"] is not None:  # per-token size known
            reserved = kv_tokens * kv_bytes_per_token(dict(config or {}), str(dtype))
        rows[name] = {
            "parameters": m.get("parameters"),
            "quantization": quantization_label(config),
            "disk_bytes": disk_bytes(path),
            "dtype": dtype,
            "weights_bytes": memory["weights"],
            "model_memory_bytes": memory["total"],
            "model_memory_parts": memory,
            "model_memory_tokens": request_tokens,
            "ttft_p50_s": latency.get("ttft_p50_s"),
            "decode_s_per_token": latency.get("decode_s_per_token_p50"),
            "e2e_p50_s": latency.get("e2e_p50_s"),
            "e2e_p95_s": latency.get("e2e_p95_s"),
            "latency_requests": latency.get("requests"),
            "latency_method": latency.get("method"),
            "throughput_tok_s": m.get("output_tokens_per_s"),
            "accuracy": m.get("accuracy"),
            "engine_peak_rss_mb": m.get("peak_memory_mb"),
            "engine_kv_reserved_bytes": reserved,
        }
    base = rows.get(reference)
    for row in rows.values():
        row["ratios"] = {
            key: (row[key] / base[key] if base and row[key] is not None and base[key] else None)
            for key in _RATIO_KEYS
        }
    return rows


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.1f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _params(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 1e9:.2f} B" if count >= 1e9 else f"{count / 1e6:.1f} M"


def _with_ratio(text: str, ratio: float | None, is_reference: bool) -> str:
    if text == "-" or is_reference or ratio is None:
        return text
    return f"{text} ({ratio:.2f}x)"


def render_deployment(table: Mapping[str, Mapping[str, Any]], reference: str) -> list[str]:
    """The report section: one row per model, ratios to the reference in parentheses."""
    if not table:
        return []
    header = ["model", "parameters", "disk MB", "weights MB", "model memory MB",
              "TTFT p50 ms", "decode ms/token", "e2e p50 ms", "e2e p95 ms", "batch tok/s",
              "accuracy", "engine peak MB", "engine KV reserved MB"]
    lines = [
        "## Deployment",
        "",
        f"Ratios to `{reference}` in parentheses.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, row in table.items():
        r, ref = row["ratios"], name == reference
        # A quantised model's weights are its scheme's integers, not the served dtype.
        quantized = row.get("quantization")
        dtype = f" {quantized or row['dtype']}" if quantized or row["dtype"] else ""
        cells = [
            name + (f" [{quantized}]" if quantized else "") + (" (reference)" if ref else ""),
            _with_ratio(_params(row["parameters"]), r["parameters"], ref),
            _with_ratio(_mb(row["disk_bytes"]), r["disk_bytes"], ref),
            _with_ratio(_mb(row["weights_bytes"]) + dtype, r["weights_bytes"], ref),
            _with_ratio(_mb(row["model_memory_bytes"]), r["model_memory_bytes"], ref),
            _with_ratio(_ms(row["ttft_p50_s"]), r["ttft_p50_s"], ref),
            _with_ratio("-" if row["decode_s_per_token"] is None
                        else f"{row['decode_s_per_token'] * 1000:.1f}",
                        r["decode_s_per_token"], ref),
            _with_ratio(_ms(row["e2e_p50_s"]), r["e2e_p50_s"], ref),
            _with_ratio(_ms(row["e2e_p95_s"]), r["e2e_p95_s"], ref),
            _with_ratio("-" if row["throughput_tok_s"] is None
                        else f"{row['throughput_tok_s']:.1f}", r["throughput_tok_s"], ref),
            _with_ratio("-" if row["accuracy"] is None else f"{row['accuracy']:.3f}",
                        r["accuracy"], ref),
            "-" if row["engine_peak_rss_mb"] is None else f"{row['engine_peak_rss_mb']:.0f}",
            _mb(row["engine_kv_reserved_bytes"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    tokens = next(iter(table.values()))["model_memory_tokens"]
    methods = sorted({row["latency_method"] for row in table.values() if row["latency_method"]})
    requests = sorted({row["latency_requests"] for row in table.values()
                       if row["latency_requests"]})
    lines += [
        "",
        "Weights MB: parameters x bytes per element of the served dtype; for a quantised "
        "model (marked [w8a8], [w4a16]: `cotdistill quantize`) the stored integer weights and "
        "scales, other tensors at the served dtype. Model memory MB: what "
        f"the model itself needs for one request of {tokens} tokens (longest latency prompt + "
        "max_tokens): weights + that request's KV cache (2 x layers x kv heads x head dim x "
        "dtype bytes per token) + an estimate of its prefill activations; the serving runtime "
        "(Python, torch) and the engine's KV-cache reservation are not in it. Engine peak MB: "
        "the stage's peak-memory figure (on CPU the resident memory of the process and its "
        "engine workers), with the engine's runtime and its KV-cache reservation; engine KV "
        "reserved MB: that reservation (KV blocks x block size x bytes per token).",
        "Latency: " + (
            f"{', '.join(str(n) for n in requests)} evaluation prompts sent one at a time after "
            f"one warm-up request ({'; '.join(methods)}), each opened by a tag the engine had "
            "not seen, so no prefix cache served its prefill (the in-process vLLM engine's "
            "prefix cache is also reset before each; the warm-up is not timed); TTFT = time to "
            "first token, decode = "
            "(e2e - TTFT) / (tokens - 1), e2e = until the last token (it grows with the "
            "answer's length, decode does not)."
            if requests else "not measured (`latency_prompts: 0`)."
        ),
        "Batch tok/s: output tokens per second of the evaluation run itself (whole batches).",
        "",
    ]
    return lines
