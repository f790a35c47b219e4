"""Stage configurations: one pydantic model per stage, loaded from YAML with flag overrides.

Every field is documented once, in its `Field(description=...)`; the command-line flags are
generated from the same models (`add_model_flags`), so a flag and a YAML key always agree:
`--max-tokens 64` on the command line is `max_tokens: 64` in the file.

    cfg = load_config(GenerateConfig, "cfg.yaml", section="generate", overrides={"n": 2})
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cotdistill.errors import InputError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a YAML file must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class SamplingConfig(StrictModel):
    temperature: float = Field(0.3, ge=0.0, description="Sampling temperature (low by default).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling probability mass.")
    max_tokens: int = Field(512, gt=0, description="Maximum new tokens per sample.")
    n: int = Field(1, gt=0, description="Samples per problem.")
    stop: list[str] = Field(default_factory=list, description="Stop strings.")
    logprobs: int = Field(
        1, ge=0, description="Top logprobs per token to request; the sampled token's is kept."
    )


class EngineConfig(StrictModel):
    backend: Literal["vllm", "openai"] = Field(
        "vllm", description="vllm: in-process engine; openai: any OpenAI-compatible server."
    )
    base_url: str | None = Field(
        None, description="Server URL for the openai backend, e.g. http://127.0.0.1:8000/v1."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (never logged)."
    )
    concurrency: int = Field(16, gt=0, description="openai backend: requests in flight at once.")
    request_timeout: float = Field(600.0, gt=0, description="openai backend: seconds per request.")
    max_retries: int = Field(5, ge=0, description="openai backend: retries on connection/5xx.")
    tensor_parallel_size: int = Field(1, gt=0, description="vllm: tensor parallel degree.")
    data_parallel_size: int = Field(1, gt=0, description="vllm: data parallel degree.")
    dtype: str = Field("auto", description="vllm: weight dtype (auto, bfloat16, float16, float32).")
    max_model_len: int | None = Field(None, description="vllm: context length limit.")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0,
        le=1,
        description="vllm: memory fraction for the KV cache (RAM on CPU). Default: 0.9 on GPU, "
        "0.3 on CPU.",
    )
    enforce_eager: bool = Field(True, description="vllm: skip CUDA graphs / torch.compile warm-up.")
    seed: int = Field(0, description="Engine-level seed (vLLM's CPU engine rejects per-request).")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (unsafe).")


class GenerateConfig(SamplingConfig, EngineConfig):
    problems: Path | None = Field(None, description="Problems file or `datasets` folder.")
    out: Path | None = Field(None, description="Output directory.")
    teacher: str | None = Field(
        None, description="Model folder or hub id; default: the embedded SmolLM2-135M-Instruct."
    )
    question_field: list[str] = Field(
        default_factory=lambda: ["question", "problem"],
        description="Candidate field names for the question, first present wins.",
    )
    answer_field: list[str] = Field(
        default_factory=lambda: ["answer", "solution"],
        description="Candidate field names for the gold answer or solution.",
    )
    id_field: str = Field("id", description="Field holding a problem id; else a question hash.")
    answer_format: Literal["auto", "gsm8k", "boxed", "raw"] = Field(
        "auto",
        description="How to read the gold answer: `#### x`, last \\boxed{x}, as it is, or auto.",
    )
    prompt_template: str = Field(
        "math_cot", description="Template name in prompts/ or a path to a template file."
    )
    limit: int | None = Field(None, gt=0, description="Use only the first K problems.")
    shard: str | None = Field(
        None, pattern=r"^\d+/\d+$", description="I/N: run only shard I (0-based) of N."
    )
    batch_size: int = Field(
        256, gt=0, description="Problems per engine call; each batch is written when done."
    )


def _flag_type(annotation: Any) -> tuple[Any, bool] | None:
    """Map a field annotation to (argparse type, is_list); None for YAML-only structures."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _flag_type(args[0])
    if origin is list:
        inner = _flag_type(typing.get_args(annotation)[0])
        return None if inner is None else (inner[0], True)
    if origin is Literal:
        return str, False
    if origin is typing.Annotated:
        # Passed on as text; the field's own validator parses it (e.g. `--layers 0,2,4`).
        return str, False
    if annotation in (int, float, str, Path, bool):
        return annotation, False
    # Mappings and nested models (pipeline sections, teacher weights) are set in the YAML file.
    return None


def add_model_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], skip: set[str] = frozenset()
) -> None:
    """Add one `--flag` per model field; all default to None so only given flags override."""
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        mapped = _flag_type(field.annotation)
        if mapped is None:
            continue
        kind, is_list = mapped
        help_text = field.description or ""
        if kind is bool:
            parser.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        elif is_list:
            parser.add_argument(
                flag, dest=name, nargs="+", action="extend", type=kind, default=None,
                help=help_text,
            )
        else:
            choices = None
            if typing.get_origin(field.annotation) is Literal:
                choices = list(typing.get_args(field.annotation))
            parser.add_argument(
                flag, dest=name, type=kind, default=None, choices=choices, help=help_text
            )


def read_yaml(path: Path) -> dict[str, Any]:
    """Load a YAML mapping with the safe loader; errors name the file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read config: {exc}", file=path) from exc
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        lineno = None if line is None else line + 1
        raise InputError(f"invalid YAML: {exc}", file=path, line=lineno) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("top level must be a mapping of keys to values", file=path)
    return data


def validate_config(
    model: type[M], values: dict[str, Any], source: Path | str | None = None
) -> M:
    """Validate values into `model`, turning pydantic errors into an InputError naming the key."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InputError(first["msg"], file=source, field=field) from exc


def load_config(
    model: type[M],
    config_file: Path | str | None = None,
    section: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> M:
    """Defaults < YAML file (its `section` mapping if present, else the top level) < overrides."""
    values: dict[str, Any] = {}
    if config_file is not None:
        data = read_yaml(Path(config_file))
        if section is not None and isinstance(data.get(section), dict):
            data = data[section]
        values.update(data)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate_config(model, values, config_file)
