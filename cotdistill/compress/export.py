"""Export a model folder to one GGUF file for llama.cpp / Ollama (`cotdistill export`).

    cotdistill export --model runs/student --format gguf --dtype f16 --out student.f16.gguf

Written with the `gguf` package (`GGUFWriter`, tensor names from its `TensorNameMap`), as
llama.cpp's `convert_hf_to_gguf.py` (not published on PyPI) writes these architectures:
Llama family (SmolLM2 included), Qwen2 / Qwen2.5 and Qwen3. The hyperparameters, the BPE
tokenizer (tokens, types, merges, special token ids, the pre-tokenizer name recognised by the
same hash llama.cpp uses) and the chat template go in as metadata. 2-D weights are stored in
f16 or q8_0, 1-D ones (norms, biases) in f32, as llama.cpp stores them. Llama's q/k projections
are permuted to the rotary layout llama.cpp computes in (transformers undoes it on load).
"""

from __future__ import annotations

import json
import os
import time
from hashlib import sha256
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from cotdistill.config import StrictModel
from cotdistill.errors import InputError
from cotdistill.infra.files import sha256_file, write_manifest


class ExportConfig(StrictModel):
    model: str | None = Field(
        None, description="Model folder to export (a full model, or a LoRA run's merged/); "
        "default: the embedded SmolLM2-135M-Instruct.")
    format: Literal["gguf"] = Field("gguf", description="Output format (gguf: llama.cpp).")
    dtype: Literal["f16", "q8_0", "f32"] = Field(
        "f16", description="Storage of the 2-D weights: f16, q8_0 (8-bit blocks of 32, about "
        "half of f16), f32; norms and biases stay f32.")
    out: Path | None = Field(None, description="Output .gguf file.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (unsafe).")

    @property
    def log_dir(self) -> Path | None:
        """--out is a file: engine and library logs go to logs/ beside it (cli.py)."""
        return None if self.out is None else self.out.parent


# HF model_type -> (GGUF architecture, whether q/k need llama's rotary permutation)
ARCHITECTURES = {"llama": ("llama", True), "qwen2": ("qwen2", False), "qwen3": ("qwen3", False)}

# The test string and hashes of llama.cpp's `get_vocab_base_pre` (convert_hf_to_gguf.py): the
# token ids a tokenizer gives for CHKTXT identify its pre-tokenizer.
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d"
    "\U0001f32b\ufe0f (multiple emojis concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 "
    "33333 333333 3333333 33333333 3.3 3..3 3...3 \u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796"
    "\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 ?\u6211\u60f3\u5728apple\u5de5\u4f5c"
    "1314151\u5929\uff5e ------======= \u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b"
    "\u0433\u0430\u0440\u0441\u043a\u0438 ''''''```````\"\"\"\"......!!!!!!?????? I've been "
    "'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
}


def check_inputs(config: ExportConfig) -> tuple[Path, dict[str, Any]]:
    """The model folder and its config.json, refused before any weights load."""
    from cotdistill.models import resolve_model

    if config.out is None:
        raise InputError("export needs --out FILE.gguf", field="out")
    path = Path(resolve_model(config.model)[0])
    if not (path / "config.json").is_file():
        raise InputError("not a model folder (no config.json); a LoRA adapter exports from its "
                         "merged/ folder (train --merge)", file=path, field="model")
    hf = json.loads((path / "config.json").read_text())
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise InputError(f"cannot export model_type {model_type!r} to GGUF; supported: "
                         + ", ".join(sorted(ARCHITECTURES)), file=path / "config.json",
                         field="model_type")
    if hf.get("quantization_config"):
        raise InputError("export a full-precision folder, not a quantised checkpoint",
                         file=path / "config.json", field="quantization_config")
    scaling = hf.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else None
    if kind not in (None, "default"):
        raise InputError(f"rope_scaling {kind!r} is not exported yet", file=path / "config.json",
                         field="rope_scaling")
    if not list(path.glob("*.safetensors")):
        raise InputError("no .safetensors weights in the folder", file=path, field="model")
    return path, hf


def permute_qk(weight: Any, heads: int) -> Any:
    """HF's rotate-half rows to llama.cpp's interleaved pairs (convert_hf_to_gguf's
    `LlamaModel.permute`); `heads` is the head count of that projection (kv heads for k)."""
    return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def pre_tokenizer(tokenizer: Any) -> str:
    digest = sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest()
    return PRE_TOKENIZERS.get(digest, "default")


def vocab_metadata(tokenizer: Any, vocab_size: int) -> dict[str, Any]:
    """tokens, token types and merges as llama.cpp's `get_vocab_base` lists them: ids past the
    tokenizer up to the model's vocab_size are [PAD{i}] (unused)."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    if backend["model"]["type"] != "BPE":
        raise InputError("only byte-level BPE tokenizers are exported (tokenizer.json model "
                         f"type is {backend['model']['type']})", field="model")
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special
                         else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    return {"tokens": tokens, "types": types, "merges": merges}


def card_metadata(path: Path) -> dict[str, Any]:
    """general.* keys a model card can supply (its license)."""
    from cotdistill.cards import CARD, read_card

    if not (path / CARD).is_file():
        return {}
    meta = read_card(path / CARD)[0]
    return {"license": meta["license"]} if isinstance(meta.get("license"), str) else {}


def storage(name: str, array: Any, dtype: str) -> tuple[Any, Any]:
    """(data, raw dtype or None) for one tensor: 1-D and odd-width tensors stay f32 / f16."""
    import gguf
    import numpy as np

    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim == 1 or dtype == "f32":
        return array, None
    if dtype == "q8_0" and array.shape[-1] % 32 == 0:
        q8 = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(array, q8), q8
    return array.astype(np.float16), None


def model_tensors(path: Path, hf: dict[str, Any]) -> dict[str, Any]:
    """Every weight as a float32 numpy array, by its HF name (bf16 has no numpy dtype)."""
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(file, framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (safe_open has no __iter__)
                tensors[key] = fh.get_tensor(key).float().numpy()
    if hf.get("tie_word_embeddings", True):
        tensors.pop("lm_head.weight", None)  # llama.cpp reads the embeddings instead
    return tensors


def write_gguf(path: Path, hf: dict[str, Any], tokenizer: Any, out: Path, dtype: str
               ) -> dict[str, Any]:
    """Write the file (atomically); returns what was written."""
    import gguf

    arch, permute = ARCHITECTURES[hf["model_type"]]
    layers, heads = hf["num_hidden_layers"], hf["num_attention_heads"]
    kv_heads = hf.get("num_key_value_heads") or heads
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    vocab_size = hf["vocab_size"]
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(path.resolve().name)
    meta = card_metadata(path)
    if "license" in meta:
        writer.add_license(meta["license"])
    writer.add_block_count(layers)
    writer.add_context_length(hf.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hf["hidden_size"])
    writer.add_feed_forward_length(hf["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(hf.get("rope_theta")
                                    or (hf.get("rope_parameters") or {}).get("rope_theta")
                                    or 10000.0))
    writer.add_layer_norm_rms_eps(hf.get("rms_norm_eps", 1e-6))
    if head_dim != hf["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
                 "f32": gguf.LlamaFileType.ALL_F32}[dtype]
    writer.add_file_type(file_type)
    if arch == "llama":
        writer.add_vocab_size(vocab_size)
        writer.add_rope_dimension_count(head_dim)

    vocab = vocab_metadata(tokenizer, vocab_size)
    pre = pre_tokenizer(tokenizer)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(vocab["tokens"])
    writer.add_token_types(vocab["types"])
    writer.add_token_merges(vocab["merges"])
    ids = {name: getattr(tokenizer, f"{name}_token_id", None)
           for name in ("bos", "eos", "unk", "pad")}
    if ids["bos"] is not None:
        writer.add_bos_token_id(ids["bos"])
    if ids["eos"] is not None:
        writer.add_eos_token_id(ids["eos"])
    if ids["unk"] is not None:
        writer.add_unk_token_id(ids["unk"])
    if ids["pad"] is not None:
        writer.add_pad_token_id(ids["pad"])
    writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)))
    writer.add_add_space_prefix(False)  # byte-level BPE encodes the space itself
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], layers)
    written: dict[str, list[int]] = {}
    for key, array in model_tensors(path, hf).items():
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            tmp.unlink(missing_ok=True)
            raise InputError(f"no GGUF name for tensor {key!r}", file=path, field="model")
        if permute and key.endswith("self_attn.q_proj.weight"):
            array = permute_qk(array, heads)
        elif permute and key.endswith("self_attn.k_proj.weight"):
            array = permute_qk(array, kv_heads)
        data, raw = storage(name, array, dtype)
        writer.add_tensor(name, data, raw_dtype=raw)
        written[name] = list(array.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return {"architecture": arch, "tensors": len(written), "pre_tokenizer": pre,
            "file_type": file_type.name}


def run_export(config: ExportConfig) -> dict[str, Any]:
    """Export `config.model` to `config.out`; returns the manifest (`OUT.manifest.json`)."""
    started = time.time()
    path, hf = check_inputs(config)
    from transformers import AutoTokenizer

    from cotdistill.models import load_pretrained

    tokenizer = load_pretrained(AutoTokenizer, str(path), config.trust_remote_code, "model")
    out = Path(config.out)  # type: ignore[arg-type]
    out.parent.mkdir(parents=True, exist_ok=True)
    written = write_gguf(path, hf, tokenizer, out, config.dtype)
    manifest = write_manifest(
        out.parent, stage="export", config=config,
        inputs={str(f): sha256_file(f) for f in sorted(path.glob("*.safetensors"))},
        counts={"tensors": written["tensors"], "bytes": out.stat().st_size},
        started=started, extra={"gguf": written, "file": str(out)},
        name=f"{out.name}.manifest.json",
    )
    print(f"export: {written['architecture']} {config.dtype}, {written['tensors']} tensors, "
          f"{out.stat().st_size / 2**20:.1f} MiB -> {out}")
    return manifest
