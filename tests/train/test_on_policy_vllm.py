"""`train --kd on-policy-vllm`: the student's rollouts on a colocated vLLM engine (TRL's
DistillationTrainer), the teacher's top-K log-probabilities from a vLLM engine of its own.

The engine tests share one trainer (two engines: the student's colocated one, the teacher's)
and run in file order: the last one trains, which closes both engines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cotdistill.errors import InputError
from cotdistill.train.config import TrainConfig
from tests.helpers.sft import sft_record, write_sft

# ---------------------------------------------------------------- the loss (no engine)


def dense_case(k: int | None = None, seed: int = 0) -> tuple[Any, ...]:
    """Student logits (6, 40) and the teacher's top-k (ids, raw logprobs) of other logits."""
    import torch

    g = torch.Generator().manual_seed(seed)
    student = torch.randn(6, 40, generator=g) * 2
    teacher = torch.log_softmax(torch.randn(6, 40, generator=g) * 2, dim=-1)
    lps, ids = teacher.topk(k or 40, dim=-1)
    return student, teacher, ids, lps


@pytest.mark.parametrize("divergence", ["forward", "reverse", "jsd"])
def test_topk_divergence_is_zero_when_the_student_is_the_teacher(divergence: str) -> None:
    import torch

    from cotdistill.train.topk_divergence import topk_divergence_loss

    _, teacher, ids, lps = dense_case(k=8)
    valid = torch.ones(6, dtype=torch.bool)
    for tail in ("ignore", "bucket"):
        loss, _ = topk_divergence_loss(teacher, torch.zeros(6, dtype=torch.long), ids, lps, valid,
                                       divergence=divergence, temperature=1.0, tail=tail)
        if divergence == "forward" and tail == "ignore":
            # KL(q || p_s) over K ids of an unrenormalised student: -log(mass on K) per token.
            mass = teacher.exp().gather(-1, ids).sum(-1)
            assert loss.item() == pytest.approx((-mass.log()).mean().item(), abs=1e-5)
        else:
            assert loss.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("divergence", ["reverse", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_topk_divergence_with_every_id_equals_the_dense_divergence(divergence: str,
                                                                   temperature: float) -> None:
    """With K = V nothing is coarse-grained: the dense loss (`losses/`), chunked or not."""
    import torch

    from cotdistill.losses import kd_loss
    from cotdistill.train.topk_divergence import topk_divergence_loss

    student, teacher, ids, lps = dense_case()
    targets = torch.zeros(6, dtype=torch.long)
    valid = torch.ones(6, dtype=torch.bool)
    dense, _ = kd_loss(student, targets, teacher, divergence=divergence, beta=0.3,
                       temperature=temperature, alpha=1.0, chunk_size=None)
    for chunk in (None, 4):
        rows = student.clone().requires_grad_(True)
        got, parts = topk_divergence_loss(rows, targets, ids, lps, valid, divergence=divergence,
                                          beta=0.3, temperature=temperature, chunk_size=chunk)
        assert got.item() == pytest.approx(dense.item(), rel=1e-5)
        got.backward()
        assert torch.isfinite(rows.grad).all() and rows.grad.abs().sum() > 0
        assert parts["distill_kl"] == pytest.approx(dense.item() / temperature**2, rel=1e-5)


def test_topk_divergence_skips_rows_without_teacher_data() -> None:
    import torch

    from cotdistill.train.topk_divergence import topk_divergence_loss

    student, _, ids, lps = dense_case(k=5)
    valid = torch.tensor([True, True, True, False, False, False])
    targets = torch.zeros(6, dtype=torch.long)
    full, _ = topk_divergence_loss(student[:3], targets[:3], ids[:3], lps[:3], valid[:3],
                                   divergence="reverse", temperature=1.0)
    part, parts = topk_divergence_loss(student, targets, ids, lps, valid, divergence="reverse",
                                       temperature=1.0)
    # Same sum, twice the tokens in the denominator; the logged KL is over the rows with data.
    assert part.item() == pytest.approx(full.item() / 2, rel=1e-6)
    assert parts["distill_kl_share"] == 0.5


# ---------------------------------------------------------------- teacher rows (no engine)


def test_ranked_rows_keep_the_top_k_by_rank_best_first() -> None:
    """vLLM's candidates per position: the top K by rank plus the actual token when it ranks
    lower (rank 9 here), in any order; a position with fewer candidates is padded."""
    from types import SimpleNamespace as Lp

    from cotdistill.train.teacher_topk import ranked_rows

    ids, lps = ranked_rows([
        {7: Lp(rank=2, logprob=-1.5), 3: Lp(rank=1, logprob=-0.5), 9: Lp(rank=9, logprob=-6.0)},
        {4: Lp(rank=1, logprob=-0.1)},
    ], 2)
    assert ids.tolist() == [[3, 7], [4, -1]]
    assert lps[0].tolist() == [-0.5, -1.5] and lps[1, 0] == pytest.approx(-0.1)
    assert lps[1, 1] == float("-inf")


def test_teacher_server_rows_come_from_trls_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server source asks TRL's VLLMClient for K prompt logprobs from each prompt's end and
    marks padded candidates (-inf) with id -1."""
    import math

    from trl.generation import vllm_client

    from cotdistill.train.teacher_topk import TeacherServer

    asked: dict[str, Any] = {}

    class Client:
        def __init__(self, base_url: str, connection_timeout: float) -> None:
            asked["url"] = base_url

        def get_sequence_logprobs(self, **kwargs: Any) -> dict[str, Any]:
            asked.update(kwargs)
            return {"logprobs": [[[-0.2, -1.9], [-0.4, -math.inf]]],
                    "logprob_token_ids": [[[5, 6], [8, 0]]]}

    monkeypatch.setattr(vllm_client, "VLLMClient", Client)
    server = TeacherServer("http://127.0.0.1:8000/v1/", k=2)
    [(ids, lps)] = server.topk([[1, 2, 3, 4]], [2])
    assert asked["url"] == "http://127.0.0.1:8000"
    assert asked["prompt_lengths"] == [2] and asked["top_logprobs"] == 2
    assert ids.tolist() == [[5, 6], [8, -1]]
    assert lps.shape == (2, 2)


@pytest.mark.parametrize(("step", "last", "every", "due"), [
    (0, None, 1, True), (0, None, 3, True), (1, 0, 1, True), (1, 0, 2, False), (2, 0, 2, True),
    (5, 3, 3, False), (6, 3, 3, True),
])
def test_weights_go_to_the_rollout_engine_every_n_steps(step: int, last: int | None,
                                                        every: int, due: bool) -> None:
    from cotdistill.train.on_policy_vllm import sync_due

    assert sync_due(step, last, every) is due


def test_trace_batches_pad_and_mask_all_but_the_completion_and_cycle() -> None:
    from cotdistill.train.on_policy_vllm import trace_batches

    rows = [{"input_ids": [5, 6, 7], "completion_mask": [0, 1, 1]},
            {"input_ids": [8, 9], "completion_mask": [0, 1]}]
    batches = trace_batches(rows, 2, pad_id=0, seed=0)
    first = next(batches)
    by_first = {int(r[0]): i for i, r in enumerate(first["input_ids"])}
    a, b = by_first[5], by_first[8]
    assert first["input_ids"][b].tolist() == [8, 9, 0]
    assert first["attention_mask"][b].tolist() == [1, 1, 0]
    assert first["labels"][a].tolist() == [-100, 6, 7]
    assert first["labels"][b].tolist() == [-100, 9, -100]
    assert next(batches)["input_ids"].shape == (2, 3)  # endless: the next pass starts


# ---------------------------------------------------------------- config (no engine)


def data_file(tmp_path: Path, count: int = 6) -> Path:
    return write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(count)])


@pytest.mark.parametrize(("update", "field", "message"), [
    ({"teacher": None}, "teacher", "needs --teacher"),
    ({"packing": True}, "packing", "--packing does not apply"),
    ({"padding_free": True}, "padding_free", "--padding_free does not apply"),
    ({"eval_fraction": 0.2}, "eval_fraction", "no eval loss"),
    ({"teachers": {"a": 1.0}, "teacher": "x"}, "teachers", "one teacher"),
    ({"kd": "on-policy", "kd_sft_mix": 0.5}, "kd_sft_mix", "needs --kd on-policy-vllm"),
    ({"kd": "on-policy", "kd_rollout_every": 2}, "kd_rollout_every", "needs --kd on-policy-vllm"),
    ({"kd": "online", "kd_teacher_server": "http://x"}, "kd_teacher_server", "needs --kd on"),
])
def test_bad_combinations_stop_before_any_model_or_engine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update: dict, field: str,
        message: str) -> None:
    from cotdistill import train
    from cotdistill.train import teacher_topk, trainer

    def refuse(*args: Any, **kwargs: Any) -> None:
        pytest.fail("a model or engine was loaded")

    monkeypatch.setattr(trainer, "load_model", refuse)
    monkeypatch.setattr(teacher_topk.TeacherEngine, "__init__", refuse)
    config = TrainConfig(data=[data_file(tmp_path)], student="missing-student", teacher="t",
                         kd="on-policy-vllm", out=tmp_path / "out")
    with pytest.raises(InputError, match=message) as info:
        train.run_train(config.model_copy(update=update))
    assert info.value.field == field


def test_topk_above_vllms_limit_is_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="kd_topk"):
        TrainConfig(kd="on-policy-vllm", kd_topk=21)


# ---------------------------------------------------------------- engines


@pytest.fixture(scope="module")
def op_trainer(tiny_model: Path, tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Any:
    """The trainer `train` builds for --kd on-policy-vllm (both engines started), untrained."""
    from cotdistill.train.prepare import prepare
    from cotdistill.train.trainer import build_trainer

    tmp = tmp_path_factory.mktemp("opv")
    config = TrainConfig(
        data=[data_file(tmp)], student=str(tiny_model), teacher=str(tiny_teacher),
        kd="on-policy-vllm", kd_loss="forward", kd_topk=8, kd_max_new_tokens=8,
        out=tmp / "out", max_steps=2, batch_size=2, logging_steps=1, learning_rate=1e-3,
        distill_temperature=2.0, save_steps=100)
    trainer = build_trainer(config, prepare(config), tmp / "out")
    yield trainer
    trainer.close_engines()


def long_prompts(tokenizer: Any) -> list[list[int]]:
    """Prompts over one KV block (128 tokens on CPU): shorter ones never reach the prefix cache,
    so they could not show stale cached blocks after a weight update."""
    text = " ".join(f"{a} + {a + 1} = {2 * a + 1}." for a in range(60))
    return [tokenizer(f"Q{i}: {text}", add_special_tokens=False).input_ids[:300]
            for i in range(3)]


def greedy(llm: Any, prompts: list[list[int]]) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                           SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


# A fresh student engine of the kind TRL colocates (in process, vLLM's external launcher, TRL's
# settings), run in its own process: argv = model folder, prompts (JSON); prints its greedy ids.
FRESH_COLOCATED = """
import json, os, sys
os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[3], VLLM_CPU_KVCACHE_SPACE="1")
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], distributed_executor_backend="external_launcher", seed=0,
              max_num_seqs=2, max_num_batched_tokens=4096, gpu_memory_utilization=0.3,
              logprobs_mode="processed_logprobs")
    prompts = [TokensPrompt(prompt_token_ids=p) for p in json.loads(sys.argv[2])]
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12), use_tqdm=False)
    print("GREEDY " + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
"""


def fresh_colocated_greedy(folder: Path, prompts: list[list[int]]) -> list[list[int]]:
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-c", FRESH_COLOCATED, str(folder),
                           json.dumps(prompts), str(port)],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [x for x in done.stdout.splitlines() if x.startswith("GREEDY ")]
    assert lines, done.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("GREEDY "))


@pytest.mark.vllm
@pytest.mark.train
def test_rollouts_after_a_weight_update_equal_a_fresh_engines(op_trainer: Any,
                                                              tmp_path: Path) -> None:
    """After a sync the colocated engine answers exactly as a fresh one started on the new
    weights (the prompts fill whole KV blocks, so stale prefix-cache blocks would show).

    The fresh engine is of the same kind (in process, same settings): a standard engine, its
    worker in another process, differed on these weights by one bfloat16 step in a few
    log-probabilities (0.015) and so in greedy tokens after a near tie, on the new weights
    whether they were reloaded or loaded at start."""
    import torch

    prompts = long_prompts(op_trainer.processing_class)
    assert min(map(len, prompts)) > 128
    engine = op_trainer.rollout_engine()
    before = greedy(engine, prompts)  # also fills the prefix cache with the old weights' blocks
    torch.manual_seed(0)
    with torch.no_grad():
        for param in op_trainer.model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    op_trainer.sync_rollout_weights(force=True)
    after = greedy(engine, prompts)

    folder = tmp_path / "updated"
    op_trainer.model.save_pretrained(folder)
    op_trainer.processing_class.save_pretrained(folder)
    assert after == fresh_colocated_greedy(folder, prompts)
    assert after != before  # the update changed what the student says


@pytest.mark.vllm
@pytest.mark.train
def test_loss_is_the_topk_divergence_against_the_teacher_engine(op_trainer: Any,
                                                                tiny_teacher: Path) -> None:
    """A hand-made batch (a left-padded prompt, a right-padded completion): the teacher
    engine's rows are the teacher's top-K at the completion's positions, and the trainer's loss
    is T^2 x KL(q || p_s) over them, by hand."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = op_trainer.processing_class
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                         tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False).input_ids
    completion = tok("2 + 3 = 5. The answer is 5.", add_special_tokens=False).input_ids
    sequence = prompt + completion
    [(ids, lps)] = op_trainer.teacher.topk([sequence], [len(prompt)])
    assert ids.shape == (len(completion), 8)

    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher, dtype=torch.float32)
    with torch.no_grad():
        ref = torch.log_softmax(teacher(torch.tensor([sequence])).logits[0].float(), -1)
    ref = ref[len(prompt) - 1:-1]  # the rows that predicted the completion's tokens
    ids_t, lps_t = torch.from_numpy(ids).long(), torch.from_numpy(lps)
    # The engine serves the teacher in bfloat16: log-probs agree to bf16 rounding.
    assert torch.allclose(ref.gather(-1, ids_t), lps_t, atol=0.05)
    assert (ref.topk(8, -1).values[:, -1] <= lps_t.max(-1).values + 1e-6).all()

    pad = tok.pad_token_id
    inputs = {
        "prompt_ids": torch.tensor([[pad, pad] + prompt]),
        "prompt_mask": torch.tensor([[0, 0] + [1] * len(prompt)]),
        "completion_ids": torch.tensor([completion + [pad, pad, pad]]),
        "completion_mask": torch.tensor([[1] * len(completion) + [0, 0, 0]]),
    }
    model = op_trainer.model
    model.eval()
    with torch.no_grad():
        loss = op_trainer.compute_loss(model, inputs)
        student = model(torch.tensor([sequence])).logits[0, len(prompt) - 1:-1].float()
    model.train()
    T = 2.0
    q = torch.softmax(lps_t / T, -1)
    log_p = torch.log_softmax(student / T, -1).gather(-1, ids_t)
    expected = T**2 * (q * (q.log() - log_p)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)

    # --kd-sft-mix W: (1 - W) x that + W x CE on a batch of traces (here: one hand-made trace).
    trace = {"input_ids": torch.tensor([sequence]), "attention_mask": torch.ones(1, len(sequence),
                                                                                dtype=torch.long),
             "labels": torch.tensor([[-100] * len(prompt) + completion])}
    op_trainer.sft_mix, op_trainer.sft_batches = 0.25, iter([trace])
    try:
        with torch.no_grad():
            mixed = op_trainer.compute_loss(model, inputs)  # training mode: the mix applies
            ce = model(**trace).loss
    finally:
        op_trainer.sft_mix, op_trainer.sft_batches = 0.0, None
        op_trainer._metrics["train"].clear()  # this call's figures are no training step's
    assert mixed.item() == pytest.approx(0.75 * expected.item() + 0.25 * ce.item(), rel=1e-4)


@pytest.mark.vllm
@pytest.mark.train
def test_training_steps_change_the_student_and_log_the_divergence(op_trainer: Any) -> None:
    import torch

    before = {n: p.detach().clone() for n, p in op_trainer.model.named_parameters()}
    result = op_trainer.train()
    assert op_trainer.state.global_step == 2
    steps = [e for e in op_trainer.state.log_history if "loss" in e]
    assert len(steps) == 2
    # No CE on the student's own samples: the loss is T^2 x the top-K divergence.
    for entry in steps:
        assert entry["distill_kl"] > 0
        assert entry["loss"] == pytest.approx(4 * entry["distill_kl"], rel=1e-3)
        assert entry["time_rollout_s"] > 0 and entry["time_teacher_s"] > 0
    assert result.metrics["train_loss"] > 0
    after = dict(op_trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)
    # Training closed both engines.
    assert op_trainer.teacher is None and op_trainer.vllm_generation.llm is None
