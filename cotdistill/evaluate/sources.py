"""Where the evaluated models come from: specs, folders, adapters, sizes, what identifies the
weights.
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from pathlib import Path

from cotdistill.cards import is_identity_file
from cotdistill.errors import InputError
from cotdistill.evaluate.config import NAME_PATTERN, BackendFactory, EvaluateConfig
from cotdistill.infra.files import sha256_file, sha256_text

# --- models: names, adapters, size and memory --------------------------------------------------


def parse_model_specs(specs: Sequence[str]) -> dict[str, str]:
    """["teacher=A", "student=B"] -> {"teacher": "A", "student": "B"} (order kept)."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, model = spec.partition("=")
        name, model = name.strip(), model.strip()
        if not sep or not name or not model:
            raise InputError(f"expected NAME=MODEL, got {spec!r}", field="model")
        if not NAME_PATTERN.match(name):
            raise InputError(f"model name {name!r} may use letters, digits, _ . -", field="model")
        if name in models:
            raise InputError(f"model name {name!r} given twice", field="model")
        models[name] = model
    if not models:
        raise InputError("evaluate needs at least one --model NAME=MODEL", field="model")
    return models


def adapter_base(adapter: Path) -> str:
    """The base model a peft adapter folder was trained on, checked before loading anything."""
    config_file = adapter / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"unreadable adapter config: {exc}", file=config_file) from exc
    base = config.get("base_model_name_or_path") if isinstance(config, dict) else None
    if not base:
        raise InputError(
            "adapter names no base model", file=config_file, field="base_model_name_or_path"
        )
    return str(base)


def folder_hash(folder: Path) -> str:
    """Hash of a model folder's own files: weights, config, tokenizer. Sub-folders
    (checkpoints, the fp32 master), manifests, logs and the card are not part of the model, so
    a finished training run hashes the same whatever it left beside, and evaluate adding its
    rows to the card does not make the next evaluation sample the model again."""
    parts = [f"{p.name}:{sha256_file(p)}" for p in sorted(folder.iterdir())
             if p.is_file() and is_identity_file(p.name)]
    return sha256_text("\n".join(parts))


def merge_adapter(adapter: Path, trust_remote_code: bool = False) -> Path:
    """Merge a LoRA adapter into its base once; later calls reuse the cached folder.

    The cache is keyed by the adapter's hash, so a retrained adapter never reuses stale
    weights. vLLM then serves the merged folder like any model.
    """
    from cotdistill.infra.files import cache_dir
    from cotdistill.models import resolve_model

    target = cache_dir() / "merged" / folder_hash(adapter)[:16]
    if (target / "config.json").exists():
        return target
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_path, _ = resolve_model(adapter_base(adapter))
    # Merged in the base's own dtype, so the served model has the base's size and numerics.
    base = AutoModelForCausalLM.from_pretrained(
        base_path, dtype="auto", trust_remote_code=trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    tokenizer_source = adapter if (adapter / "tokenizer_config.json").exists() else base_path
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_source, trust_remote_code=trust_remote_code
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "model"
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "merged_from.json").write_text(
            json.dumps({"adapter": str(adapter.resolve()), "base": base_path}, indent=2) + "\n"
        )
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    return target


@dataclass(frozen=True)
class ModelSource:
    name: str
    spec: str
    path: str  # what resolve_model gave: a folder or a hub id
    adapter: Path | None  # set when `path` is a LoRA adapter folder


def locate_models(models: dict[str, str]) -> list[ModelSource]:
    """Resolve every model and check adapters before any model is loaded."""
    from cotdistill.models import resolve_model

    sources = []
    for name, spec in models.items():
        path, _ = resolve_model(spec)
        folder = Path(path)
        adapter = folder if (folder / "adapter_config.json").exists() else None
        if adapter is not None:
            base, _ = resolve_model(adapter_base(adapter))
            looks_local = base.startswith(("/", ".", "~"))
            if looks_local and not Path(base).exists():
                raise InputError(
                    f"adapter's base model {base} does not exist",
                    file=adapter / "adapter_config.json",
                    field="base_model_name_or_path",
                )
        sources.append(ModelSource(name, spec, path, adapter))
    return sources


def parameter_count(model_dir: Path) -> int | None:
    """Parameters in a folder's safetensors files, read from their headers (no weights loaded).

    A quantised checkpoint (config.json has a `quantization_config`, e.g. from `cotdistill
    quantize`) counts the model's parameters, not the tensors that store them: scales and zero
    points are not parameters, and a packed int4 weight (eight values per int32) counts by its
    unpacked shape, which compressed-tensors stores beside it as `weight_shape`.
    """
    from cotdistill.evaluate.measures.deployment import QUANT_AUX

    files = sorted(Path(model_dir).glob("*.safetensors")) if Path(model_dir).is_dir() else []
    if not files:
        return None
    quantized = quantized_scheme(model_dir) is not None
    total = 0
    for file in files:
        with open(file, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
            for key, entry in header.items():
                module, _, leaf = key.rpartition(".")
                if key == "__metadata__" or (quantized and leaf in QUANT_AUX):
                    continue
                shape = header.get(f"{module}.weight_shape") if leaf == "weight_packed" else None
                if quantized and shape is not None and shape["dtype"] in ("I64", "I32"):
                    start, end = shape["data_offsets"]
                    fh.seek(8 + size + start)
                    code, width = ("q", 8) if shape["dtype"] == "I64" else ("i", 4)
                    total += prod(struct.unpack(f"<{(end - start) // width}{code}",
                                                fh.read(end - start)))
                else:
                    total += prod(entry["shape"])
    return total


def quantized_scheme(model_dir: Path) -> str | None:
    """'w8a8', 'w4a16' for a quantised folder (`cotdistill quantize`), else None: marks the
    model in both tables, so distilled + quantised students read apart from the others."""
    from cotdistill.backends.sizing import read_model_config
    from cotdistill.evaluate.measures.deployment import quantization_label

    return quantization_label(read_model_config(str(model_dir)))


@dataclass(frozen=True)
class WeightsId:
    """What identifies the weights a model's samples come from. `value` None: nothing does,
    so its samples are never reused (`how` says why, in the report)."""

    value: str | None
    how: str


def hub_revision(repo_id: str) -> str | None:
    """The commit of a hub model that a load would get now: the hub's answer when online, else
    the local cache's (what an offline load uses); None when neither is known."""
    try:
        import huggingface_hub
    except ImportError:
        return None
    try:
        return str(huggingface_hub.HfApi().model_info(repo_id, timeout=10).sha)
    except Exception:  # offline, unknown repo, no network: any of them means "not from the hub"
        pass
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True)).name
    except Exception:  # not in the local cache either
        return None


def weights_id(source: ModelSource, config: EvaluateConfig,
               factory: BackendFactory) -> WeightsId:
    """A served model by what its server says and a probe (`weights_fingerprint`: a name alone
    survives a restart on new weights), a local folder by its files, a hub id by its commit."""
    if config.backend == "openai":
        backend = factory(source.path)
        try:
            probe = getattr(backend, "weights_fingerprint", None)
            value = probe() if callable(probe) else None
        finally:
            backend.close()
        if value is None:
            return WeightsId(None, f"the server's model card and a probe cannot identify the "
                                   f"weights served as {source.path!r} (no log-probabilities)")
        return WeightsId(f"served:{value}", "the server's model card and a probe")
    folder = Path(source.adapter or source.path)
    if folder.is_dir():
        return WeightsId(folder_hash(folder), "its files")
    revision = hub_revision(source.path)
    if revision is not None:
        return WeightsId(f"hub:{source.path}@{revision}", f"hub revision {revision}")
    return WeightsId(None, f"{source.path!r} is no local folder and no hub revision of it is "
                           "known, so nothing identifies its weights")
