"""A deterministic in-process backend for unit tests only; never used by the product path.

By default it answers "a + b = c" for the numbers in the question with a boxed sum and a fixed
logprob per word; tests pass their own `responder(question, sample_index) -> str`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from cotdistill.backends import Completion, Progress
from cotdistill.config import EngineConfig, SamplingConfig
from cotdistill.records import Message

Responder = Callable[[str, int], str]


def add_numbers(question: str, sample_index: int) -> str:
    numbers = [int(x) for x in re.findall(r"\d+", question)]
    total = sum(numbers)
    steps = " + ".join(str(x) for x in numbers) or "0"
    return f"We add the numbers: {steps} = {total}.\nThe answer is \\boxed{{{total}}}."


class FakeBackend:
    name = "fake"

    def __init__(
        self,
        model: str = "fake",
        engine: EngineConfig | None = None,
        responder: Responder = add_numbers,
        logprob: float = -0.1,
    ) -> None:
        self.model = model
        self.responder = responder
        self.logprob = logprob
        self.calls = 0

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingConfig,
        progress: Progress | None = None,
    ) -> list[list[Completion]]:
        self.calls += 1
        results = []
        for messages in conversations:
            question = messages[-1].content
            samples = []
            for index in range(sampling.n):
                text = self.responder(question, index)
                tokens = text.split()[: sampling.max_tokens]
                truncated = len(text.split()) > sampling.max_tokens
                samples.append(
                    Completion(
                        text=" ".join(tokens) if truncated else text,
                        finish_reason="length" if truncated else "stop",
                        num_tokens=len(tokens),
                        token_logprobs=[self.logprob] * len(tokens),
                    )
                )
            results.append(samples)
            if progress is not None:
                progress(len(samples))
        return results

    def close(self) -> None:
        pass
