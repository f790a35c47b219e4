"""A planned stage (`Step`), its config section, and whether it is already done (the stamp)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cotdistill.cards import is_identity_file  # a card (README.md) is not the model
from cotdistill.config import validate_config
from cotdistill.errors import InputError
from cotdistill.infra.files import (
    read_manifest,
    sha256_file,
    sha256_text,
)

STAMP = "pipeline.json"


# --- the plan: stage configs connected by paths -------------------------------------------------


@dataclass
class Step:
    """One stage run: which function, with what config, into which folder, depending on what."""

    name: str
    kind: str  # key of Stages
    out: Path
    config: BaseModel
    depends_on: list[Path] = field(default_factory=list)


def section_of(
    model: type[BaseModel], values: dict[str, Any], section: str, source: Any,
    engine: Collection[str] = (),
) -> Any:
    """Validate a section into its stage config; errors name the section key (`filter.x`), or
    `engine.x` for a key that came from the shared `engine:` mapping (listed in `engine`).

    A training stage of a run deletes its checkpoints once finished unless the section says
    `keep_checkpoints: true`: the run's manifests make reruns free."""
    if "keep_checkpoints" in model.model_fields:
        values = {"keep_checkpoints": False, **values}
    try:
        return validate_config(model, values, source)
    except InputError as exc:
        key = (exc.field or "").split(".")[0]
        where = "engine" if key in engine else section
        raise InputError(exc.message, file=exc.file, field=f"{where}.{exc.field}") from exc


def owned(values: dict[str, Any], keys: tuple[str, ...], section: str) -> None:
    for key in keys:
        if key in values:
            raise InputError(
                f"`{key}` is set by `cotdistill run`; remove it from this section",
                field=f"{section}.{key}",
            )


# --- running: reuse what is done, resume what is not -------------------------------------------


def content_hash(path: Path, cache: dict[Path, str] | None = None) -> str | None:
    """A file's hash, or a folder's top-level files (weights, configs; not checkpoints)."""
    path = Path(path)
    if cache is not None and path in cache:
        return cache[path]
    if not path.exists():
        value = None
    elif path.is_file():
        value = sha256_file(path)
    else:
        parts = [f"{p.name}:{sha256_file(p)}" for p in sorted(path.iterdir())
                 if p.is_file() and p.name != STAMP and is_identity_file(p.name)]
        value = sha256_text("\n".join(parts))
    if cache is not None:
        cache[path] = value  # type: ignore[assignment]
    return value


def stamp_of(step: Step, hashes: dict[Path, str]) -> dict[str, Any]:
    return {
        "config": step.config.model_dump(mode="json"),
        "inputs": {str(p): content_hash(p, hashes) for p in step.depends_on},
    }


def is_done(step: Step, hashes: dict[Path, str]) -> bool:
    """Done: a manifest with the same config, and inputs that hash as they did then."""
    manifest = read_manifest(step.out)
    if manifest is None or manifest.get("config") != step.config.model_dump(mode="json"):
        return False
    stamp_path = step.out / STAMP
    if not stamp_path.exists():
        return False
    try:
        return json.loads(stamp_path.read_text()) == stamp_of(step, hashes)
    except json.JSONDecodeError:
        return False
