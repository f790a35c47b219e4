"""Hidden-state, attention and relation distillation (cotdistill/losses/{hidden,attention,
relation,features}.py): each term on tiny models, its masking and gradients, and a real
two-step training run whose logged loss is the weighted sum of every logged term."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cotdistill.errors import InputError
from cotdistill.losses.attention import attention_loss, match_heads
from cotdistill.losses.features import FeatureDistiller, FeatureSettings
from cotdistill.losses.hidden import hidden_loss, layer_pairs
from cotdistill.losses.relation import relation_loss, sequence_means
from cotdistill.train.config import TrainConfig
from cotdistill.train.prepare import prepare
from cotdistill.train.stage import run_train
from cotdistill.train.trainer import build_trainer
from tests.helpers.sft import sft_record, write_sft

PROMPT = 5  # the first PROMPT positions of every row are the prompt (label -100)
ALL_ON = FeatureSettings(hidden_weight=1.0, attention_weight=1.0, relation_weight=1.0)


def _load(path: Path) -> object:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager")


def _batch(vocab: int, rows: int = 4, length: int = 12) -> tuple[object, object]:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    return ids, labels


def _forward(model: object, ids: object) -> object:
    return model(input_ids=ids, output_hidden_states=True, output_attentions=True)


@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    """4 layers, width 96 and 3 heads (the student: 2 layers, width 64, 2 heads), same tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    out = tmp_path_factory.mktemp("wide") / "teacher"
    config = AutoConfig.from_pretrained(tiny_model)
    config.update({"hidden_size": 96, "num_attention_heads": 3, "num_hidden_layers": 4,
                   "intermediate_size": 192})
    torch.manual_seed(2)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    return out


# ------------------------------------------------------------------ layer maps


def test_layer_maps() -> None:
    assert layer_pairs("uniform", 2, 4) == [(1, 2), (2, 4)]
    assert layer_pairs("uniform", 3, 3) == [(1, 1), (2, 2), (3, 3)]  # identity
    assert layer_pairs("uniform", 10, 30)[-1] == (10, 30)
    assert layer_pairs("last", 2, 4) == [(2, 4)]
    assert layer_pairs(" 3:12, 6:24 ", 12, 48) == [(3, 12), (6, 24)]
    for bad, why in (("3-12", "pairs"), ("13:12", "student has layers 0..12"),
                     ("3:49", "teacher has layers 0..48"), ("", "no pairs")):
        with pytest.raises(ValueError, match=why):
            layer_pairs(bad, 12, 48)


def test_bad_feature_settings_stop_before_any_model_loads(
    tiny_model: Path, tiny_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    def no_weights(*args: object, **kwargs: object) -> None:
        raise AssertionError("model weights loaded before the settings were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(4)])
    base = dict(data=[data], student=str(tiny_model), out=tmp_path / "o")
    with pytest.raises(InputError, match="teacher has layers 0..4") as err:
        prepare(TrainConfig(**base, teacher=str(tiny_teacher), hidden_weight=1.0,
                            hidden_layer_map="1:2,2:5"))
    assert err.value.field == "hidden_layer_map"
    with pytest.raises(InputError, match="online teacher") as err:
        prepare(TrainConfig(**base, relation_weight=1.0))
    assert err.value.field == "relation_weight"
    with pytest.raises(InputError, match="only eager attention") as err:
        prepare(TrainConfig(**base, teacher=str(tiny_teacher), attention_weight=1.0,
                            attn_implementation="sdpa"))
    assert err.value.field == "attn_implementation"
    with pytest.raises(InputError, match="embeddings"):
        prepare(TrainConfig(**base, teacher=str(tiny_teacher), attention_weight=1.0,
                            hidden_layer_map="0:0,2:4"))
    with pytest.raises(ValueError, match="STUDENT:TEACHER"):
        TrainConfig(**base, hidden_layer_map="2>4")


# ------------------------------------------------------------------ zero when equal


def test_every_term_is_zero_when_the_student_is_its_teacher(tiny_model: Path,
                                                            tiny_teacher: Path) -> None:
    import torch

    student, same = _load(tiny_model), _load(tiny_model)
    ids, labels = _batch(student.config.vocab_size)
    with torch.no_grad():
        out_s, out_same = _forward(student, ids), _forward(same, ids)
        features = FeatureDistiller.build(ALL_ON, student.config, same.config)
        assert features.pairs == [(1, 1), (2, 2)] and features.projection is None
        loss, parts = features(out_s, out_same, labels)
        assert float(loss) == pytest.approx(0.0, abs=1e-6)
        assert all(v == pytest.approx(0.0, abs=1e-6) for v in parts.values())
        # ... and not zero for a different teacher: the zero above is not vacuous.
        other = _load(tiny_teacher)
        features = FeatureDistiller.build(ALL_ON, student.config, other.config)
        _, parts = features(out_s, _forward(other, ids), labels)
    assert set(parts) == {"hidden_mse", "attention_kl", "relation_loss", "relation_distance",
                          "relation_angle"}
    assert all(v > 1e-4 for v in parts.values()), parts


# ------------------------------------------------------------------ gradients


@pytest.mark.parametrize("term", ["hidden_weight", "attention_weight", "relation_weight"])
def test_gradient_reaches_the_student_and_projection_never_the_teacher(
    tiny_model: Path, wide_teacher: Path, term: str
) -> None:
    student, teacher = _load(tiny_model), _load(wide_teacher)
    ids, labels = _batch(student.config.vocab_size)
    settings = FeatureSettings(**{term: 1.0})
    features = FeatureDistiller.build(settings, student.config, teacher.config)
    # The teacher keeps requires_grad here on purpose: only the losses' detach protects it.
    loss, _ = features(_forward(student, ids), _forward(teacher, ids), labels)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    layer = student.model.layers[0].self_attn.q_proj.weight
    assert layer.grad is not None and layer.grad.abs().sum() > 0
    extra = list(features.parameters())
    if term == "hidden_weight":  # widths 64 vs 96: one projection per pair, trained
        assert [tuple(p.shape) for p in extra[::2]] == [(96, 64), (96, 64)]
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in extra)
    else:
        assert extra == []


def test_the_trainer_optimises_the_projection_but_does_not_save_it(
    tiny_model: Path, wide_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(4)])
    config = TrainConfig(data=[data], student=str(tiny_model), teacher=str(wide_teacher),
                         out=tmp_path / "o", hidden_weight=1.0, attention_weight=1.0)
    trainer = build_trainer(config, prepare(config), tmp_path / "o")
    assert "eager attention" in capsys.readouterr().out
    assert trainer.model.config._attn_implementation == "eager"
    assert trainer.teacher_model.config._attn_implementation == "eager"
    optimizer = trainer.create_optimizer()
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    projection = list(trainer.features.parameters())
    assert projection and all(id(p) in in_optimizer for p in projection)
    assert all(id(p) not in {id(q) for q in trainer.model.parameters()} for p in projection)


# ------------------------------------------------------------------ masking


def test_hidden_and_relation_terms_ignore_prompt_tokens() -> None:
    import torch

    torch.manual_seed(0)
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, :PROMPT] = False
    s = [torch.randn(4, 10, 8) for _ in range(3)]
    t = [torch.randn(4, 10, 8) for _ in range(3)]
    pairs = [(1, 1), (2, 2)]

    def losses(s: list, t: list) -> list[float]:
        rel, _ = relation_loss(sequence_means(s[-1], mask), sequence_means(t[-1], mask))
        return [float(hidden_loss(s, t, mask, pairs, kind=k)) for k in ("mse", "cosine")] + [
            float(rel)]

    before = losses(s, t)
    s2 = [h.clone() for h in s]
    t2 = [h.clone() for h in t]
    for h in (*s2, *t2):
        h[:, :PROMPT] += 100.0  # prompt positions only
    assert losses(s2, t2) == pytest.approx(before, rel=1e-6)
    for h in s2:
        h[0, PROMPT] += 5.0  # one assistant position (of one row: relations are translation-free)
    assert all(a != pytest.approx(b, rel=1e-4) for a, b in zip(losses(s2, t2), before,
                                                               strict=True))


def test_attention_term_ignores_prompt_query_rows() -> None:
    import torch

    torch.manual_seed(0)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, :3] = False

    def rand_attention() -> torch.Tensor:
        return torch.randn(2, 2, 6, 6).softmax(-1)

    s, t = [rand_attention()], [rand_attention()]
    before = float(attention_loss(s, t, mask, [(1, 1)]))
    s2, t2 = [s[0].clone()], [t[0].clone()]
    s2[0][:, :, :3] = rand_attention()[:, :, :3]  # rows of prompt queries
    t2[0][:, :, :3] = rand_attention()[:, :, :3]
    assert float(attention_loss(s2, t2, mask, [(1, 1)])) == pytest.approx(before, rel=1e-6)
    s2[0][:, :, 4] = rand_attention()[:, :, 4]  # an assistant query's row
    assert float(attention_loss(s2, t2, mask, [(1, 1)])) != pytest.approx(before, rel=1e-4)


def test_attention_heads_grouped_or_averaged_and_sdpa_refused() -> None:
    import torch

    s, t = torch.rand(1, 2, 3, 3), torch.rand(1, 4, 3, 3)
    _, grouped = match_heads(s, t)
    assert torch.allclose(grouped[0, 1], t[0, 2:].mean(0))
    a, b = match_heads(s, torch.rand(1, 3, 3, 3))
    assert a.shape[1] == b.shape[1] == 1
    mask = torch.ones(1, 3, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="only attn_implementation eager"):
        attention_loss((), [t], mask, [(1, 1)])  # what sdpa returns


def test_relation_loss_splits_padding_free_rows_and_is_scale_free() -> None:
    import torch

    torch.manual_seed(0)
    hidden = torch.randn(1, 9, 4)
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1, 2]])
    mask = torch.tensor([[False, True, True] * 3])
    reps = sequence_means(hidden, mask, position_ids)
    assert reps.shape == (3, 4)
    assert torch.allclose(reps[1], hidden[0, 4:6].mean(0))
    # Distances are normalised by their mean: a teacher that is the student scaled costs 0.
    student = torch.randn(5, 4)
    loss, parts = relation_loss(student, 7.0 * student)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    loss, parts = relation_loss(student, torch.randn(5, 6))  # widths may differ
    assert parts["relation_distance"] > 0 and parts["relation_angle"] > 0
    assert float(loss) == pytest.approx(parts["relation_distance"] + 2 * parts["relation_angle"])


# ------------------------------------------------------------------ a real run


@pytest.mark.train
def test_training_logs_every_term_and_the_loss_is_their_weighted_sum(
    tiny_model: Path, wide_teacher: Path, tmp_path: Path
) -> None:
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(8)])
    out = tmp_path / "kd"
    # Random tiny models attend almost uniformly (attention KL ~1e-3): a large weight makes
    # that term count.
    weights = {"hidden_weight": 0.5, "attention_weight": 50.0, "relation_weight": 4.0}
    manifest = run_train(TrainConfig(
        data=[data], student=str(tiny_model), teacher=str(wide_teacher), out=out, max_steps=2,
        learning_rate=3e-3, batch_size=4, logging_steps=1, distill_alpha=0.5,
        distill_temperature=2.0, **weights))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert len(steps) == 2
    for entry in steps:
        terms = {"hidden_mse": 0.5 * entry["hidden_mse"],
                 "attention_kl": 50.0 * entry["attention_kl"],
                 "relation_loss": 4.0 * entry["relation_loss"]}
        # Each weighted term is well above the tolerance of the equality below (1e-3 of a
        # loss near 4), so leaving any one out of the total breaks it.
        assert all(v > 0.02 for v in terms.values()), terms
        assert entry["relation_loss"] == pytest.approx(
            entry["relation_distance"] + 2 * entry["relation_angle"], rel=1e-4)
        expected = 0.5 * 4 * entry["distill_kl"] + 0.5 * entry["distill_ce"] + sum(
            terms.values())
        assert entry["loss"] == pytest.approx(expected, rel=1e-3)
    assert manifest["kd"]["feature_terms"] == weights
    # The projection (64 -> 96) trained with the student but is not saved with it.
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as saved, \
            safe_open(tiny_model / "model.safetensors", "pt") as original:
        assert set(saved.keys()) == set(original.keys())
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


@pytest.mark.train
def test_bf16_training_is_finite_and_its_loss_falls(
    tiny_model: Path, wide_teacher: Path, tmp_path: Path
) -> None:
    import math

    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(16)])
    common = dict(data=[data], student=str(tiny_model), max_steps=6, learning_rate=3e-3,
                  batch_size=4, logging_steps=1, dtype="bfloat16")
    run_train(TrainConfig(**common, out=tmp_path / "sft"))
    losses = [json.loads(line).get("loss") for line in
              (tmp_path / "sft" / "train_log.jsonl").read_text().splitlines()]
    losses = [x for x in losses if x is not None]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0]
    # The feature terms under bf16 autocast (fp32 projection, bf16 activations) stay finite.
    run_train(TrainConfig(**{**common, "max_steps": 2}, out=tmp_path / "kd",
                          teacher=str(wide_teacher), hidden_weight=1.0, relation_weight=1.0))
    log = [json.loads(line) for line in
           (tmp_path / "kd" / "train_log.jsonl").read_text().splitlines()]
    steps = [e for e in log if "loss" in e]
    assert steps and all(math.isfinite(e[k]) for e in steps
                         for k in ("loss", "hidden_mse", "relation_loss"))


# ------------------------------------------------------------------ multi-teacher soft targets


def test_mixed_logits_are_the_weighted_mixture_of_tempered_teachers() -> None:
    import math

    import torch

    from cotdistill.losses.multi_teacher import mix_logits

    torch.manual_seed(0)
    a, b = torch.randn(3, 7), torch.randn(3, 9)  # b: an output padded past the 7 tokens
    t = 2.0
    mixed = mix_logits([a, b], torch.tensor([math.log(0.75), math.log(0.25)]), t, 7)
    expected = 0.75 * (a / t).softmax(-1) + 0.25 * (b[:, :7] / t).softmax(-1)
    assert torch.allclose((mixed / t).log_softmax(-1).exp(), expected, atol=1e-6)


@pytest.mark.train
def test_teachers_mix_distributions_and_one_teacher_equals_teacher(
    tiny_model: Path, tiny_teacher: Path, wide_teacher: Path, tmp_path: Path
) -> None:
    data = write_sft(tmp_path / "sft.jsonl", [sft_record(i) for i in range(8)])
    common = dict(data=[data], student=str(tiny_model), max_steps=2, learning_rate=3e-3,
                  batch_size=4, logging_steps=1, distill_alpha=0.5)

    def kls(out: Path) -> list[float]:
        log = (out / "train_log.jsonl").read_text().splitlines()
        return [e["distill_kl"] for e in map(json.loads, log) if "distill_kl" in e]

    run_train(TrainConfig(**common, teacher=str(tiny_teacher), out=tmp_path / "one"))
    run_train(TrainConfig(**common, teachers={str(tiny_teacher): 2.0}, out=tmp_path / "mix1"))
    assert kls(tmp_path / "mix1") == pytest.approx(kls(tmp_path / "one"), rel=1e-4)
    manifest = run_train(TrainConfig(
        **common, teachers=f"{tiny_teacher}=0.5,{wide_teacher}=0.5", out=tmp_path / "mix2"))
    assert str(wide_teacher) in manifest["teacher_model"]
    assert kls(tmp_path / "mix2")[0] != pytest.approx(kls(tmp_path / "one")[0], rel=1e-3)
    with pytest.raises(InputError, match="not both"):
        prepare(TrainConfig(**common, teacher=str(tiny_teacher),
                            teachers={str(wide_teacher): 1.0}, out=tmp_path / "x"))


# ------------------------------------------------------------------ progressive chains


def _chain_config(tmp_path: Path, students: list[dict]) -> object:
    from cotdistill.run.config import PipelineConfig

    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text(json.dumps({"id": "p0", "question": "q", "answer": "1"}) + "\n")
    test.write_text(json.dumps({"id": "t0", "question": "q", "answer": "2"}) + "\n")
    return PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": "fake-teacher", "problems": train,
        "eval_problems": test, "students": students})


def test_a_student_can_be_the_next_students_teacher(tmp_path: Path) -> None:
    from cotdistill.run.plan import plan

    config = _chain_config(tmp_path, [
        {"name": "mid", "init": {"keep_every": 2}, "train": {"teacher": "fake-teacher"}},
        {"name": "final", "init": {"keep_every": 2}, "train": {"teacher": "mid",
                                                               "hidden_weight": 1.0}},
    ])
    steps = {s.name: s for s in plan(config).steps}
    mid_model = tmp_path / "run" / "students" / "mid" / "model"
    final = steps["final: train"]
    assert final.config.teacher == str(mid_model)  # teacher -> mid -> final
    assert mid_model in final.depends_on  # a retrained intermediate retrains the final student
    assert steps["mid: train"].config.teacher == "fake-teacher"
    assert f"final={tmp_path / 'run' / 'students' / 'final' / 'model'}" in \
        steps["evaluate"].config.model  # each step of the chain is evaluated
    # The run's report shows the chain with each step's retention against its own teacher.
    from cotdistill.run.report import chain_lines

    the_plan = plan(config)
    the_plan.evaluate_dir.mkdir(parents=True)
    accuracies = {"teacher": 0.5, "mid": 0.25, "final": 0.2}
    (the_plan.evaluate_dir / "summary.json").write_text(json.dumps(
        {"models": {n: {"accuracy": a} for n, a in accuracies.items()}}))
    assert "| teacher -> mid -> final | 0.500 -> 0.250 -> 0.200 | 0.50, 0.80 |" in \
        chain_lines(the_plan)
    backwards = _chain_config(tmp_path, [
        {"name": "final", "train": {"teacher": "mid"}}, {"name": "mid", "train": {}}])
    with pytest.raises(InputError, match="list it first") as err:
        plan(backwards)
    assert err.value.field == "students.0.train.teacher"
