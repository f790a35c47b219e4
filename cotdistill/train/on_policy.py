"""On-policy distillation: the student samples, the teacher scores (TRL's GKD)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cotdistill.losses import kd_loss

if TYPE_CHECKING:
    pass
from cotdistill.train.kd import KDSettings, rows_of

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
            outputs, rows, targets, head = rows_of(model, model_inputs, labels, self.use_hidden)
            self.teacher_model.eval()
            with torch.no_grad():
                _, t_rows, _, t_head = rows_of(self.teacher_model, model_inputs, labels,
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
