"""One engine per architecture: models that differ only in their weights share a vLLM engine.

Starting vLLM costs seconds to minutes; reloading a 135M model's weights into a running engine
costs a fraction of a second (measured on this machine's CPU build: start 17 s, reload 0.26 s).
Two model folders share an engine when everything the engine is built from is the same: the
model config (bar its name and, where the engine's dtype is fixed, the saved dtype), the
tokenizer files and the generation config. The weights are then reloaded in place
(`reload_weights` over `collective_rpc`) and the prefix cache is emptied, so no model reads
prompts another one cached. Quantised checkpoints, hub ids and remote servers always get their
own engine. `tests/evaluate/test_engines.py` checks that each model's greedy outputs equal
those of a fresh engine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from cotdistill.backends import Backend
from cotdistill.evaluate.config import BackendFactory
from cotdistill.infra.files import sha256_file, sha256_text

# Keys of config.json and the tokenizer's JSON files that do not change what an engine is built
# from (where the folder was loaded from, which library version wrote it, transformers' own
# runtime switches: TRL saves students with use_cache false).
NOT_STRUCTURAL = {"_name_or_path", "transformers_version", "name_or_path", "_commit_hash",
                  "is_local", "local_files_only", "use_cache", "output_attentions",
                  "output_hidden_states", "return_dict"}
DTYPE_KEYS = {"torch_dtype", "dtype"}
# Files besides config.json that the engine reads at start.
ENGINE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "tokenizer.model", "vocab.json", "merges.txt", "chat_template.jinja",
                "chat_template.json", "generation_config.json", "added_tokens.json")

T = TypeVar("T")


class Reloadable(Protocol):
    def load_weights(self, model: str) -> None: ...


def architecture_key(path: str, engine_dtype: str = "auto") -> str | None:
    """What an engine for this model folder is built from, as a hash; None when the model
    must have an engine of its own (not a local folder, a quantised checkpoint)."""
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict) or config.get("quantization_config"):
        return None
    dropped = NOT_STRUCTURAL | (DTYPE_KEYS if engine_dtype != "auto" else set())
    structure = {k: v for k, v in config.items() if k not in dropped}
    parts = [json.dumps(structure, sort_keys=True)]
    parts += [f"{name}:{file_identity(folder / name)}" for name in ENGINE_FILES
              if (folder / name).is_file()]
    return sha256_text("\n".join(parts))


def file_identity(path: Path) -> str:
    """A JSON file by its content bar NOT_STRUCTURAL keys (a tokenizer saved again from
    another folder writes where it came from); any other file by its bytes."""
    if path.suffix == ".json":
        try:
            content = json.loads(path.read_text())
        except (OSError, ValueError):
            return sha256_file(path)
        if isinstance(content, dict):
            content = {k: v for k, v in content.items() if k not in NOT_STRUCTURAL}
        return sha256_text(json.dumps(content, sort_keys=True))
    return sha256_file(path)


def engine_order(items: Sequence[T], keys: Sequence[str | None]) -> list[T]:
    """`items` grouped by key, each group where its first member stood, order kept within it;
    items without a key stay where they are among the groups."""
    first: dict[Any, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key if key is not None else ("alone", index), index)
    order = sorted(range(len(items)),
                   key=lambda i: (first[keys[i] if keys[i] is not None else ("alone", i)], i))
    return [items[i] for i in order]


class Engines:
    """Hands out a backend per model path: the running one with new weights when the path has
    the running engine's key, else a fresh one (the previous one closed first).

    `starts` and `reloads` count what happened; `close()` releases the last engine."""

    def __init__(self, factory: BackendFactory, key: Callable[[str], str | None],
                 share: bool = True) -> None:
        self.factory = factory
        self.key = key
        self.share = share
        self.current: Backend | None = None
        self.current_key: str | None = None
        self.starts = 0
        self.reloads = 0

    def open(self, path: str) -> tuple[Backend, str]:
        """(backend serving `path`, "started" | "reloaded")."""
        key = self.key(path) if self.share else None
        if (self.current is not None and key is not None and key == self.current_key
                and callable(getattr(self.current, "load_weights", None))):
            self.current.load_weights(path)  # type: ignore[attr-defined]
            self.reloads += 1
            return self.current, "reloaded"
        self.close()
        self.current = self.factory(path)
        self.current_key = key
        self.starts += 1
        return self.current, "started"

    def close(self) -> None:
        if self.current is not None:
            backend, self.current, self.current_key = self.current, None, None
            backend.close()
