"""Logit distillation in training: the SFTTrainer whose loss comes from `cotdistill.losses`.

Three teachers feed the same chunked loss (formulas in `cotdistill/losses/`):

- online: a teacher model runs forward on each batch (`train --teacher T [--kd-loss jsd]`);
- offline-topk: the teacher's top-K log-probabilities stored at generation time
  (`generate --topk-logprobs K`, then `train --kd offline-topk --topk-from GEN_DIR`);
  no teacher weights are loaded;
- none: plain SFT (TRL's own trainer, not this class).

Memory: the student runs with `logits_to_keep=1` and its last hidden states are taken
instead; only the rows of assistant tokens go on, and the output head is applied a chunk of
rows at a time inside the loss (`losses/chunked.py`). The teacher does the same under
no_grad. So neither model ever holds (batch, length, vocab) logits. A model whose logits are
not `lm_head(last hidden state)` (final soft-capping, logit scaling) is detected on the first
batch and falls back to full logits, still with the chunked loss.

    loss, parts = distillation_loss(student_logits, teacher_logits, labels, temperature=2.0,
                                    alpha=0.5)
    trainer = distillation_trainer_class()(**sft_trainer_kwargs, teacher_model=teacher,
                                           settings=KDSettings(...))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cotdistill.losses import IGNORE_INDEX, kd_loss, masked_rows, topk_kd_loss
from cotdistill.losses.features import batch_share

if TYPE_CHECKING:
    import torch



__all__ = ["IGNORE_INDEX", "KDSettings", "distillation_loss", "distillation_trainer_class"]


@dataclass
class KDSettings:
    """The loss settings of one run (TrainConfig's kd_* fields, resolved)."""

    temperature: float
    alpha: float
    divergence: str = "forward"
    beta: float = 0.5
    vocab_size: int | None = None  # the tokenizer's length: logits past it are ignored
    chunk_size: int | None = 256
    tail: str = "ignore"


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    num_items: int | torch.Tensor | None = None,
    divergence: str = "forward",
    beta: float = 0.5,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`losses.kd_loss` from full logits (B, L, V) and unshifted labels (B, L).

    Position i's logits predict token i + 1. `num_items` is the number of label tokens in the
    whole (gradient-accumulated) batch, so sums over micro-batches add up to a mean over the
    batch; by default the mean is over this micro-batch. Logits of different widths (padded
    embedding matrices) need `vocab_size`, the shared tokenizer's length.
    """
    if vocab_size is None and student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: pass vocab_size (the tokenizer's length)"
        )
    student, targets = masked_rows(student_logits, labels)
    teacher, _ = masked_rows(teacher_logits, labels)
    return kd_loss(student, targets, teacher, divergence=divergence, beta=beta,
                   temperature=temperature, alpha=alpha, vocab_size=vocab_size,
                   chunk_size=chunk_size, num_items=num_items)


def rows_of(model: Any, inputs: dict[str, Any], labels: torch.Tensor, use_hidden: bool
          ) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
    """(outputs, rows, targets, head): hidden rows + output head, or logit rows + None."""
    if not use_hidden:
        outputs = model(**inputs)
        rows, targets = masked_rows(outputs.logits, labels)
        return outputs, rows, targets, None
    # Merged, not passed twice: the feature terms may have asked for hidden states already.
    outputs = model(**{**inputs, "output_hidden_states": True, "logits_to_keep": 1})
    rows, targets = masked_rows(outputs.hidden_states[-1], labels)
    return outputs, rows, targets, _output_head(model)


def _output_head(model: Any) -> Any:
    inner = getattr(model, "module", model)  # DDP wraps the model; its head is the module's
    return inner.get_output_embeddings()


def _head_matches_logits(model: Any, outputs: Any) -> bool:
    """Whether the last position's logits equal head(last hidden state) (no soft-capping)."""
    import torch

    with torch.no_grad():
        head = _output_head(model)
        last = outputs.hidden_states[-1][:, -1:]
        return bool(torch.allclose(head(last).float(), outputs.logits[:, -1:].float(),
                                   rtol=1e-3, atol=1e-3))


@dataclass
class KLWindow:
    """The offline top-k KL of one logging window, as sums, so the logged figure is the mean
    over the label tokens that had teacher data (not an average of per-batch means, where a
    batch without any would count as KL 0) and beside it the share of tokens that had it."""

    kl_sum: float = 0.0
    with_teacher: int = 0
    tokens: int = 0

    def add(self, mean_kl: float, with_teacher: int, tokens: int) -> None:
        self.kl_sum += mean_kl * with_teacher
        self.with_teacher += with_teacher
        self.tokens += tokens

    def flush(self) -> dict[str, float]:
        """The window's metrics (no "distill_kl" when no token had teacher data); resets."""
        metrics: dict[str, float] = {}
        if self.with_teacher:
            metrics["distill_kl"] = self.kl_sum / self.with_teacher
        if self.tokens:
            metrics["distill_kl_share"] = self.with_teacher / self.tokens
        self.kl_sum, self.with_teacher, self.tokens = 0.0, 0, 0
        return metrics


def distillation_trainer_class() -> type:
    """`SFTTrainer` whose loss is `cotdistill.losses` against an online or offline teacher.

    Only the loss changes: data preparation, masking, LoRA, checkpoints and logging stay
    TRL's. Construct with the usual SFTTrainer arguments plus `settings` (KDSettings) and
    either `teacher_model` (online) or `topk` (an object with `batch(rows) -> (ids, logprobs,
    valid)`, see cotdistill/topk.py; the datasets then carry a `kd_row` column).
    `features` (losses.features.FeatureDistiller, online teacher only) adds the hidden-state,
    attention and relation terms to the loss.
    """
    import torch
    from trl import SFTTrainer

    class DistillationSFTTrainer(SFTTrainer):
        def __init__(self, *args: Any, settings: KDSettings, teacher_model: Any = None,
                     topk: Any = None, features: Any = None, **kwargs: Any) -> None:
            if (teacher_model is None) == (topk is None):
                raise ValueError("give exactly one of teacher_model and topk")
            super().__init__(*args, **kwargs)
            self.settings = settings
            self.topk = topk
            self.teacher_model = None
            if teacher_model is not None:
                self.teacher_model = teacher_model.to(self.accelerator.device).eval()
                self.teacher_model.requires_grad_(False)
            # FSDP shards the output head: it can only run inside the model's own forward.
            self.use_hidden = not self.is_fsdp_enabled
            self._checked_head = False
            if topk is not None:
                self.data_collator = _with_kd_rows(self.data_collator)
            self._kl_windows = {"train": KLWindow(), "eval": KLWindow()}
            # Hidden / attention / relation terms (losses/features.py). Their projections
            # train with the student (create_optimizer) but are not part of it: never saved.
            self.features = features
            if features is not None:
                if self.teacher_model is None:
                    raise ValueError("hidden/attention/relation terms need an online teacher")
                features.to(self.accelerator.device)

        def create_optimizer(self, model: Any = None) -> Any:
            optimizer = super().create_optimizer(model)
            extra = list(self.features.parameters()) if self.features is not None else []
            if extra and not any(p is extra[0] for g in optimizer.param_groups
                                 for p in g["params"]):
                optimizer.add_param_group({"params": extra, "weight_decay": 0.0})
            return optimizer

        def _set_signature_columns_if_needed(self) -> None:
            super()._set_signature_columns_if_needed()
            if self.topk is not None and "kd_row" not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, "kd_row"]

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            mode = "train" if self.model.training else "eval"
            s = self.settings
            labels = inputs["labels"]
            model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "kd_row")}
            model_inputs["use_cache"] = False
            if self.features is not None:
                model_inputs.update(self.features.model_kwargs())
            outputs, rows, targets, head = rows_of(model, model_inputs, labels, self.use_hidden)
            if self.use_hidden and not self._checked_head:
                self._checked_head = True
                if not _head_matches_logits(model, outputs):
                    print("train: this model's logits are not lm_head(hidden state); "
                          "distilling from full logits instead")
                    self.use_hidden = False
                    outputs, rows, targets, head = rows_of(model, model_inputs, labels, False)
            if self.teacher_model is not None:
                with torch.no_grad():
                    t_out, t_rows, _, t_head = rows_of(self.teacher_model, model_inputs, labels,
                                                     self.use_hidden)
                loss, parts = kd_loss(
                    rows, targets, t_rows, divergence=s.divergence, beta=s.beta,
                    temperature=s.temperature, alpha=s.alpha, vocab_size=s.vocab_size,
                    student_head=head, teacher_head=t_head, chunk_size=s.chunk_size,
                    num_items=num_items_in_batch,
                )
                if self.features is not None:
                    extra, extra_parts = self.features(outputs, t_out, labels,
                                                       inputs.get("position_ids"))
                    loss = loss + extra * batch_share(targets.shape[0], num_items_in_batch)
                    parts.update(extra_parts)
            else:
                ids, logprobs, valid = self.topk.batch(inputs["kd_row"].tolist())
                if ids.shape[0] != rows.shape[0]:
                    raise RuntimeError(f"top-k rows ({ids.shape[0]}) do not match the batch's "
                                       f"label tokens ({rows.shape[0]})")
                device = rows.device
                loss, parts = topk_kd_loss(
                    rows, targets, ids.to(device), logprobs.to(device), valid.to(device),
                    temperature=s.temperature, alpha=s.alpha, tail=s.tail,  # type: ignore[arg-type]
                    vocab_size=s.vocab_size, student_head=head, chunk_size=s.chunk_size,
                    num_items=num_items_in_batch,
                )
                # Logged per window by `log`, weighted by the tokens that had teacher data.
                self._kl_windows[mode].add(parts.pop("distill_kl"), int(valid.sum()),
                                           int(valid.numel()))
                parts.pop("distill_kl_share")
            # Same scaling as SFTTrainer: num_items_in_batch counts every rank's tokens and DDP
            # averages gradients over ranks.
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            for key, value in parts.items():
                self._metrics[mode][key].append(value)
            if mode == "train":
                # Keep SFTTrainer's running token count, which the tokens/s log reads.
                if "attention_mask" in inputs:
                    seen = inputs["attention_mask"].sum()
                else:
                    seen = torch.tensor(inputs["input_ids"].numel(), device=loss.device)
                self._total_train_tokens += int(self.accelerator.gather_for_metrics(seen).sum())
                self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return (loss, outputs) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            mode = "train" if self.model.training else "eval"
            # SFTTrainer.log averages each metric's list: one value each keeps these exact.
            for key, value in self._kl_windows[mode].flush().items():
                self._metrics[mode][key] = [value]
            super().log(logs, start_time)

    return DistillationSFTTrainer


def _with_kd_rows(collate: Any) -> Any:
    """TRL's collator plus a `kd_row` tensor: which example (top-k table row) each one is."""
    import torch

    def collate_with_rows(examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = collate(examples)
        batch["kd_row"] = torch.tensor([int(e["kd_row"]) for e in examples])
        return batch

    return collate_with_rows
