"""KV-cache sizing on CPU and the memory check before the engine starts
(cotdistill/backends/sizing.py): arithmetic against vLLM's own KV-cache spec, then the
preflight with the memory readings replaced."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from cotdistill.backends.sizing import (
    CPU_BLOCK_TOKENS,
    ENGINE_OVERHEAD_BYTES,
    FLOOR_BYTES,
    GiB,
    MemoryAvailable,
    MiB,
    Workload,
    auto_kv_cache_bytes,
    kv_bytes_per_token,
    node_available_bytes,
    plan_cpu_engine,
    preflight,
)
from cotdistill.config import EngineConfig
from cotdistill.errors import InputError
from cotdistill.records import Message

# SmolLM2-135M-Instruct, the embedded teacher, as its converted folder's config.json has it.
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16",
    "head_dim": 64, "hidden_size": 576, "intermediate_size": 1536,
    "max_position_embeddings": 8192, "num_attention_heads": 9, "num_hidden_layers": 30,
    "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-05,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
}


def model_folder(tmp_path: Path, config: dict, weights: int = 0) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if weights:
        with open(folder / "model.safetensors", "wb") as fh:
            fh.truncate(weights)  # sparse: only its size matters
    return folder


@pytest.mark.parametrize(
    ("config", "dtype", "expected"),
    [
        # 30 layers x (K and V) x 3 KV heads (GQA, not 9) x head_dim 64 x 2 bytes
        (SMOLLM2, "bfloat16", 30 * 2 * 3 * 64 * 2),
        # vLLM serves a float32 checkpoint in bfloat16 on CPU unless float32 is asked for
        (SMOLLM2, "float32", 30 * 2 * 3 * 64 * 4),
        # no num_key_value_heads: every head has its own K and V; head size = hidden / heads
        ({"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512}, "auto",
         4 * 2 * 8 * 64 * 2),
        # an explicit head_dim wins over hidden / heads (Gemma-style)
        ({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
          "hidden_size": 64, "head_dim": 256}, "bfloat16", 2 * 2 * 1 * 256 * 2),
        # multimodal wrapper: the language model's shape is in text_config
        ({"text_config": {"num_hidden_layers": 3, "num_attention_heads": 4,
                          "num_key_value_heads": 2, "hidden_size": 128}}, "bfloat16",
         3 * 2 * 2 * 32 * 2),
        # MLA keeps one latent per layer
        ({"num_hidden_layers": 2, "num_attention_heads": 16, "hidden_size": 1024,
          "kv_lora_rank": 512, "qk_rope_head_dim": 64}, "bfloat16", 2 * 576 * 2),
    ],
)
def test_bytes_per_token(config: dict, dtype: str, expected: int) -> None:
    assert kv_bytes_per_token(config, dtype) == expected


def test_kv_heads_split_across_tensor_parallel_ranks_but_never_below_one() -> None:
    one_rank = kv_bytes_per_token(SMOLLM2, "bfloat16")
    assert kv_bytes_per_token(SMOLLM2, "bfloat16", tensor_parallel=3) == one_rank // 3
    assert kv_bytes_per_token(SMOLLM2, "bfloat16", tensor_parallel=8) == one_rank // 3


@pytest.mark.vllm
@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_bytes_per_token_agree_with_vllm_kv_cache_spec(
    which: str, tiny_model: Path, tmp_path: Path
) -> None:
    """vLLM's own reading of the config (ModelConfig, no engine) and its page size."""
    from vllm.config import ModelConfig, ParallelConfig
    from vllm.v1.kv_cache_interface import FullAttentionSpec

    if which == "tiny":
        folder, dtype = tiny_model, "auto"  # a float32 checkpoint: vLLM serves it in bf16
    else:
        folder, dtype = model_folder(tmp_path, SMOLLM2), "bfloat16"
    model_config = ModelConfig(model=str(folder), dtype=dtype, skip_tokenizer_init=True)
    parallel = ParallelConfig()
    spec = FullAttentionSpec(
        block_size=CPU_BLOCK_TOKENS, num_kv_heads=model_config.get_num_kv_heads(parallel),
        head_size=model_config.get_head_size(), dtype=model_config.dtype,
    )
    layers = model_config.get_num_layers(parallel)
    vllm_per_token = spec.page_size_bytes // CPU_BLOCK_TOKENS * layers
    config = json.loads((Path(folder) / "config.json").read_text())
    assert kv_bytes_per_token(config, dtype) == vllm_per_token
    # One whole sequence of the model's context fits in the floor, or vLLM refuses to start.
    _, floor = auto_kv_cache_bytes(vllm_per_token, Workload(1, 1), model_config.max_model_len)
    assert floor >= spec.page_size_bytes * layers * (model_config.max_model_len // 128 + 1)


def test_auto_size_is_sequences_times_length_with_headroom() -> None:
    per_token = 30 * 2 * 3 * 64 * 2  # SmolLM2 in bf16: 23,040 bytes
    # The demo's generate stage: 75 problems x 4 samples, 128 new tokens, short prompts.
    size, floor = auto_kv_cache_bytes(per_token, Workload(300, 128, prompt_tokens=100), 8192)
    # 256 sequences at most (vLLM's CPU scheduler), 228 tokens -> 2 blocks of 128, x 1.25
    assert size == pytest.approx(per_token * 256 * 256 * 1.25, abs=MiB)
    assert size % MiB == 0
    # Ten sequences need less than the floor: one 8192-token sequence plus vLLM's null block.
    small, floor = auto_kv_cache_bytes(per_token, Workload(10, 128, prompt_tokens=100), 8192)
    assert small == floor >= per_token * 128 * 65 and floor >= FLOOR_BYTES
    # A shorter max_model_len caps the sequence length.
    capped, _ = auto_kv_cache_bytes(per_token, Workload(64, 4096, prompt_tokens=4096), 1024)
    assert capped == pytest.approx(per_token * 64 * 1024 * 1.25, abs=MiB)


def test_workload_estimates_the_prompt_from_the_rendered_conversations() -> None:
    long = [Message(role="system", content="x" * 100), Message(role="user", content="y" * 300)]
    short = [Message(role="user", content="1 + 1")]
    workload = Workload.of(batch_size=75, n=4, max_tokens=128, conversations=[short, long])
    assert workload.sequences == 300 and workload.max_tokens == 128
    assert workload.prompt_tokens == 400 // 2 + 64  # two characters per token, template extra


def test_node_memory_is_read_as_vllm_reads_it(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(
        "Node 0 MemTotal:        8087764 kB\nNode 0 MemFree:         1000000 kB\n"
        "Node 0 Active(file):      63800 kB\nNode 0 Inactive(file):   136340 kB\n"
        "Node 0 SReclaimable:      20000 kB\nNode 0 AnonPages:        20516 kB\n"
    )
    assert node_available_bytes(meminfo) == (1000000 + 63800 + 136340 + 20000) * 1024
    assert node_available_bytes(tmp_path / "missing") is None


PLENTY = MemoryAvailable(node_bytes=20 * GiB, system_bytes=20 * GiB)


def test_plan_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = str(model_folder(tmp_path, SMOLLM2, weights=270 * MiB))
    workload = Workload(300, 128, prompt_tokens=100)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    auto = plan_cpu_engine(folder, EngineConfig(dtype="bfloat16"), workload, PLENTY)
    assert auto.kv_source == "auto" and auto.weights_bytes == 270 * MiB
    assert auto.kv_cache_bytes == auto_kv_cache_bytes(23040, workload, 8192)[0]
    explicit = plan_cpu_engine(folder, EngineConfig(kv_cache_gb=0.5), workload, PLENTY)
    assert (explicit.kv_cache_bytes, explicit.kv_source) == (512 * MiB, "kv_cache_gb")
    fraction = plan_cpu_engine(folder, EngineConfig(gpu_memory_utilization=0.3), workload, PLENTY)
    assert fraction.kv_cache_bytes is None and fraction.gpu_memory_utilization == 0.3
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    env = plan_cpu_engine(folder, EngineConfig(), workload, PLENTY)
    assert (env.kv_cache_bytes, env.kv_source) == (2 * GiB, "VLLM_CPU_KVCACHE_SPACE")


def test_auto_size_shrinks_to_fit_but_never_below_the_floor(tmp_path: Path) -> None:
    folder = str(model_folder(tmp_path, SMOLLM2, weights=270 * MiB))
    big = Workload(256, 4096, prompt_tokens=4096)  # wants ~12 GiB
    tight = MemoryAvailable(node_bytes=3 * GiB, system_bytes=20 * GiB)
    plan = plan_cpu_engine(folder, EngineConfig(), big, tight)
    spare = 3 * GiB - 270 * MiB - ENGINE_OVERHEAD_BYTES
    assert plan.kv_cache_bytes <= spare // 2 + MiB and plan.kv_cache_bytes >= plan.floor_bytes
    assert "trimmed" in plan.note
    preflight(plan, tight)  # the trimmed size fits


def test_preflight_stops_with_one_line_before_any_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine cannot fit: InputError with what to change, and vllm.LLM is never called."""
    from cotdistill.backends import vllm_backend

    folder = str(model_folder(tmp_path, SMOLLM2, weights=270 * MiB))
    # A freshly started machine: node 0 reports little, whatever `free` says.
    small = MemoryAvailable(node_bytes=int(2.5 * GiB), system_bytes=24 * GiB)
    monkeypatch.setattr("cotdistill.backends.sizing.memory_available", lambda: small)
    monkeypatch.setattr(vllm_backend, "has_cuda", lambda: False)
    loaded: list[dict] = []
    fake_vllm = types.ModuleType("vllm")
    fake_vllm.LLM = lambda **kwargs: loaded.append(kwargs)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)

    with pytest.raises(InputError) as caught:
        vllm_backend.VLLMBackend(folder, EngineConfig(kv_cache_gb=4.0))
    message = str(caught.value)
    assert "\n" not in message
    assert "not enough memory to start the engine" in message
    assert "NUMA node 0 has 2.50 GiB available" in message
    # 2.5 GiB - 0.26 weights - 1.75 engine = 0.49: the advice is a size that fits.
    assert "--kv-cache-gb 0.4" in message
    assert loaded == []

    # The default sizing on the same machine starts (the fake engine gets the byte size).
    vllm_backend.VLLMBackend(folder, EngineConfig(), Workload(300, 128, prompt_tokens=100))
    assert loaded and loaded[0]["kv_cache_memory_bytes"] >= FLOOR_BYTES
    assert "gpu_memory_utilization" not in loaded[0]


def test_preflight_advises_freeing_memory_when_not_even_one_sequence_fits(
    tmp_path: Path,
) -> None:
    folder = str(model_folder(tmp_path, SMOLLM2, weights=270 * MiB))
    none_left = MemoryAvailable(node_bytes=int(1.4 * GiB), system_bytes=24 * GiB)
    plan = plan_cpu_engine(folder, EngineConfig(), Workload(4, 64), none_left)
    with pytest.raises(InputError, match="free memory, or lower --max-model-len"):
        preflight(plan, none_left)


def test_preflight_checks_an_explicit_fraction_as_vllm_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = str(model_folder(tmp_path, SMOLLM2, weights=270 * MiB))
    # The machine: node 0 of 8.46 GiB; 0.1 of it is less than the engine itself.
    monkeypatch.setattr("cotdistill.backends.sizing._node_total_bytes", lambda: int(8.46 * GiB))
    fresh = MemoryAvailable(node_bytes=int(6.36 * GiB), system_bytes=24 * GiB)
    plan = plan_cpu_engine(folder, EngineConfig(gpu_memory_utilization=0.1), None, fresh)
    with pytest.raises(InputError, match="remove gpu_memory_utilization"):
        preflight(plan, fresh)
    plan = plan_cpu_engine(folder, EngineConfig(gpu_memory_utilization=0.3), None, fresh)
    preflight(plan, fresh)
    # More than the node has available now: vLLM would refuse at start-up.
    plan = plan_cpu_engine(folder, EngineConfig(gpu_memory_utilization=0.9), None, fresh)
    with pytest.raises(InputError, match="NUMA node 0 has 6.36 GiB available"):
        preflight(plan, fresh)
