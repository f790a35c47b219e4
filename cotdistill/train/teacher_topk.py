"""The teacher's top-K log-probabilities on given token sequences, from vLLM (no teacher weights
in the training process).

Two sources behind one method, `topk(sequences, prompt_lengths) -> [(ids, logprobs)]`, one
pair of (completion tokens, K) arrays per sequence, row j for completion token j:

- `TeacherEngine`: an in-process vLLM engine (`cotdistill/backends/vllm_backend.py`, its
  engine core and worker in their own processes), asked for `prompt_logprobs=K` on the whole
  prompt + completion with `max_tokens=1`;
- `TeacherServer`: a vLLM OpenAI-compatible server of the same model, through TRL's
  `VLLMClient.get_sequence_logprobs` (the same request on /v1/completions).

vLLM returns raw log-probabilities (before temperature); the loss tempers them. Ids are -1 and
log-probabilities -inf where a position has fewer than K candidates.

    teacher = TeacherEngine("runs/teacher", k=20, sequences=16, max_tokens=256)
    [(ids, logprobs)] = teacher.topk([prompt_ids + completion_ids], [len(prompt_ids)])
    teacher.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Rows = tuple[Any, Any]  # (ids int32 (n, K), logprobs float32 (n, K)) numpy arrays


def ranked_rows(position_logprobs: Sequence[Any], k: int) -> Rows:
    """vLLM's per-position candidate dicts ({token id: Logprob with .rank, .logprob}: the top K
    by rank plus the actual token when it ranks lower) -> (ids, logprobs) arrays, best first."""
    import numpy as np

    ids = np.full((len(position_logprobs), k), -1, dtype=np.int32)
    logprobs = np.full((len(position_logprobs), k), -np.inf, dtype=np.float32)
    for row, candidates in enumerate(position_logprobs):
        ranked = sorted((entry.rank, tid, entry.logprob)
                        for tid, entry in (candidates or {}).items()
                        if entry.rank is not None and entry.rank <= k)[:k]
        for j, (_, tid, logprob) in enumerate(ranked):
            ids[row, j] = tid
            logprobs[row, j] = logprob
    return ids, logprobs


class TeacherEngine:
    """The teacher in its own vLLM engine, sized for `sequences` of `max_tokens` new tokens."""

    name = "engine"

    def __init__(self, model: str, *, k: int, sequences: int, max_tokens: int,
                 prompt_tokens: int = 512, seed: int = 0, trust_remote_code: bool = False,
                 max_model_len: int | None = None) -> None:
        from cotdistill.backends.sizing import Workload
        from cotdistill.backends.vllm_backend import VLLMBackend
        from cotdistill.config import EngineConfig

        self.k = k
        # The teacher reads prompt + completion as one prompt: that length, not max_tokens, is
        # what its KV cache must hold.
        workload = Workload(sequences=sequences, max_tokens=max_tokens,
                            prompt_tokens=prompt_tokens)
        self.backend = VLLMBackend(model, EngineConfig(
            seed=seed, trust_remote_code=trust_remote_code, max_model_len=max_model_len,
            gpu_memory_utilization=None if not _cuda() else 0.3), workload)

    def topk(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]
             ) -> list[Rows]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=self.k)
        outputs = self.backend.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params, use_tqdm=False)
        rows = []
        for output, start in zip(outputs, prompt_lengths, strict=True):
            # prompt_logprobs[i] is the distribution that predicted token i (None for i = 0).
            rows.append(ranked_rows(output.prompt_logprobs[start:], self.k))
        return rows

    def close(self) -> None:
        self.backend.close()


class TeacherServer:
    """A vLLM server serving the teacher (`python -m vllm.entrypoints.openai.api_server`)."""

    name = "server"

    def __init__(self, base_url: str, *, k: int, timeout: float = 60.0) -> None:
        from trl.generation.vllm_client import VLLMClient

        self.k = k
        self.client = VLLMClient(base_url=base_url.rstrip("/").removesuffix("/v1"),
                                 connection_timeout=timeout)

    def topk(self, sequences: Sequence[Sequence[int]], prompt_lengths: Sequence[int]
             ) -> list[Rows]:
        import numpy as np

        result = self.client.get_sequence_logprobs(
            sequences=[list(s) for s in sequences], prompt_lengths=list(prompt_lengths),
            top_logprobs=self.k, temperature=1.0)
        rows = []
        for lps, ids in zip(result["logprobs"], result["logprob_token_ids"], strict=True):
            logprobs = np.asarray(lps, dtype=np.float32).reshape(-1, self.k)
            token_ids = np.asarray(ids, dtype=np.int32).reshape(-1, self.k)
            rows.append((np.where(np.isfinite(logprobs), token_ids, -1), logprobs))
        return rows

    def close(self) -> None:
        self.client.session.close()


def _cuda() -> bool:
    from cotdistill.backends.vllm_backend import has_cuda

    return has_cuda()
