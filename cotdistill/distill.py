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


def _rows(model: Any, inputs: dict[str, Any], labels: torch.Tensor, use_hidden: bool
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
            outputs, rows, targets, head = _rows(model, model_inputs, labels, self.use_hidden)
            if self.use_hidden and not self._checked_head:
                self._checked_head = True
                if not _head_matches_logits(model, outputs):
                    print("train: this model's logits are not lm_head(hidden state); "
                          "distilling from full logits instead")
                    self.use_hidden = False
                    outputs, rows, targets, head = _rows(model, model_inputs, labels, False)
            if self.teacher_model is not None:
                with torch.no_grad():
                    t_out, t_rows, _, t_head = _rows(self.teacher_model, model_inputs, labels,
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


# ---------------------------------------------------------------- offline top-k: data side


@dataclass
class OfflineKD:
    """The teacher's stored top-K rows aligned to the training examples (no weights loaded).

    Dataset row i (train rows first, then eval rows) carries `kd_row = i`, the index of its
    entry in `table`.
    """

    table: Any  # cotdistill.topk.TopkTable
    stats: Any  # cotdistill.topk.AlignStats
    meta: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        s = self.stats
        return {"k": self.meta.get("k"), "teacher": self.meta.get("teacher"),
                "teacher_tokenizer": self.meta.get("tokenizer"),
                "examples": s.examples, "aligned": s.aligned, "token_mismatch": s.mismatched,
                "no_topk_rows": s.missing, "kd_tokens": s.kd_tokens,
                "kd_tokens_lost_to_mismatch": s.lost_tokens}


def prepare_offline(sources: Any, tokenizer: Any, rows: Any, on_mismatch: str = "skip"
                    ) -> OfflineKD:
    """Open the top-k store, refuse another vocabulary, align every example (see topk.align).

    `rows`: the Tokenized train rows then eval rows. An example whose student tokens differ
    from the teacher's sampled ids gets KD up to the first differing token and CE after it;
    one without stored rows gets CE only; both are counted (with `on_mismatch="error"` they
    stop the run, naming a few).
    """
    from cotdistill.errors import InputError
    from cotdistill.topk import TopkStore, build_table, check_vocabulary

    store = TopkStore.open(list(sources))
    check_vocabulary(store.meta, tokenizer, ", ".join(map(str, sources)))
    table, stats = build_table(store, [
        ((r.problem_id, r.sample_index) if r.sample_index is not None else None,
         r.input_ids, r.completion_mask) for r in rows])
    skipped = stats.mismatched + stats.missing
    if skipped:
        detail = (f"{stats.mismatched} whose tokens differ from the teacher's sampled ids "
                  f"(KD up to the first difference; {stats.lost_tokens} teacher rows unused), "
                  f"{stats.missing} without stored top-k rows (e.g. "
                  f"{', '.join(stats.skipped[:3])})")
        if on_mismatch == "error":
            raise InputError(f"offline top-k KD cannot use {skipped} of {stats.examples} "
                             f"examples: {detail}", field="topk_on_mismatch")
        print(f"train: offline top-k KD on {stats.aligned} of {stats.examples} examples "
              f"whole; {detail}")
    return OfflineKD(table, stats, store.meta)


# ---------------------------------------------------------------- on-policy (GKD)


def _gkd(name: str) -> Any:
    """A class from TRL's experimental GKD module, without its "experimental" warning (the
    on-policy mode is documented as built on it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        from trl.experimental import gkd

    return getattr(gkd, name)


def on_policy_args(sft_args: Any, *, max_new_tokens: int, sample_temperature: float,
                   max_length: int) -> Any:
    """TRL's GKDConfig with every setting of this run's SFTConfig, fully on-policy (lmbda 1).

    GKD's own `beta` and temperature are not used for the loss (ours replaces it); its
    `temperature` is the student's sampling temperature.
    """
    import dataclasses

    GKDConfig = _gkd("GKDConfig")

    values = {f.name: getattr(sft_args, f.name) for f in dataclasses.fields(sft_args)
              if f.init and hasattr(sft_args, f.name)}
    values.update(lmbda=1.0, seq_kd=False, max_new_tokens=max_new_tokens,
                  temperature=sample_temperature, max_length=max_length, packing=False,
                  padding_free=False, completion_only_loss=None)
    return GKDConfig(**values)


def on_policy_trainer_class() -> type:
    """TRL's `GKDTrainer` (the student samples its own completions for each batch's prompts,
    then learns from the teacher's distribution on them), with our chunked loss in place of
    GKD's full-logits JSD: `settings.divergence` at temperature T, T^2-scaled, no CE term (the
    tokens are the student's own samples, not targets).

    Reused from TRL: the prompt collator (DataCollatorForChatML), on-policy generation with
    the student, teacher placement and the training loop. Added: the loss (bounded memory,
    forward / reverse / JSD, num_items scaling). Construct with GKDTrainer's arguments
    (`teacher_model`, a dataset of `messages`) plus `settings`.
    """
    import torch

    class OnPolicyKDTrainer(_gkd("GKDTrainer")):
        def __init__(self, *args: Any, settings: KDSettings, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.settings = settings
            self.use_hidden = not self.is_fsdp_enabled
            # A per-micro-batch mean: the Trainer must divide it by the accumulation steps.
            self.loss_is_scaled_for_ga = False

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            mode = "train" if self.model.training else "eval"
            s = self.settings
            labels = inputs["labels"]
            model_inputs = {"input_ids": inputs["input_ids"],
                            "attention_mask": inputs["attention_mask"], "use_cache": False}
            outputs, rows, targets, head = _rows(model, model_inputs, labels, self.use_hidden)
            self.teacher_model.eval()
            with torch.no_grad():
                _, t_rows, _, t_head = _rows(self.teacher_model, model_inputs, labels,
                                             self.use_hidden)
            # num_items_in_batch counts the dataset's completion tokens, not the freshly
            # sampled ones: the mean is over the sampled tokens of this micro-batch instead
            # (each rank its own; DDP averages the ranks).
            loss, parts = kd_loss(
                rows, targets, t_rows, divergence=s.divergence, beta=s.beta,
                temperature=s.temperature, alpha=1.0, vocab_size=s.vocab_size,
                student_head=head, teacher_head=t_head, chunk_size=s.chunk_size,
            )

            self._metrics[mode]["distill_kl"].append(parts["distill_kl"])
            return (loss, outputs) if return_outputs else loss

    return OnPolicyKDTrainer
