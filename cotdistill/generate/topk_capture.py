"""Capturing the teacher's top-K logprobs while generate samples: checks, start, summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.topk_store import FOLDER, META, TopkWriter, reconcile, shard_names, teacher_meta


def check_capture(config: Any, backend: Any) -> None:
    """Top-k capture needs token ids, which only the in-process engine returns."""
    backend_name = backend.name if backend is not None else config.backend
    if config.topk_logprobs and backend_name == "openai":
        raise InputError("--topk-logprobs needs the in-process vllm backend (an OpenAI server "
                         "returns candidate tokens as text, not ids)", field="topk_logprobs")


def start_capture(out: Path, config: Any, existing: dict[str, list[dict[str, Any]]],
                  pending: bool, model: str | None, backend: Any) -> TopkWriter | None:
    """Before generating: reconcile `out/topk` with the traces kept on disk, open a writer.

    `existing`: the traces in traces.jsonl after recovery, by problem; `pending`: whether
    this run will generate anything; `model`: the teacher's folder (None for a backend passed
    in, then `config.teacher` names it if it can). Without --topk-logprobs a folder that has
    top-k rows must not get traces without them.
    """
    folder = Path(out) / FOLDER
    k = config.topk_logprobs
    check_capture(config, backend)
    if k == 0:
        if pending and folder.is_dir() and shard_names(folder):
            raise InputError("these traces carry top-k logprobs but this run asks for none; "
                             "pass the same --topk-logprobs or use another --out",
                             file=folder, field="topk_logprobs")
        return None
    kept = {(pid, int(row["sample_index"])) for pid, rows in existing.items() for row in rows}
    stats = reconcile(folder, kept, k)
    if stats["dropped"]:
        print(f"generate: dropped {stats['dropped']} top-k rows of traces not in traces.jsonl "
              "(an interrupted batch); they are generated again")
    meta = teacher_meta(model or config.teacher, config.trust_remote_code)
    if backend is None:  # the engine is made from config.teacher: record its resolved name
        from cotdistill.models import resolve_model

        teacher = resolve_model(config.teacher)[1]
    else:
        teacher = config.teacher or backend.name
    return TopkWriter(folder, k, {"teacher": teacher, **meta})


def capture_summary(out: Path) -> dict[str, Any] | None:
    """For the manifest: K, tokenizer, rows, tokens, bytes on disk and per token."""
    folder = Path(out) / FOLDER
    if not (folder / META).exists():
        return None
    meta = json.loads((folder / META).read_text())
    rows = tokens = 0
    for name in shard_names(folder):
        index = json.loads((folder / f"{name}.json").read_text())["rows"]
        rows += len(index)
        tokens += sum(r[3] for r in index)
    size = sum(p.stat().st_size for p in folder.glob("shard-*"))
    return {**meta, "folder": str(folder), "rows": rows, "tokens": tokens, "bytes": size,
            "bytes_per_token_on_disk": round(size / tokens, 2) if tokens else None}
