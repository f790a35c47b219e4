"""Build a shallower student from a teacher: its embeddings, a subset of its layers, its head.

As DistilBERT was made from BERT (Sanh et al. 2019, every other layer), the student starts
from the teacher's own weights rather than at random, so distillation begins close to the
teacher. The result is a normal model folder (weights, config, tokenizer) usable as
`cotdistill train --student DIR` or served by vLLM.

    cotdistill student init --teacher MODEL --out runs/cut --keep-every 2
    cotdistill student init --teacher MODEL --out runs/cut --layers 0,5,10,15,20,25,29
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from cotdistill.config import StrictModel
from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_file, write_manifest
from cotdistill.infra.locking import locks_output
from cotdistill.models import load_pretrained

# Annotated, so the generated `--layers` flag takes strings and `--layers 0,2,4` reaches the
# validator below instead of failing argparse's int conversion.
LayerIndex = Annotated[int, Field(ge=0)]


class StudentInitConfig(StrictModel):
    teacher: str | None = Field(
        None, description="Teacher model folder or hub id; default: the embedded SmolLM2."
    )
    out: Path | None = Field(None, description="Output model folder.")
    layers: list[LayerIndex] | None = Field(
        None, description="Teacher layer indices to keep, in order, e.g. 0,2,4 or 0 2 4."
    )
    keep_every: int | None = Field(
        None, gt=0, description="Keep layers 0, K, 2K, ... (instead of --layers)."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (unsafe).")

    @field_validator("layers", mode="before")
    @classmethod
    def _split_layers(cls, value: Any) -> Any:
        """Accept `0,2,4`, `[0, 2, 4]` and the flag's `0 2 4` (or `0,2 4`) alike."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            parts: list[Any] = []
            for item in value:
                if isinstance(item, str):
                    parts.extend(p for p in re.split(r"[,\s]+", item.strip()) if p)
                else:
                    parts.append(item)
            return parts
        return value

    @field_validator("layers")
    @classmethod
    def _increasing(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("keep at least one layer")
        if any(i < 0 for i in value) or any(b <= a for a, b in zip(value, value[1:], strict=False)):
            raise ValueError("layer indices must be >= 0 and strictly increasing")
        return value


def chosen_layers(config: StudentInitConfig, num_layers: int) -> list[int]:
    """The teacher layers the student keeps; out-of-range indices are an InputError."""
    if (config.layers is None) == (config.keep_every is None):
        raise InputError("give exactly one of --layers and --keep-every", field="layers")
    if config.keep_every is not None:
        return list(range(0, num_layers, config.keep_every))
    assert config.layers is not None
    if config.layers[-1] >= num_layers:
        raise InputError(
            f"the teacher has {num_layers} layers (0..{num_layers - 1}); "
            f"layer {config.layers[-1]} does not exist",
            field="layers",
        )
    return list(config.layers)


def layer_stack(model: Any) -> tuple[str, Any]:
    """(state-dict prefix, ModuleList) of the decoder layers: the list as long as the config."""
    import torch

    count = model.config.get_text_config().num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return name + ".", module
    raise InputError("cannot find the decoder layer list of this model", field="teacher")


def student_config(teacher_config: Any, keep: list[int]) -> Any:
    """Teacher config with fewer layers; per-layer lists (e.g. `layer_types`) subset alike."""
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    text = config.get_text_config()
    count = text.num_hidden_layers
    for key, value in vars(text).items():
        if isinstance(value, list) and len(value) == count and key != "architectures":
            setattr(text, key, [value[i] for i in keep])
    text.num_hidden_layers = len(keep)
    return config


def cut_state_dict(state: dict[str, Any], prefix: str, keep: list[int]) -> dict[str, Any]:
    """Rename kept layer `keep[j]` to `j` and drop the others; other tensors pass unchanged."""
    new_index = {old: new for new, old in enumerate(keep)}
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    result = {}
    for key, tensor in state.items():
        match = pattern.fullmatch(key)
        if match is None:
            result[key] = tensor
        elif int(match.group(1)) in new_index:
            result[f"{prefix}{new_index[int(match.group(1))]}.{match.group(2)}"] = tensor
    return result


def build_student(teacher: Any, keep: list[int]) -> Any:
    """A fresh model of the teacher's class with the kept layers' weights, copied exactly."""
    from transformers import AutoModelForCausalLM

    prefix, _ = layer_stack(teacher)
    config = student_config(teacher.config, keep)
    student = AutoModelForCausalLM.from_config(
        config, dtype=teacher.dtype, trust_remote_code=False
    )
    # Built fresh (not layers deleted in place) so each attention layer's cache index is j.
    state = cut_state_dict(teacher.state_dict(), prefix, keep)
    missing, unexpected = student.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(student)]
    if missing or unexpected:
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    student.generation_config = teacher.generation_config
    return student


def _tied_keys(model: Any) -> set[str]:
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied) if not isinstance(tied, dict) else set(tied.keys())


@locks_output("student init")
def run_student_init(config: StudentInitConfig) -> dict[str, Any]:
    """Write the cut student to `config.out`; returns the manifest."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from cotdistill.models import resolve_model

    started = time.time()
    if config.out is None:
        raise InputError("student init needs --out", field="out")
    path, name = resolve_model(config.teacher)
    teacher_config = load_pretrained(AutoConfig, path, config.trust_remote_code, "teacher")
    num_layers = teacher_config.get_text_config().num_hidden_layers
    keep = chosen_layers(config, num_layers)  # checked before the weights are loaded

    teacher = AutoModelForCausalLM.from_pretrained(
        path, dtype="auto", trust_remote_code=config.trust_remote_code
    )
    student = build_student(teacher, keep)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    student.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code
                                  ).save_pretrained(out)
    params = sum(p.numel() for p in student.parameters())
    teacher_params = sum(p.numel() for p in teacher.parameters())
    manifest = write_manifest(
        out,
        stage="student_init",
        config=config,
        inputs={name: sha256_file(Path(path))} if Path(path).exists() else {},
        counts={
            "teacher_layers": num_layers,
            "student_layers": len(keep),
            "parameters": params,
            "teacher_parameters": teacher_params,
        },
        started=started,
        extra={"teacher": name, "kept_layers": keep, "dtype": str(student.dtype)},
    )
    print(f"student init: kept layers {keep} of {num_layers} from {name} "
          f"({params / 1e6:.1f}M of {teacher_params / 1e6:.1f}M parameters) -> {out}")
    return manifest
