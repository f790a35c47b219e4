"""The intermediate-representation terms of the training loss, combined for the trainer.

    total = KD/CE loss (chunked.py) + hidden_weight * L_hint (hidden.py)
            + attention_weight * L_att (attention.py) + relation_weight * L_rel (relation.py)

A weight of 0 leaves its term out entirely (the teacher is then not asked for those outputs).
The distillation trainer (cotdistill/distill.py) calls this object once per micro-batch with
both models' outputs; it returns the weighted sum and every term for train_log.jsonl
(`hidden_mse` or `hidden_cosine`, `attention_kl`, `relation_loss`, `relation_distance`,
`relation_angle`; unweighted values). Hidden projections (widths differ) live here, not in
the student: the trainer adds `parameters()` to its optimizer and never saves them.

    features = FeatureDistiller.build(settings, student.config, teacher.config)
    model_kwargs = features.model_kwargs()          # output_hidden_states / output_attentions
    loss, parts = features(out_s, out_t, labels, position_ids)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cotdistill.losses.attention import attention_loss
from cotdistill.losses.hidden import HiddenLoss, Pairs, hidden_loss, layer_pairs, projections
from cotdistill.losses.relation import relation_loss, sequence_means

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


@dataclass
class FeatureSettings:
    """TrainConfig's hidden_* / attention_* / relation_* fields."""

    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    relation_weight: float = 0.0
    hidden_layer_map: str = "uniform"
    hidden_loss: HiddenLoss = "mse"

    @property
    def active(self) -> bool:
        return any(w > 0 for w in (self.hidden_weight, self.attention_weight,
                                   self.relation_weight))


def text_config(config: Any) -> Any:
    """The language model's config (multimodal configs nest it)."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def check_layer_map(settings: FeatureSettings, student_config: Any, teacher_config: Any
                    ) -> Pairs:
    """The layer pairs for these two models; ValueError on a map they cannot take."""
    s, t = text_config(student_config), text_config(teacher_config)
    pairs = layer_pairs(settings.hidden_layer_map, s.num_hidden_layers, t.num_hidden_layers)
    if settings.attention_weight > 0 and any(i < 1 or j < 1 for i, j in pairs):
        raise ValueError("layer 0 (the embeddings) has no attention to distil; "
                         "leave it out of the map or set attention_weight 0")
    return pairs


@dataclass
class FeatureDistiller:
    settings: FeatureSettings
    pairs: Pairs
    projection: Any = None  # torch.nn.ModuleList | None (hidden widths differ)
    _warned: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, settings: FeatureSettings, student_config: Any, teacher_config: Any
              ) -> FeatureDistiller:
        pairs = check_layer_map(settings, student_config, teacher_config)
        proj = None
        if settings.hidden_weight > 0:
            proj = projections(pairs, text_config(student_config).hidden_size,
                               text_config(teacher_config).hidden_size)
        return cls(settings, pairs, proj)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        """Trainable parameters outside the student (the hidden projections)."""
        if self.projection is not None:
            yield from self.projection.parameters()

    def to(self, device: Any) -> FeatureDistiller:
        if self.projection is not None:
            self.projection.to(device)
        return self

    def model_kwargs(self) -> dict[str, bool]:
        """What both forward passes must return for the active terms (and nothing more)."""
        s = self.settings
        kwargs = {}
        if s.hidden_weight > 0 or s.relation_weight > 0:
            kwargs["output_hidden_states"] = True
        if s.attention_weight > 0:
            kwargs["output_attentions"] = True
        return kwargs

    def __call__(self, student: Any, teacher: Any, labels: torch.Tensor,
                 position_ids: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
        """(weighted sum of the active terms, unweighted terms) for one micro-batch."""
        s = self.settings
        mask = labels != IGNORE_INDEX
        total: Any = 0.0
        parts: dict[str, float] = {}
        if s.hidden_weight > 0:
            term = hidden_loss(student.hidden_states, teacher.hidden_states, mask, self.pairs,
                               self.projection, s.hidden_loss)
            total = total + s.hidden_weight * term
            parts[f"hidden_{s.hidden_loss}"] = float(term.detach())
        if s.attention_weight > 0:
            term = attention_loss(student.attentions, teacher.attentions, mask, self.pairs)
            total = total + s.attention_weight * term
            parts["attention_kl"] = float(term.detach())
        if s.relation_weight > 0:
            reps_s = sequence_means(student.hidden_states[-1], mask, position_ids)
            reps_t = sequence_means(teacher.hidden_states[-1], mask, position_ids)
            if reps_s.shape[0] < 3 and "relation" not in self._warned:
                self._warned.add("relation")
                print(f"train: only {reps_s.shape[0]} sequence(s) in a micro-batch: the "
                      "relation loss needs 2 (distance) and 3 (angle) to compare")
            term, rel_parts = relation_loss(reps_s, reps_t)
            total = total + s.relation_weight * term
            parts["relation_loss"] = float(term.detach())
            parts.update(rel_parts)
        return total, parts


def batch_share(tokens: int, num_items: Any) -> float:
    """This micro-batch's share of the step's label tokens.

    The KD/CE sum is divided by the whole (gradient-accumulated) batch's token count, so the
    Trainer adds micro-batches without averaging; the feature terms are per-micro-batch means
    and get this factor, which makes their sum over micro-batches a token-weighted mean
    (exactly 1 without accumulation).
    """
    if num_items is None:
        return 1.0
    total = float(num_items)
    return tokens / total if total > 0 else 1.0
