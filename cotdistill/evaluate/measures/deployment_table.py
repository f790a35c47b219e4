"""The deployment table: size, memory and speed of each model beside the reference."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cotdistill.backends.sizing import kv_bytes_per_token, read_model_config
from cotdistill.evaluate.measures.deployment import (
    disk_bytes,
    model_memory,
    quantization_label,
    quantized_weights_bytes,
    served_dtype,
)

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
