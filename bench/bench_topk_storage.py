"""Bytes per completion token of stored top-K logprobs: the topk/ side file against JSON lists.

Writes one shard of 4,096 tokens with K = 20 through `cotdistill.topk.TopkWriter` (ids int32,
logprobs float16, plus the sampled id and logprob) and the same rows as the JSON a traces line
would hold in two styles: vLLM/OpenAI-like objects ({"id": .., "logprob": ..} per candidate,
full float repr) and compact parallel lists (ids and logprobs rounded to 4 decimals). Ids are
drawn over Qwen2.5's 151,936 tokens and logprobs from a softmax, as a teacher's look.
Results go to bench/results/topk_storage.md and .json.

    .venv/bin/python bench/bench_topk_storage.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def main(tokens: int = 4096, k: int = 20, vocab: int = 151_936) -> dict:
    import numpy as np

    from cotdistill.backends import TopkTokens
    from cotdistill.topk_store import TopkWriter, bytes_per_token

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(tokens, 64)) * 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    top = -np.sort(-logp, axis=1)[:, :k]
    ids = rng.integers(0, vocab, size=(tokens, k), dtype=np.int32)
    rows = TopkTokens(ids=ids, logprobs=top.astype(np.float16), sampled=ids[:, 0].copy(),
                      sampled_lp=top[:, 0].astype(np.float16))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "topk"
        TopkWriter(folder, k, {"tokenizer": "bench", "vocab_size": vocab,
                               "vocab_sha256": "0" * 64}).write([(("p0", 0), rows)])
        side = sum(p.stat().st_size for p in folder.glob("shard-*"))
    objects = json.dumps([[{"id": int(i), "logprob": float(v)} for i, v in zip(r_ids, r_lp,
                                                                                strict=True)]
                          for r_ids, r_lp in zip(ids, top, strict=True)])
    compact = json.dumps({"ids": ids.tolist(), "logprobs": np.round(top, 4).tolist()})
    result = {
        "tokens": tokens, "k": k, "fixed_bytes_per_token": bytes_per_token(k),
        "side_file_bytes_per_token": round(side / tokens, 2),
        "json_objects_bytes_per_token": round(len(objects) / tokens, 1),
        "json_compact_bytes_per_token": round(len(compact) / tokens, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "topk_storage.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Stored top-K logprobs: bytes per completion token (bench/bench_topk_storage.py)", "",
        f"{tokens} tokens, K = {k}, ids over {vocab:,} tokens.", "",
        "| format | bytes/token | vs side file |", "|---|---:|---:|",
        f"| topk/ side file (.npy: int32 ids, float16 logprobs) | "
        f"{result['side_file_bytes_per_token']} | 1.0x |",
        f"| JSON objects {{id, logprob}} per candidate | "
        f"{result['json_objects_bytes_per_token']} | "
        f"{result['json_objects_bytes_per_token'] / result['side_file_bytes_per_token']:.1f}x |",
        f"| JSON parallel lists, logprobs to 4 decimals | "
        f"{result['json_compact_bytes_per_token']} | "
        f"{result['json_compact_bytes_per_token'] / result['side_file_bytes_per_token']:.1f}x |",
        "",
    ]
    (RESULTS / "topk_storage.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
