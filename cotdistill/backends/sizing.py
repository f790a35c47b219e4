"""How much memory an in-process vLLM engine on CPU may take, checked before it starts.

vLLM's CPU worker sizes its KV cache as `gpu_memory_utilization` x the NUMA node's memory
(`/sys/devices/system/node/node0/meminfo`) minus its own resident memory. What "node 0"
reports differs between machines of one kind (8.46 GiB on a freshly started one whose `free`
says 24 GiB) and grows during a machine's life, so a fraction that works on one machine gives
a negative budget on another. On CPU, cotdistill instead passes `kv_cache_memory_bytes`, sized
from the model and the run: bytes per token (from the model's config.json) x the sequences in
flight (batch x n) x their length (prompt + max_tokens), with headroom and a floor.

    per_token = kv_bytes_per_token(read_model_config(path), "bfloat16")
    plan = plan_cpu_engine(path, engine, Workload.of(batch_size=75, n=4, max_tokens=128))
    plan.kv_cache_bytes            # what LLM(kv_cache_memory_bytes=...) gets
    preflight(plan)                # raises InputError with one line saying what to change

No vLLM or torch import here: the plan and the preflight run before any model loads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cotdistill.config import EngineConfig
from cotdistill.errors import InputError
from cotdistill.records import Message

GiB = 1024**3
MiB = 1024**2

# vLLM 0.32 on CPU (vllm/platforms/cpu.py): KV blocks of 128 tokens (16 for MLA models), at
# most 256 sequences scheduled at once per tensor-parallel rank for the offline `LLM` class
# (vllm/engine/arg_utils.py, get_batch_defaults).
CPU_BLOCK_TOKENS = 128
CPU_MLA_BLOCK_TOKENS = 16
CPU_MAX_NUM_SEQS = 256
# The sizing is an estimate (prompt length, prefix sharing); a quarter more avoids preemption.
HEADROOM = 1.25
FLOOR_BYTES = 256 * MiB
# Prompt length assumed when the stage does not say (a chat template plus a long question).
DEFAULT_PROMPT_TOKENS = 512
# Tokens a chat template adds around the messages (role markers, a default system prompt).
TEMPLATE_TOKENS = 64
# Memory the engine takes besides weights and KV cache: vLLM and torch imported in this
# process and in the two engine processes, the worker's buffers. Measured on the 2-core CPU
# machine (bench/bench_engine_memory.py, resident memory not backed by files): 1.18 GiB with
# the tiny test model, 1.57 GiB with SmolLM2-135M.
ENGINE_OVERHEAD_BYTES = int(1.75 * GiB)
# The least the engine's worker process alone was seen to hold besides its weights (0.8 GiB,
# tiny model): vLLM's fraction path subtracts the worker's own memory, not this process's.
WORKER_MIN_BYTES = int(0.75 * GiB)
# An automatic size takes at most this share of the memory left after weights and overhead:
# the rest stays for this process, math-verify's workers and the next stage.
AUTO_SHARE = 0.5


@dataclass(frozen=True)
class Workload:
    """What a stage will ask of the engine at once."""

    sequences: int  # requests in flight: batch_size x n
    max_tokens: int  # new tokens per sample
    prompt_tokens: int = DEFAULT_PROMPT_TOKENS  # estimate for the longest prompt

    @classmethod
    def of(
        cls,
        batch_size: int,
        n: int,
        max_tokens: int,
        conversations: Iterable[Sequence[Message]] = (),
    ) -> Workload:
        """A stage's workload; the prompt length is estimated from its rendered conversations.

        Two characters per token overestimates English (about four) and is right for digits,
        which many tokenizers split one by one.
        """
        longest = max((sum(len(m.content) for m in c) for c in conversations), default=None)
        prompt = DEFAULT_PROMPT_TOKENS if longest is None else longest // 2 + TEMPLATE_TOKENS
        return cls(sequences=batch_size * n, max_tokens=max_tokens, prompt_tokens=prompt)


# A run that does not describe itself (a backend built by hand): modest, a few batches deep.
DEFAULT_WORKLOAD = Workload(sequences=32, max_tokens=512)


def read_model_config(model: str) -> dict[str, Any] | None:
    """The model's config.json from its folder (or the hub cache); None when not found."""
    path = Path(model).expanduser() / "config.json"
    if not path.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # not a repo id, or no hub library: sizing falls back to defaults
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    return json.loads(path.read_text())


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    # Multimodal wrappers keep the language model's shape in a nested config.
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def _first(config: dict[str, Any], *keys: str) -> Any:
    return next((config[k] for k in keys if config.get(k) is not None), None)


def dtype_bytes(dtype: str, config: dict[str, Any]) -> int:
    """Bytes per KV-cache element: the served dtype (the KV cache follows it).

    With `auto`, vLLM serves a float32 checkpoint in bfloat16 on CPU (vllm/config/model.py
    downcasts float32 configs to the platform's first supported dtype), so only an explicit
    float32 costs four bytes.
    """
    if dtype in ("float32", "float"):
        return 4
    return 2


def kv_bytes_per_token(config: dict[str, Any], dtype: str, tensor_parallel: int = 1) -> int:
    """KV-cache bytes one token takes in one engine rank: 2 x layers x KV heads x head size x
    dtype bytes (keys and values), as vLLM's `AttentionSpec.page_size_bytes / block_size`.

    Grouped-query attention counts KV heads (`num_key_value_heads`), an explicit `head_dim`
    wins over hidden/heads, and KV heads split across tensor-parallel ranks (at least one
    each, as vLLM replicates them). MLA models keep one latent of `kv_lora_rank +
    qk_rope_head_dim` per layer. Sliding-window layers are counted as full attention: an
    overestimate, never an underestimate.
    """
    text = _text_config(config)
    size = dtype_bytes(dtype, text)
    layers = _first(text, "num_hidden_layers", "n_layer", "num_layers")
    if layers is None:
        raise ValueError("model config has no num_hidden_layers")
    if text.get("kv_lora_rank"):
        latent = int(text["kv_lora_rank"]) + int(text.get("qk_rope_head_dim", 0))
        return int(layers) * latent * size
    heads = _first(text, "num_attention_heads", "n_head")
    hidden = _first(text, "hidden_size", "n_embd", "d_model")
    if heads is None or hidden is None:
        raise ValueError("model config has no num_attention_heads or hidden_size")
    kv_heads = _first(text, "num_key_value_heads", "n_head_kv")
    if kv_heads is None:
        kv_heads = 1 if text.get("multi_query") else heads
    head_size = _first(text, "head_dim") or int(hidden) // int(heads)
    per_rank = max(1, int(kv_heads) // tensor_parallel)
    return int(layers) * 2 * per_rank * int(head_size) * size


def context_length(config: dict[str, Any]) -> int | None:
    """The model's own context length (vLLM's default max_model_len), if the config says."""
    value = _first(
        _text_config(config), "max_position_embeddings", "n_positions", "max_seq_len",
        "seq_length", "max_sequence_length",
    )
    return None if value is None else int(value)


def auto_kv_cache_bytes(
    per_token: int, workload: Workload, max_model_len: int, tensor_parallel: int = 1,
    block_tokens: int = CPU_BLOCK_TOKENS,
) -> tuple[int, int]:
    """(size for the workload, floor) in bytes.

    The size: sequences vLLM will run at once x their length in whole blocks x headroom. The
    floor: one sequence of `max_model_len` plus vLLM's reserved null block (vLLM refuses to
    start with less) and never under 256 MiB.
    """
    length = min(workload.prompt_tokens + workload.max_tokens, max_model_len)
    blocks = math.ceil(length / block_tokens)
    sequences = min(workload.sequences, CPU_MAX_NUM_SEQS * tensor_parallel)
    wanted = int(per_token * block_tokens * blocks * sequences * HEADROOM)
    one_sequence = per_token * block_tokens * (math.ceil(max_model_len / block_tokens) + 1)
    floor = max(one_sequence, FLOOR_BYTES)
    return _round_mib(max(wanted, floor)), _round_mib(floor)


def _round_mib(value: int) -> int:
    return math.ceil(value / MiB) * MiB


@dataclass(frozen=True)
class MemoryAvailable:
    """What the machine can give, in bytes, and where the figure comes from."""

    node_bytes: int | None  # NUMA node 0 as vLLM's CPU worker counts it; None without sysfs
    system_bytes: int  # psutil's available memory

    @property
    def usable(self) -> int:
        return min(self.system_bytes, self.node_bytes or self.system_bytes)

    def describe(self) -> str:
        if self.node_bytes is not None and self.node_bytes <= self.system_bytes:
            return f"NUMA node 0 has {self.node_bytes / GiB:.2f} GiB available"
        return f"the machine has {self.system_bytes / GiB:.2f} GiB available"


NODE_MEMINFO = Path("/sys/devices/system/node/node0/meminfo")


def node_available_bytes(meminfo: Path = NODE_MEMINFO) -> int | None:
    """Node 0's available memory, counted as vLLM's CPU worker counts it before allocating the
    KV cache (vllm/utils/cpu_resource_utils.py, get_memory_node_info): MemFree +
    Active(file) + Inactive(file) + SReclaimable."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    values: dict[str, int] = {}
    for line in lines:
        parts = line.split()  # "Node 0 MemFree:  7605416 kB"
        if len(parts) >= 4:
            values[parts[2].rstrip(":")] = int(parts[3]) * 1024
    keys = ("MemFree", "Active(file)", "Inactive(file)", "SReclaimable")
    if not all(k in values for k in keys):
        return None
    return sum(values[k] for k in keys)


def memory_available() -> MemoryAvailable:
    import psutil

    return MemoryAvailable(node_available_bytes(), int(psutil.virtual_memory().available))


def weights_bytes(model: str) -> int:
    """Bytes of the checkpoint files (an upper bound on the weights in memory: a float32
    checkpoint served in bfloat16 takes half)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return 0
    patterns = ("*.safetensors", "*.bin", "*.pt")
    return sum(p.stat().st_size for pattern in patterns for p in folder.glob(pattern))


@dataclass(frozen=True)
class EnginePlan:
    """Memory an in-process CPU engine will ask for; `kv_cache_bytes` None: vLLM decides."""

    model: str
    kv_cache_bytes: int | None
    kv_source: str  # "auto", "kv_cache_gb", "VLLM_CPU_KVCACHE_SPACE", "gpu_memory_utilization"
    weights_bytes: int
    floor_bytes: int
    gpu_memory_utilization: float | None = None
    note: str = ""


def plan_cpu_engine(
    model: str,
    engine: EngineConfig,
    workload: Workload | None = None,
    available: MemoryAvailable | None = None,
) -> EnginePlan:
    """The KV-cache size a CPU engine gets, from the settings in order of precedence:
    `kv_cache_gb`, vLLM's own `VLLM_CPU_KVCACHE_SPACE`, an explicit `gpu_memory_utilization`
    (vLLM's fraction of node memory, honoured as asked), else sized for the workload.

    An automatic size is trimmed to half of the memory left after weights and overhead (never
    under the floor), so a big batch slows down (vLLM queues requests) instead of failing.
    """
    weights = weights_bytes(model)
    config = read_model_config(model)
    floor = FLOOR_BYTES
    per_token = None
    if config is not None:
        try:
            per_token = kv_bytes_per_token(config, engine.dtype, engine.tensor_parallel_size)
        except (ValueError, TypeError):
            per_token = None  # an unusual config: fall back to the floor-based defaults
    max_len = engine.max_model_len or (context_length(config) if config else None)
    block = CPU_MLA_BLOCK_TOKENS if config and _text_config(config).get("kv_lora_rank") else (
        CPU_BLOCK_TOKENS
    )
    if per_token is not None and max_len is not None:
        wanted, floor = auto_kv_cache_bytes(
            per_token, workload or DEFAULT_WORKLOAD, max_len, engine.tensor_parallel_size, block
        )
    else:
        wanted = 4 * FLOOR_BYTES

    def fixed(size: int, source: str) -> EnginePlan:
        return EnginePlan(model, size, source, weights, floor)

    if engine.kv_cache_gb is not None:
        return fixed(_round_mib(int(engine.kv_cache_gb * GiB)), "kv_cache_gb")
    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "")
    if space:
        return fixed(int(space) * GiB, "VLLM_CPU_KVCACHE_SPACE")
    if engine.gpu_memory_utilization is not None:
        return EnginePlan(model, None, "gpu_memory_utilization", weights, floor,
                          engine.gpu_memory_utilization)
    available = available or memory_available()
    spare = available.usable - weights - ENGINE_OVERHEAD_BYTES
    cap = _round_mib(int(spare * AUTO_SHARE)) if spare > 0 else 0
    if wanted > cap:
        size = max(floor, cap)
        note = (f"KV cache trimmed from {wanted / GiB:.2f} to {size / GiB:.2f} GiB to fit "
                f"memory ({available.describe()}): vLLM queues what does not fit")
        return EnginePlan(model, size, "auto", weights, floor, note=note)
    return fixed(wanted, "auto")


def _gib(value: float) -> str:
    return f"{value / GiB:.2f}"


def preflight(plan: EnginePlan, available: MemoryAvailable | None = None) -> None:
    """Stop with one line saying what to change when the engine cannot fit in memory.

    vLLM's CPU worker compares the KV-cache request with node 0's available memory after its
    weights are loaded; here the same comparison is made before anything loads, with the
    weights and the engine's measured overhead added.
    """
    available = available or memory_available()
    have = available.usable
    fixed_cost = plan.weights_bytes + ENGINE_OVERHEAD_BYTES
    if plan.kv_cache_bytes is None:
        fraction = plan.gpu_memory_utilization
        if fraction is None or available.node_bytes is None:
            return
        # vLLM's fraction path: fraction x node total, minus the worker's own memory. Only
        # what is sure to fail stops here: the user asked for this fraction.
        total = _node_total_bytes() or available.system_bytes
        requested = int(total * fraction)
        worker = plan.weights_bytes + WORKER_MIN_BYTES
        if requested > available.node_bytes or requested <= worker:
            raise InputError(
                f"gpu_memory_utilization {fraction} asks vLLM for {_gib(requested)} GiB of "
                f"node 0's {_gib(total)} GiB, but the engine's worker alone takes over "
                f"{_gib(worker)} GiB and {available.describe()}: remove "
                "gpu_memory_utilization to size the KV cache in bytes (kv_cache_gb), or free "
                "memory",
                field="gpu_memory_utilization",
            )
        return
    need = fixed_cost + plan.kv_cache_bytes
    if need <= have:
        return
    suggested = math.floor((have - fixed_cost) / GiB * 10) / 10  # GiB, one decimal, down
    if suggested * GiB >= plan.floor_bytes:
        advice = f"set --kv-cache-gb {suggested:.1f} (kv_cache_gb) or free memory"
    else:
        advice = ("free memory, or lower --max-model-len (the KV cache must hold one whole "
                  f"sequence: {_gib(plan.floor_bytes)} GiB)")
    raise InputError(
        f"not enough memory to start the engine: it needs about {_gib(need)} GiB (weights "
        f"{_gib(plan.weights_bytes)} + KV cache {_gib(plan.kv_cache_bytes)} ({plan.kv_source}) "
        f"+ engine {_gib(ENGINE_OVERHEAD_BYTES)}) but {available.describe()}: {advice}",
        field="kv_cache_gb",
    )


def _node_total_bytes(meminfo: Path = NODE_MEMINFO) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "MemTotal:":
                return int(parts[3]) * 1024
    except OSError:
        return None
    return None
