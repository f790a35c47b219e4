"""A fake backend that also returns top-K candidates, for the top-k capture tests.

Each word of the fake's answer is one "token" with id crc32(word) % 500; the K candidates are
that id and the K - 1 ids after it, with logprobs -0.1, -0.2, ... (so a test can recompute
every stored row from the trace's text).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from cotdistill.backends import Completion, TopkTokens
from cotdistill.backends.fake import FakeBackend


def word_id(word: str) -> int:
    return zlib.crc32(word.encode()) % 500


def fake_topk(text: str, k: int) -> TopkTokens:
    import numpy as np

    sampled = np.array([word_id(w) for w in text.split()], dtype=np.int32)
    ids = (sampled[:, None] + np.arange(k, dtype=np.int32)[None, :]) % 512
    logprobs = np.tile(-0.1 * np.arange(1, k + 1, dtype=np.float32), (len(sampled), 1))
    return TopkTokens(ids=ids.astype(np.int32), logprobs=logprobs.astype(np.float16),
                      sampled=sampled, sampled_lp=np.full(len(sampled), -0.1, np.float16))


class TopkFakeBackend(FakeBackend):
    def generate(self, conversations: Sequence[Any], sampling: Any,
                 progress: Any = None) -> list[list[Completion]]:
        results = super().generate(conversations, sampling, progress)
        for completions in results:
            for c in completions:
                c.topk = fake_topk(c.text, sampling.topk_logprobs)
        return results
