"""Stage configurations: one pydantic model per stage, loaded from YAML with flag overrides.

Every field is documented once, in its `Field(description=...)`; the command-line flags are
generated from the same models (`add_model_flags`), so a flag and a YAML key always agree:
`--max-tokens 64` on the command line is `max_tokens: 64` in the file.

    cfg = load_config(GenerateConfig, "cfg.yaml", section="generate", overrides={"n": 2})
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
)

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
    topk_logprobs: int = Field(
        0, ge=0, description="Store the teacher's K best token ids and logprobs per completion "
        "token in topk/ beside the traces (for `train --kd offline-topk`); 0: off. vllm only."
    )


class EngineConfig(StrictModel):
    backend: Literal["vllm", "openai"] = Field(
        "vllm", description="vllm: in-process engine; openai: any OpenAI-compatible server."
    )
    base_url: list[str] | str | None = Field(
        None, description="Server URL for the openai backend, e.g. http://127.0.0.1:8000/v1 "
        "(written to manifests without user:password@ or token-like query values). Give it "
        "several times (a YAML list) for a fleet of servers of the same model: requests go to "
        "the least busy one, a dead one is skipped (cotdistill/backends/fleet.py)."
    )
    base_urls_file: Path | None = Field(
        None, description="openai backend: a file of server URLs, one per line (# comments), "
        "added to base_url: a generator fleet."
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
        description="vllm: fraction of GPU memory for weights and KV cache (default 0.9). On "
        "CPU it is a fraction of the NUMA node's RAM, used only when set here; the default "
        "there is kv_cache_gb's sizing.",
    )
    kv_cache_gb: float | None = Field(
        None,
        gt=0,
        description="vllm: KV cache size in GiB. Default on CPU: sized from the model (layers, "
        "KV heads, head size, dtype) x batch_size x n x (prompt + max_tokens), with headroom "
        "and a floor; on GPU: gpu_memory_utilization decides.",
    )
    enforce_eager: bool = Field(True, description="vllm: skip CUDA graphs / torch.compile warm-up.")
    seed: int = Field(0, description="Engine-level seed (vLLM's CPU engine rejects per-request).")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (unsafe).")
    enable_thinking: bool | None = Field(
        None,
        description="Passed to chat templates that take it (Qwen3): thinking mode on or off; "
        "unset: the template's default.",
    )

    @field_validator("base_url", mode="after")
    @classmethod
    def _one_url_stays_a_string(cls, url: list[str] | str | None) -> list[str] | str | None:
        # `--base-url URL` (a one-item list from the repeatable flag) means one server, as
        # before; only two or more make a fleet.
        if isinstance(url, list):
            if not url:
                return None
            return url[0] if len(url) == 1 else url
        return url

    @field_serializer("base_url")
    def _no_credentials(self, url: list[str] | str | None) -> list[str] | str | None:
        # Configs are written to manifests and stamps; credentials must not be.
        if isinstance(url, list):
            return [public_url(u) for u in url]  # type: ignore[misc]
        return public_url(url)


class ThinkConfig(StrictModel):
    """A reasoning teacher's thinking markers (see cotdistill/reasoning.py)."""

    think_start: str = Field("<think>", description="Text that opens the teacher's thinking.")
    think_end: str = Field(
        "</think>", description="Text that closes the thinking; the final answer follows it."
    )


_SECRET_QUERY = re.compile(r"key|token|secret|sig|auth|pass|cred|session", re.IGNORECASE)


def public_url(url: str | None) -> str | None:
    """`url` without credentials: no user:password@, token-like query values masked."""
    if not url:
        return url
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = urlencode([(k, "***" if _SECRET_QUERY.search(k) else v)
                       for k, v in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, host, parts.path, query, parts.fragment))


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
    if origin is dict and typing.get_args(annotation)[1:] in ((int,), (float,), (str,), (bool,)):
        # A flat mapping of plain values: `--teacher-weights big=2,small=0.5` or JSON.
        return parse_mapping, False
    # Nested structures (pipeline sections, student plans) are set in the YAML file.
    return None


def parse_mapping(text: str) -> dict[str, Any]:
    """`a=2,b=0.5` or a JSON object -> dict; the field's type then converts the values."""
    text = text.strip()
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"invalid JSON object: {exc}") from exc
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("expected a JSON object")
        return value
    pairs: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def add_model_flags(
    parser: argparse.ArgumentParser, model: type[BaseModel], skip: set[str] = frozenset()
) -> None:
    """Add one `--flag` per model field; all default to None so only given flags override.

    Keys that have no flag (nested structures) are listed in the parser's epilog as YAML-only,
    so `--help` shows every key there is.
    """
    yaml_only = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        flag = "--" + name.replace("_", "-")
        mapped = _flag_type(field.annotation)
        if mapped is None:
            yaml_only.append(name)
            continue
        kind, is_list = mapped
        # argparse formats help with %: a literal one ("~30% slower") must be doubled.
        help_text = (field.description or "").replace("%", "%%")
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
    doc = model.__dict__.get("__doc__")  # the model's own docstring, not a parent's
    if doc:
        parser.description = "\n\n".join(filter(None, (parser.description, _paragraphs(doc))))
    if yaml_only:
        parser.epilog = ((parser.epilog + "\n") if parser.epilog else "") + (
            "Set in the --config YAML file only (no flag): " + ", ".join(yaml_only) + "."
        ) + "\n\n" + "\n".join(yaml_key_help(model, yaml_only))
    # The key list above is laid out line by line; the default formatter would run it together.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def _paragraphs(text: str, width: int = 88) -> str:
    """A docstring as wrapped paragraphs (blank lines kept), for help text laid out as is."""
    blocks = textwrap.dedent(text).strip().split("\n\n")
    return "\n\n".join(textwrap.fill(" ".join(b.split()), width) for b in blocks)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside `Model`, `Model | None` or `list[Model]`; None for anything else."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if arg is not type(None) and (inner := _nested_model(arg)) is not None:
            return inner
    return None


def yaml_key_help(model: type[BaseModel], names: list[str], prefix: str = "") -> list[str]:
    """One wrapped `key: description` entry per YAML-only key, nested models' keys too
    (`refine.filter`, `students[].train`), so `--help` documents every key a file can set."""
    lines = []
    for name in names:
        field = model.model_fields[name]
        key = prefix + name
        lines.append(textwrap.fill(f"{key}: {field.description or ''}".strip(), 88,
                                   initial_indent="  ", subsequent_indent="      "))
        inner = _nested_model(field.annotation)
        if inner is not None:
            sub = "[]." if typing.get_origin(field.annotation) is list else "."
            lines += yaml_key_help(inner, list(inner.model_fields), key + sub)
    return lines


# Keys whose value is a set of problems that must never be trained on: a nested section (and
# the run's own wiring) adds to the list it inherits; replacing it would silently drop the
# evaluation set from a refinement round's decontamination (issue 19).
ADDED_KEYS = frozenset({"decontaminate"})


def overlay(base: Mapping[str, Any], keys: Mapping[str, Any]) -> dict[str, Any]:
    """`keys` over `base` by the rule of nested sections (see PipelineConfig): a key replaces
    the value it inherits, a list whole; an ADDED_KEYS list is the union of both, in order."""
    values = {**base, **keys}
    for key in ADDED_KEYS & keys.keys():
        values[key] = _union([*_items(base.get(key)), *_items(keys[key])])
    return values


def _items(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _union(items: list[Any]) -> list[Any]:
    # `x.jsonl` from YAML and Path("x.jsonl") from a validated config are the same entry.
    seen: dict[str, Any] = {}
    for item in items:
        seen.setdefault(str(Path(item)) if isinstance(item, (str, Path)) else repr(item), item)
    return list(seen.values())


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
