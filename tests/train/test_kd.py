"""Logit distillation: the loss against a hand computation, and training with a teacher."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from cotdistill.errors import InputError
from cotdistill.train.config import TrainConfig
from cotdistill.train.kd import distillation_loss
from cotdistill.train.prepare import prepare
from cotdistill.train.stage import run_train
from tests.helpers.sft import sft_record, write_sft


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(x / t) for x in row]
    return [e / sum(exps) for e in exps]


def _by_hand(student, teacher, labels, t: float, alpha: float) -> float:
    """Per-token alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE, averaged over label tokens."""
    total, count = 0.0, 0
    for b in range(len(labels)):
        for i in range(len(labels[b]) - 1):
            target = labels[b][i + 1]
            if target == -100:
                continue
            p_t, p_s = _softmax(teacher[b][i], t), _softmax(student[b][i], t)
            kl = sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s, strict=True))
            ce = -math.log(_softmax(student[b][i], 1.0)[target])
            total += alpha * t * t * kl + (1 - alpha) * ce
            count += 1
    return total / count


STUDENT = [[[1.0, 0.5, -1.0], [0.2, 0.1, 0.0], [2.0, -2.0, 0.5], [0.0, 0.0, 3.0]],
           [[-1.0, 1.0, 0.0], [0.3, 0.3, -0.3], [1.5, 0.0, 0.0], [9.0, 9.0, 9.0]]]
TEACHER = [[[0.5, 0.5, 0.0], [2.0, -1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
           [[0.0, 3.0, -3.0], [1.0, 0.0, 1.0], [-0.5, 0.5, 2.5], [0.0, 0.0, 0.0]]]
# Position 0 (prompt) and padding are -100; the last logits predict nothing.
LABELS = [[-100, 2, 0, 1], [-100, -100, 1, -100]]


@pytest.mark.parametrize(("t", "alpha"), [(1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (0.5, 0.0)])
def test_loss_equals_hand_computation(t: float, alpha: float) -> None:
    import torch

    loss, parts = distillation_loss(
        torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS),
        temperature=t, alpha=alpha,
    )
    assert loss.item() == pytest.approx(_by_hand(STUDENT, TEACHER, LABELS, t, alpha), rel=1e-5)
    assert parts["distill_kl"] >= 0


def test_num_items_sets_the_denominator_and_alpha_zero_is_plain_ce() -> None:
    import torch
    import torch.nn.functional as F

    s, t, y = torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)
    mean, _ = distillation_loss(s, t, y, temperature=2.0, alpha=0.5)
    summed, _ = distillation_loss(s, t, y, temperature=2.0, alpha=0.5, num_items=8)
    assert summed.item() == pytest.approx(mean.item() * 4 / 8)
    ce, _ = distillation_loss(s, t, y, temperature=3.0, alpha=0.0)
    expected = F.cross_entropy(s[:, :-1].reshape(-1, 3), y[:, 1:].reshape(-1), ignore_index=-100)
    assert ce.item() == pytest.approx(expected.item())
    same, parts = distillation_loss(s, s.clone(), y, temperature=2.0, alpha=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6) and parts["distill_kl"] == pytest.approx(0)


@pytest.mark.train
def test_training_with_a_teacher_runs(tiny_model: Path, tiny_teacher: Path,
                                      tmp_path: Path) -> None:
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(12)])
    out = tmp_path / "kd"
    manifest = run_train(TrainConfig(
        data=[data], student=str(tiny_model), teacher=str(tiny_teacher), out=out, max_steps=4,
        learning_rate=3e-3, batch_size=4, logging_steps=1, distill_temperature=2.0,
        distill_alpha=0.7, padding_free=True,
    ))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 4
    # The logged loss is the mix of its two logged parts (at T=2: 0.7 * 4 * KL + 0.3 * CE).
    first = steps[0]
    assert first["loss"] == pytest.approx(
        0.7 * 4 * first["distill_kl"] + 0.3 * first["distill_ce"], rel=1e-3)
    assert first["distill_kl"] > 0  # two different random models disagree
    assert steps[-1]["loss"] < first["loss"]
    assert manifest["distillation"] and manifest["teacher_model"] == str(tiny_teacher)
    assert (out / "model.safetensors").exists()


def test_different_tokenizers_stop_before_loading_models(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    import cotdistill.train as train
    import cotdistill.train.trainer as trainer

    other = tmp_path / "other_teacher"
    shutil.copytree(tiny_teacher, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<|think|>"])
    tok.save_pretrained(other)
    monkeypatch.setattr(trainer, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(0)])
    config = TrainConfig(data=[data], student=str(tiny_model), teacher=str(other),
                         out=tmp_path / "kd")
    with pytest.raises(InputError, match="share a tokenizer") as info:
        train.run_train(config)
    assert info.value.field == "teacher"
    # The same teacher with the student's tokenizer passes the check.
    assert prepare(config.model_copy(update={"teacher": str(tiny_teacher)})).teacher_path


# --- bounded memory, padded vocabularies, offline top-k ---------------------------------------


def test_chunked_loss_equals_the_full_logits_loss() -> None:
    import torch

    s = torch.randn(3, 9, 11, generator=torch.Generator().manual_seed(0))
    t = torch.randn(3, 9, 11, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(2))
    y[:, :3] = -100
    for divergence in ("forward", "reverse", "jsd"):
        whole, _ = distillation_loss(s, t, y, temperature=2.0, alpha=0.5, divergence=divergence)
        chunked, _ = distillation_loss(s, t, y, temperature=2.0, alpha=0.5,
                                       divergence=divergence, chunk_size=4)
        assert chunked.item() == pytest.approx(whole.item(), abs=1e-5)


def padded_copy(model: Path, out: Path, rows: int) -> Path:
    """The model with its embedding matrix padded past the tokenizer (as Qwen2.5 ships)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(model)
    m.resize_token_embeddings(rows)
    m.save_pretrained(out)
    AutoTokenizer.from_pretrained(model).save_pretrained(out)
    return out


@pytest.mark.train
def test_a_padded_teacher_and_student_distil(tiny_model: Path, tiny_teacher: Path,
                                             tmp_path: Path) -> None:
    """Tokenizers identical, output sizes 512 (student) and 640 (teacher): it trains."""
    teacher = padded_copy(tiny_teacher, tmp_path / "padded_teacher", 640)
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(8)])
    manifest = run_train(TrainConfig(
        data=[data], student=str(tiny_model), teacher=str(teacher), out=tmp_path / "kd",
        max_steps=2, batch_size=4, logging_steps=1, kd_loss="jsd", kd_beta=0.3,
        kd_chunk_size=7,
    ))
    log = [json.loads(x) for x in (tmp_path / "kd" / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(e["loss"]) for e in log if "loss" in e)
    assert manifest["kd"]["loss"] == "jsd" and manifest["counts"]["steps"] == 2


def write_teacher_topk(records: list[dict], student: Path, teacher: Path, folder: Path,
                       k: int, corrupt: set[int] = frozenset()) -> None:
    """What `generate --topk-logprobs k` would store had `teacher` sampled these answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.backends import TopkTokens
    from cotdistill.topk_store import TopkWriter, vocab_fingerprint
    from cotdistill.train.data import SftRecord, to_example, tokenize_example

    tok = AutoTokenizer.from_pretrained(student)
    model = AutoModelForCausalLM.from_pretrained(teacher)
    writer = TopkWriter(folder, k, {"teacher": str(teacher), **vocab_fingerprint(tok)})
    rows = []
    for i, record in enumerate(records):
        row = tokenize_example(tok, to_example(SftRecord(**record), "sft", i + 1), 1024)
        start = row.completion_mask.index(1)
        ids = torch.tensor([row.input_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        rows_logp = logp[start - 1:len(row.input_ids) - 1]
        values, top = rows_logp.topk(k, dim=-1)
        sampled = torch.tensor(row.input_ids[start:])
        if i in corrupt:
            sampled = (sampled + 1) % 512  # the student would read other tokens here
        rows.append(((record["problem_id"], record["sample_index"]), TopkTokens(
            ids=top.int().numpy(), logprobs=values.half().numpy(), sampled=sampled.int().numpy(),
            sampled_lp=rows_logp.gather(-1, sampled[:, None].long())[:, 0].half().numpy())))
    writer.write(rows)


def topk_records(count: int) -> list[dict]:
    return [{**sft_record(i), "sample_index": 0} for i in range(count)]


@pytest.mark.train
def test_offline_topk_with_k_equal_to_the_vocabulary_matches_online_kd(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path
) -> None:
    records = topk_records(8)
    data = write_sft(tmp_path / "sft.jsonl", records)
    write_teacher_topk(records, tiny_model, tiny_teacher, tmp_path / "gen" / "topk", k=512)
    common = dict(data=[data], student=str(tiny_model), max_steps=1, batch_size=8,
                  logging_steps=1, distill_temperature=2.0, distill_alpha=0.7, seed=3)
    online = run_train(TrainConfig(**common, teacher=str(tiny_teacher), out=tmp_path / "on"))
    offline = run_train(TrainConfig(**common, kd="offline-topk", topk_from=[tmp_path / "gen"],
                                     out=tmp_path / "off"))

    def first(out: Path) -> dict:
        return next(json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()
                    if "loss" in json.loads(x))

    a, b = first(tmp_path / "on"), first(tmp_path / "off")
    # float16 storage of the teacher's logprobs is the only difference.
    assert b["distill_kl"] == pytest.approx(a["distill_kl"], rel=2e-3, abs=1e-4)
    assert b["distill_ce"] == pytest.approx(a["distill_ce"], rel=1e-6)
    assert offline["kd"]["aligned"] == 8 and offline["kd"]["mode"] == "offline-topk"
    assert offline["kd"]["k"] == 512 and online["kd"]["mode"] == "online"


@pytest.mark.train
def test_offline_topk_trains_and_counts_examples_it_cannot_align(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = topk_records(12)
    data = write_sft(tmp_path / "sft.jsonl", records)
    write_teacher_topk(records, tiny_model, tiny_teacher, tmp_path / "gen" / "topk", k=20,
                       corrupt={3, 7})
    config = TrainConfig(data=[data], student=str(tiny_model), kd="offline-topk",
                         topk_from=[tmp_path / "gen"], topk_tail="bucket", out=tmp_path / "kd",
                         max_steps=3, batch_size=4, logging_steps=1, learning_rate=3e-3,
                         padding_free=True, eval_fraction=0.25)
    manifest = run_train(config)
    assert manifest["kd"]["token_mismatch"] == 2 and manifest["kd"]["aligned"] == 10
    assert "2 whose tokens differ from the teacher's sampled ids" in capsys.readouterr().out
    log = [json.loads(x) for x in (tmp_path / "kd" / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 3 and all(math.isfinite(e["loss"]) and e["distill_kl"] > 0
                                   for e in steps)
    assert manifest["eval_loss"] is not None and math.isfinite(manifest["eval_loss"])
    with pytest.raises(InputError, match="cannot use 2 of 12"):
        prepare(config.model_copy(update={"topk_on_mismatch": "error"}))


def test_offline_topk_refuses_another_vocabulary_before_loading_weights(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cotdistill.train as train
    import cotdistill.train.trainer as trainer
    from cotdistill.topk_store import TopkWriter

    records = topk_records(2)
    data = write_sft(tmp_path / "sft.jsonl", records)
    folder = tmp_path / "gen" / "topk"
    # Same name, same size, another token -> id map.
    TopkWriter(folder, 4, {"tokenizer": str(tiny_model), "vocab_size": 512,
                           "vocab_sha256": "0" * 64})
    monkeypatch.setattr(trainer, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    config = TrainConfig(data=[data], student=str(tiny_model), kd="offline-topk",
                         topk_from=[tmp_path / "gen"], out=tmp_path / "kd")
    with pytest.raises(InputError, match="is not the teacher's") as info:
        train.run_train(config)
    assert info.value.field == "topk_from"
    with pytest.raises(InputError, match="needs --topk-from"):
        train.run_train(config.model_copy(update={"topk_from": []}))


@pytest.mark.train
def test_on_policy_distillation_runs_two_steps(tiny_model: Path, tiny_teacher: Path,
                                               tmp_path: Path) -> None:
    """The student samples its own answers (TRL's GKD loop); the loss is ours."""
    from safetensors.torch import load_file

    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(6)])
    out = tmp_path / "op"
    manifest = run_train(TrainConfig(
        data=[data], student=str(tiny_model), teacher=str(tiny_teacher), kd="on-policy",
        kd_loss="reverse", kd_max_new_tokens=8, out=out, max_steps=2, batch_size=2,
        logging_steps=1, learning_rate=1e-3,
    ))
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 2 and manifest["counts"]["steps"] == 2
    # No CE term on the student's own samples: the loss is T^2 * the divergence.
    assert steps[0]["loss"] == pytest.approx(4 * steps[0]["distill_kl"], rel=1e-3)
    assert steps[0]["distill_kl"] > 0
    before = load_file(tiny_model / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert any(not (before[k] == after[k]).all() for k in before)
    assert manifest["kd"]["mode"] == "on-policy"


def test_logged_distill_kl_is_weighted_by_tokens_with_teacher_data() -> None:
    """A logging window's KL: the mean over the tokens that had teacher data, whatever the
    micro-batches (one without any must not count as KL 0), with their share beside it."""
    from cotdistill.train.kd import KLWindow

    window = KLWindow()
    window.add(2.0, with_teacher=3, tokens=4)
    window.add(0.0, with_teacher=0, tokens=5)  # a batch of examples without stored rows
    window.add(4.0, with_teacher=1, tokens=1)
    assert window.flush() == {"distill_kl": pytest.approx(2.5),
                              "distill_kl_share": pytest.approx(0.4)}
    # Flushed: the next window starts empty; one with no teacher data logs no KL at all.
    window.add(0.0, with_teacher=0, tokens=7)
    assert window.flush() == {"distill_kl_share": 0.0}
    assert window.flush() == {}


@pytest.mark.train
def test_offline_topk_logged_kl_is_not_diluted_by_examples_without_teacher_rows(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path
) -> None:
    """Half the examples have no stored top-k rows: the logged distill_kl is the online KL of
    the other half (not half of it), and distill_kl_share says which share had rows."""
    from transformers import AutoTokenizer

    from cotdistill.train.data import SftRecord, to_example, tokenize_example

    records = topk_records(8)
    with_rows = records[:4]
    data = write_sft(tmp_path / "sft.jsonl", records)
    write_teacher_topk(with_rows, tiny_model, tiny_teacher, tmp_path / "gen" / "topk", k=512)
    common = dict(student=str(tiny_model), max_steps=1, batch_size=8, logging_steps=1,
                  distill_temperature=2.0, distill_alpha=0.7, seed=3)
    run_train(TrainConfig(**common, data=[write_sft(tmp_path / "half.jsonl", with_rows)],
                          teacher=str(tiny_teacher), out=tmp_path / "on"))
    run_train(TrainConfig(**common, data=[data], kd="offline-topk",
                          topk_from=[tmp_path / "gen"], out=tmp_path / "off"))

    def first(out: Path) -> dict:
        return next(json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()
                    if "loss" in json.loads(x))

    online, offline = first(tmp_path / "on"), first(tmp_path / "off")
    assert offline["distill_kl"] == pytest.approx(online["distill_kl"], rel=2e-3, abs=1e-4)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tokens = [sum(tokenize_example(tok, to_example(SftRecord(**r), "sft", i + 1), 1024)
                  .completion_mask) for i, r in enumerate(records)]
    assert offline["distill_kl_share"] == pytest.approx(sum(tokens[:4]) / sum(tokens))
