"""On-policy distillation with the student's rollouts on vLLM (`train --kd on-policy-vllm`).

TRL 1.16's own `DistillationTrainer(use_vllm=True, vllm_mode="colocate")` runs the loop: the
student's vLLM engine lives in the training process (vLLM's `external_launcher`), samples
completions for each generation batch's prompts, and the student trains on them. Changed here:

- the teacher: no teacher model in the trainer; its top-K log-probabilities on the sampled
  tokens come from a vLLM engine of its own or a vLLM server (`teacher_topk.py`);
- the loss: `topk_divergence.py` (forward = the offline top-K loss; reverse / JSD over the
  teacher's support), T^2-scaled, optionally mixed with CE on the --data traces
  (`kd_sft_mix`);
- the weight sync on CPU: TRL pushes each parameter through the vLLM model's
  `load_weights`, which vLLM's CPU build cannot take (its linear layers hand their weights to
  packed oneDNN / sgl kernels and keep an empty parameter without a `weight_loader`:
  "AttributeError: 'Parameter' object has no attribute 'weight_loader'"). On CPU the same
  (name, tensor) pairs go through vLLM's `reload_weights(weights_iterator=...)` instead, which
  restores each layer, loads and repacks it (in process: nothing is pickled); then the prefix
  cache is emptied. On GPU TRL's own sync runs unchanged. Either way every `kd_rollout_every`
  optimizer steps.

    trainer = build_on_policy_vllm_trainer(config, prepared, common)   # from trainer.py
    trainer.train()
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

from cotdistill.errors import InputError
from cotdistill.train.config import TrainConfig
from cotdistill.train.kd import KDSettings, rows_of
from cotdistill.train.topk_divergence import topk_divergence_loss

# The colocated student engine's KV cache on CPU, in GiB (vLLM's VLLM_CPU_KVCACHE_SPACE, whole
# GiB): TRL sizes it by a fraction of "node memory", which differs between machines here.
ROLLOUT_KV_GIB = 1
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def check_on_policy_vllm(config: TrainConfig) -> None:
    """Refuse what the vLLM on-policy loop cannot do, before any model or engine loads."""
    if config.kd != "on-policy-vllm":
        used = [k for k in ("kd_sft_mix", "kd_teacher_server") if getattr(config, k)]
        used += ["kd_rollout_every"] if config.kd_rollout_every != 1 else []
        if used:
            raise InputError(f"--{used[0].replace('_', '-')} needs --kd on-policy-vllm",
                             field=used[0])
        return
    if config.teacher is None:
        raise InputError("--kd on-policy-vllm needs --teacher (the tokenizer check reads it; "
                         "the teacher engine serves it unless --kd-teacher-server is given)",
                         field="teacher")
    if config.teachers:
        raise InputError("--kd on-policy-vllm scores with one teacher; teachers mixes online "
                         "teachers", field="teachers")
    if config.packing or config.padding_free:
        name = "packing" if config.packing else "padding_free"
        raise InputError(f"--kd on-policy-vllm trains on freshly sampled completions; --{name} "
                         "does not apply", field=name)
    if config.eval_fraction > 0:
        raise InputError("--kd on-policy-vllm has no eval loss yet (its engines close when "
                         "training ends); use --eval-fraction 0", field="eval_fraction")


def on_policy_vllm_args(sft_args: Any, config: TrainConfig) -> Any:
    """TRL's DistillationConfig with every setting of this run's SFTConfig that it shares, the
    student's vLLM engine colocated, and the sampling settings of `kd_*`."""
    import dataclasses

    from trl import DistillationConfig

    shared = {f.name for f in dataclasses.fields(DistillationConfig) if f.init}
    values = {f.name: getattr(sft_args, f.name) for f in dataclasses.fields(sft_args)
              if f.init and f.name in shared and hasattr(sft_args, f.name)}
    values.update(
        use_vllm=True, vllm_mode="colocate", max_completion_length=config.kd_max_new_tokens,
        temperature=config.kd_sample_temperature, remove_unused_columns=False,
        trust_remote_code=config.trust_remote_code,
    )
    return DistillationConfig(**values)


@contextlib.contextmanager
def _rollout_kv_env(cuda: bool) -> Iterator[None]:
    """VLLM_CPU_KVCACHE_SPACE set while TRL starts the colocated engine (on CPU, if unset)."""
    if cuda or os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        yield
        return
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(ROLLOUT_KV_GIB)
    try:
        yield
    finally:
        os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)


def sync_due(step: int, last: int | None, every: int) -> bool:
    """Whether the rollout engine gets the student's weights at optimizer step `step`, last
    given them at `last` (None: never)."""
    return last is None or step - last >= every


def reload_sync(generation: Any) -> None:
    """Push the student's weights into the colocated engine through vLLM's `reload_weights`
    (in process: the tensors are read, not pickled), then empty its prefix cache."""
    weights = generation._iter_named_params()  # TRL's (name as vLLM expects, tensor) walk
    generation.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    if not generation.llm.reset_prefix_cache():
        raise RuntimeError("vLLM could not empty its prefix cache after a weight reload")


def on_policy_vllm_trainer_class() -> type:
    """TRL's `DistillationTrainer` with the teacher, loss and CPU weight sync above.

    Construct with DistillationTrainer's arguments (no teacher_model; a dataset of `prompt`
    conversations) plus `settings` (KDSettings), `teacher` (a `teacher_topk` source),
    `rollout_every`, and for the SFT mix `sft_mix` with `sft_dataset` (input_ids and
    completion_mask rows).
    """
    import torch
    from transformers import TrainerCallback
    from trl import DistillationTrainer

    from cotdistill.backends.vllm_backend import has_cuda

    class CloseEngines(TrainerCallback):
        def __init__(self, owner: Any) -> None:
            self.owner = owner

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.owner.close_engines()

    class OnPolicyVLLMTrainer(DistillationTrainer):
        def __init__(self, *args: Any, settings: KDSettings, teacher: Any, rollout_every: int = 1,
                     sft_mix: float = 0.0, sft_dataset: Any = None, **kwargs: Any) -> None:
            self.teacher = teacher
            cuda = has_cuda()
            # TRL's colocated engine sets these for vLLM's external launcher; put back on close.
            self._environ = {k: os.environ.get(k) for k in LAUNCHER_ENV}
            with _rollout_kv_env(cuda):
                super().__init__(*args, teacher_model=None, **kwargs)
            self.settings = settings
            self.rollout_every = rollout_every
            self.sft_mix = sft_mix
            self.timings = {"sync_s": 0.0, "rollout_s": 0.0, "teacher_s": 0.0}
            self._synced_at: int | None = None
            self.sft_batches = trace_batches(
                sft_dataset, self.args.per_device_train_batch_size,
                self.processing_class.pad_token_id, self.args.seed) if sft_mix > 0 else None
            generation = self.vllm_generation
            self._push = generation.sync_weights if cuda else (lambda: reload_sync(generation))
            generation.sync_weights = self.sync_rollout_weights
            self._sample = generation.generate
            generation.generate = self._timed_generate
            self.add_callback(CloseEngines(self))

        # ------------------------------------------------------------ rollouts

        def sync_rollout_weights(self, force: bool = False) -> None:
            """The student's weights into the rollout engine, every `rollout_every` steps."""
            step = self.state.global_step
            if not force and not sync_due(step, self._synced_at, self.rollout_every):
                return
            started = time.perf_counter()
            self._push()
            self._synced_at = step
            self.timings["sync_s"] += time.perf_counter() - started

        def _timed_generate(self, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return self._sample(*args, **kwargs)
            finally:
                self.timings["rollout_s"] += time.perf_counter() - started

        def rollout_engine(self) -> Any:
            """The colocated student engine (`vllm.LLM`)."""
            return self.vllm_generation.llm

        # ------------------------------------------------------------ teacher and loss

        def teacher_rows(self, inputs: dict[str, Any]) -> tuple[Any, Any, Any]:
            """(ids, logprobs, valid) for every completion token of the batch, batch-major,
            from the teacher source; the order `masked_rows` gives the student's rows."""
            prompts, lengths, completions = [], [], []
            for p_ids, p_mask, c_ids, c_mask in zip(inputs["prompt_ids"], inputs["prompt_mask"],
                                                    inputs["completion_ids"],
                                                    inputs["completion_mask"], strict=True):
                prompt = p_ids[p_mask.bool()].tolist()
                completion = c_ids[c_mask.bool()].tolist()
                prompts.append(prompt + completion)
                lengths.append(len(prompt))
                completions.append(len(completion))
            started = time.perf_counter()
            rows = self.teacher.topk(prompts, lengths)
            self.timings["teacher_s"] += time.perf_counter() - started
            for (ids, _), count in zip(rows, completions, strict=True):
                if ids.shape[0] != count:
                    raise RuntimeError(f"the teacher returned {ids.shape[0]} rows for a "
                                       f"completion of {count} tokens")
            k = self.teacher.k
            ids = torch.from_numpy(_stack([r[0] for r in rows], k, -1))
            logprobs = torch.from_numpy(_stack([r[1] for r in rows], k, float("-inf")))
            return ids, logprobs, (ids >= 0).any(-1)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            mode = "train" if self.model.training else "eval"
            s = self.settings
            if self.model.training and inputs.get("num_items_in_batch") is not None:
                # TRL's count of the generation batch's sampled tokens, per process.
                num_items_in_batch = (inputs["num_items_in_batch"].clamp(min=1.0)
                                      / self.accelerator.num_processes)
            input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
            attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            trained = torch.cat([torch.zeros_like(inputs["prompt_mask"]),
                                 inputs["completion_mask"]], dim=1)
            labels = input_ids.masked_fill(trained == 0, -100)
            # Left-padded prompts: positions count real tokens, as the teacher engine sees them.
            positions = (attention.cumsum(-1) - 1).clamp(min=0)
            model_inputs = {"input_ids": input_ids, "attention_mask": attention,
                            "position_ids": positions, "use_cache": False}
            outputs, rows, targets, head = rows_of(model, model_inputs, labels, True)
            ids, logprobs, valid = self.teacher_rows(inputs)
            device = rows.device
            loss, parts = topk_divergence_loss(
                rows, targets, ids.to(device), logprobs.to(device), valid.to(device),
                divergence=s.divergence, beta=s.beta, temperature=s.temperature, tail=s.tail,
                vocab_size=s.vocab_size, student_head=head, chunk_size=s.chunk_size,
                num_items=num_items_in_batch)
            self._metrics[mode]["distill_kl"].append(parts["distill_kl"])
            if self.sft_batches is not None and mode == "train":
                batch = {k: v.to(device) for k, v in next(self.sft_batches).items()}
                ce = model(**batch, use_cache=False).loss
                # A per-micro-batch mean; the KD sum is already divided over the accumulation.
                steps = getattr(self, "current_gradient_accumulation_steps",
                                self.args.gradient_accumulation_steps)
                loss = (1 - self.sft_mix) * loss + self.sft_mix * ce / steps
                self._metrics[mode]["distill_ce"].append(ce.item())
            for key, value in self.timings.items():
                self._metrics[mode][f"time_{key}"] = [value]
            return (loss, outputs) if return_outputs else loss

        # ------------------------------------------------------------ cleanup

        def close_engines(self) -> None:
            """Release the teacher and the colocated student engine (idempotent)."""
            import gc

            if self.teacher is not None:
                self.teacher.close()
                self.teacher = None
            generation = getattr(self, "vllm_generation", None)
            if generation is not None and getattr(generation, "llm", None) is not None:
                del generation.llm
                generation.llm = None
                with contextlib.suppress(Exception):
                    from vllm.distributed.parallel_state import (
                        destroy_distributed_environment,
                        destroy_model_parallel,
                    )

                    destroy_model_parallel()
                    destroy_distributed_environment()
                for key, value in self._environ.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
            gc.collect()

    return OnPolicyVLLMTrainer


def _stack(arrays: list[Any], k: int, fill: float) -> Any:
    import numpy as np

    return np.concatenate(arrays) if arrays else np.full((0, k), fill)


def trace_batches(dataset: Any, batch_size: int, pad_id: int, seed: int) -> Iterator[dict]:
    """Endless padded batches (input_ids, attention_mask, labels on the completion) of the
    traces, reshuffled each pass."""
    import random

    import torch

    rows = [(list(r["input_ids"]), list(r["completion_mask"])) for r in dataset]
    if not rows:
        raise InputError("--kd-sft-mix needs traces in --data", field="kd_sft_mix")
    order = random.Random(seed)
    while True:
        order.shuffle(rows)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad_id)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            labels = torch.full((len(chunk), width), -100)
            for i, (tokens, completion) in enumerate(chunk):
                ids[i, :len(tokens)] = torch.tensor(tokens)
                mask[i, :len(tokens)] = 1
                keep = torch.tensor(completion, dtype=torch.bool)
                labels[i, :len(tokens)] = torch.tensor(tokens).masked_fill(~keep, -100)
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_on_policy_vllm_trainer(config: TrainConfig, prepared: Any, common: dict[str, Any]
                                 ) -> Any:
    """The trainer for `--kd on-policy-vllm`, from trainer.py's common SFTTrainer arguments.

    The teacher engine starts first: TRL's colocated engine sets RANK / WORLD_SIZE /
    MASTER_PORT in this process's environment, which a later engine's worker would inherit.
    """
    import copy

    from datasets import Dataset

    from cotdistill.train.teacher_topk import TeacherEngine, TeacherServer

    settings = KDSettings(
        temperature=config.distill_temperature, alpha=1.0, divergence=config.kd_loss,
        beta=config.kd_beta, vocab_size=len(prepared.tokenizer),
        chunk_size=config.kd_chunk_size, tail=config.topk_tail)
    prompts = prepared.on_policy["train"]
    if config.kd_teacher_server:
        teacher: Any = TeacherServer(config.kd_teacher_server, k=config.kd_topk)
    else:
        # Two characters a token over-counts English and is right for digits (sizing.py).
        longest = max((sum(len(m["content"]) for m in p["prompt"]) // 2 + 64 for p in prompts),
                      default=512)
        teacher = TeacherEngine(
            prepared.teacher_path, k=config.kd_topk,
            sequences=config.batch_size * config.gradient_accumulation_steps,
            max_tokens=config.kd_max_new_tokens, prompt_tokens=longest, seed=config.seed,
            trust_remote_code=config.trust_remote_code)
    tokenizer = copy.deepcopy(prepared.tokenizer)
    tokenizer.padding_side = "left"  # TRL's prompts are left-padded
    try:
        return on_policy_vllm_trainer_class()(
            model=common["model"], args=on_policy_vllm_args(common["args"], config),
            train_dataset=Dataset.from_list(prompts), processing_class=tokenizer,
            callbacks=common["callbacks"], peft_config=common["peft_config"],
            settings=settings, teacher=teacher, rollout_every=config.kd_rollout_every,
            sft_mix=config.kd_sft_mix, sft_dataset=common["train_dataset"])
    except BaseException:
        teacher.close()
        raise
