"""Multi-teacher soft targets: several teachers' token distributions mixed per token.

With teachers k, weights w_k (normalised to sum 1) and temperature T, the target at each
assistant token is the mixture

    p_mix(v) = sum_k w_k softmax(z_k / T)(v)

and the KD term is the configured divergence D(p_mix, p_s) (forward KL by default), so the
student is pulled toward every teacher in proportion to its weight, token by token. The
teachers must share the student's tokenizer (checked before loading); their widths, depths and
padded output sizes may differ (logits are cut to the tokenizer's length).

`TeacherMixture` looks like one teacher to the distillation trainer: its output head returns
"logits" z_mix = T * log p_mix, so the loss's own log_softmax(z_mix / T) recovers log p_mix
exactly (p_mix already sums to 1). Its hidden rows are the teachers' last hidden states side by
side; only the head reads them (hidden/attention/relation terms need a single teacher).

    teacher = TeacherMixture([model_a, model_b], [2.0, 1.0], temperature=2.0, vocab_size=512)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def mix_logits(logits: Sequence[torch.Tensor], log_weights: torch.Tensor, temperature: float,
               vocab_size: int | None) -> torch.Tensor:
    """T * log(sum_k w_k softmax(z_k / T)) over the last dimension (fp32)."""
    import torch

    logp = [torch.log_softmax(z[..., :vocab_size].float() / temperature, dim=-1)
            for z in logits]
    stacked = torch.stack(logp) + log_weights.view(-1, *([1] * logp[0].dim()))
    return temperature * torch.logsumexp(stacked, dim=0)


def teacher_mixture_class() -> type:
    import torch

    class TeacherMixture(torch.nn.Module):
        """Several teachers behind one teacher's interface (see the module docstring)."""

        def __init__(self, teachers: Sequence[Any], weights: Sequence[float], *,
                     temperature: float, vocab_size: int | None) -> None:
            super().__init__()
            if len(teachers) != len(weights) or not teachers:
                raise ValueError("give one weight per teacher")
            total = float(sum(weights))
            if not total > 0:
                raise ValueError("the teacher weights sum to 0")
            self.teachers = torch.nn.ModuleList(teachers)
            self.register_buffer("log_weights", torch.tensor(
                [math.log(w / total) if w > 0 else float("-inf") for w in weights]))
            self.temperature = temperature
            self.vocab_size = vocab_size
            self.widths = [t.get_output_embeddings().in_features for t in teachers]
            self.config = teachers[0].config  # for code that reads a teacher's config

        def mix(self, logits: Sequence[torch.Tensor]) -> torch.Tensor:
            return mix_logits(logits, self.log_weights, self.temperature, self.vocab_size)

        def head(self, rows: torch.Tensor) -> torch.Tensor:
            logits = []
            for t, part in zip(self.teachers, torch.split(rows, self.widths, dim=-1),
                               strict=True):
                head = t.get_output_embeddings()
                logits.append(head(part.to(head.weight.dtype)))
            return self.mix(logits)

        def get_output_embeddings(self) -> Any:
            return self.head

        def forward(self, **kwargs: Any) -> Any:
            outs = [t(**kwargs) for t in self.teachers]
            hidden = None
            if kwargs.get("output_hidden_states"):
                hidden = (torch.cat([o.hidden_states[-1] for o in outs], dim=-1),)
            return SimpleNamespace(logits=self.mix([o.logits for o in outs]),
                                   hidden_states=hidden)

    return TeacherMixture
