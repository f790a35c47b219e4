"""Logit distillation: the student matches the teacher's softened next-token distribution.

Over the assistant tokens only (label != -100), per token:

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(z_s, y)

(Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": the T^2 keeps the soft
term's gradients on the same scale as the hard term's when T changes.) TRL 1.16's
`DistillationTrainer` computes a generalized JSD with no CE term and no T^2 factor, so this
module computes the loss itself inside an `SFTTrainer.compute_loss`.

    loss, parts = distillation_loss(student_logits, teacher_logits, labels, temperature=2.0,
                                    alpha=0.5)
    trainer_cls = distillation_trainer_class()   # SFTTrainer + the loss above
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE_INDEX = -100


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    num_items: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss above, averaged over label tokens; logits (B, L, V), labels (B, L) unshifted.

    Position i's logits predict token i + 1, as in any causal LM. `num_items` is the number of
    label tokens in the whole (gradient-accumulated) batch, so sums over micro-batches add up to
    a mean over the batch; by default the mean is over this micro-batch. Returns the loss and
    its two parts (per-token means of KL and CE) for logging.
    """
    import torch
    import torch.nn.functional as F

    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: the models must share a vocabulary"
        )
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE_INDEX
    student = student_logits[:, :-1][mask].float()
    teacher = teacher_logits[:, :-1][mask].float()
    targets = shift_labels[mask]

    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).sum()
    ce = F.cross_entropy(student, targets, reduction="sum")

    count = mask.sum() if num_items is None else torch.as_tensor(num_items)
    count = count.to(student_logits.device).clamp(min=1)
    loss = (alpha * temperature**2 * kl + (1 - alpha) * ce) / count
    tokens = max(int(mask.sum()), 1)
    parts = {"distill_kl": kl.item() / tokens, "distill_ce": ce.item() / tokens}
    return loss, parts


def distillation_trainer_class() -> type:
    """`SFTTrainer` whose loss is `distillation_loss` against `teacher_model` (built lazily).

    Only the loss changes: data preparation, masking, packing, LoRA, checkpoints and logging
    stay TRL's. Construct with the usual SFTTrainer arguments plus `teacher_model`,
    `temperature` and `alpha`.
    """
    import torch
    from trl import SFTTrainer

    class DistillationSFTTrainer(SFTTrainer):
        def __init__(
            self, *args: Any, teacher_model: Any, temperature: float, alpha: float, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.teacher_model = teacher_model.to(self.accelerator.device).eval()
            self.teacher_model.requires_grad_(False)
            self.temperature = temperature
            self.alpha = alpha

        def compute_loss(
            self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            mode = "train" if self.model.training else "eval"
            labels = inputs["labels"]
            model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            model_inputs["use_cache"] = False
            outputs = model(**model_inputs)
            with torch.no_grad():
                teacher_logits = self.teacher_model(**model_inputs).logits
            loss, parts = distillation_loss(
                outputs.logits, teacher_logits, labels, temperature=self.temperature,
                alpha=self.alpha, num_items=num_items_in_batch,
            )
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

    return DistillationSFTTrainer
