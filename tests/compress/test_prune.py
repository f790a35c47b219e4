"""`student prune`: on a tiny GQA llama (4 query heads in 2 KV groups, head_dim 32, hidden 128,
MLP 256, 4 layers) with planted dead parts, importance ranks each planted part last; pruning
nothing reproduces the teacher's logits; a pruned model equals the teacher with the cut parts
zeroed where that is exact (MLP channels, heads); shapes, manifest and bad targets; vLLM
serves a pruned model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.cli import main
from cotdistill.compress.importance import calibration_texts
from cotdistill.compress.prune import PruneConfig, Shape, run_prune, target_shape, widths
from cotdistill.errors import InputError
from tests.helpers.sft import sft_record, write_sft

DEAD_MLP = (0, 37)  # (layer, channel): its up_proj row is zero, so its activation is 0
DEAD_GROUP = (1, 1)  # (layer, KV group): its v_proj rows are zero, so heads 2 and 3 output 0
DEAD_HIDDEN = 5  # a residual channel nothing writes to
IDENTITY_LAYER = 2  # o_proj and down_proj zero: the block returns its input


@pytest.fixture(scope="module")
def gqa_teacher(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("prune") / "teacher"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(3)
    model = LlamaForCausalLM(config)
    # Larger weights than the default init, so live parts score well above zero.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.08)
        layers = model.model.layers
        layers[DEAD_MLP[0]].mlp.up_proj.weight[DEAD_MLP[1]] = 0
        group = DEAD_GROUP[1]
        layers[DEAD_GROUP[0]].self_attn.v_proj.weight[group * 32:(group + 1) * 32] = 0
        model.model.embed_tokens.weight[:, DEAD_HIDDEN] = 0
        for layer in layers:
            layer.self_attn.o_proj.weight[DEAD_HIDDEN] = 0
            layer.mlp.down_proj.weight[DEAD_HIDDEN] = 0
        layers[IDENTITY_LAYER].self_attn.o_proj.weight.zero_()
        layers[IDENTITY_LAYER].mlp.down_proj.weight.zero_()
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("calib") / "sft.jsonl"
    return write_sft(path, [sft_record(i) for i in range(12)])


def prune(teacher: Path, calibration: Path, out: Path, **targets) -> dict:
    return run_prune(PruneConfig(teacher=str(teacher), calibration=calibration, out=out,
                                 **targets))


def logits(folder: Path, ids=None):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([[5, 17, 99, 230, 11, 64, 300, 2]]) if ids is None else ids
    with torch.no_grad():
        return model, model(ids, use_cache=False).logits


# --- pure planning -----------------------------------------------------------------------------

TEACHER = Shape(layers=4, hidden=128, mlp=256, heads=4, kv_heads=2, head_dim=32, vocab=512,
                tied=False)


def test_widths_are_multiples_below_the_teacher_width() -> None:
    assert widths(256, 64) == [256, 192, 128, 64]
    assert widths(576, 128) == [576, 512, 384, 256, 128]
    assert widths(64, 64) == [64]  # nothing smaller to go to: the width stays


@pytest.mark.parametrize(
    ("targets", "field", "message"),
    [({}, "target_params", "at least one"),
     ({"mlp": 100}, "mlp", "not a multiple of 64"),
     ({"mlp": 512}, "mlp", "cannot keep 512"),
     ({"hidden": 96}, "hidden", "not a multiple"),
     ({"heads": 3}, "heads", "multiple of the 2 query heads per KV group"),
     ({"heads": 3, "head_mode": "within_groups"}, "heads", "multiple of the 2 KV groups"),
     ({"heads": 8}, "heads", "4 query heads"),
     ({"layers": 5}, "layers", "4 layers"),
     ({"target_params": 0.01}, "target_params", "below the smallest shape"),
     ({"target_params": 0.5, "mlp": 128, "hidden": 64}, "target_params", "nothing left")],
)
def test_bad_targets_are_refused(targets: dict, field: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        target_shape(PruneConfig(**targets), TEACHER)
    assert info.value.field == field


def test_hidden_width_must_divide_by_the_heads() -> None:
    nine = Shape(layers=2, hidden=576, mlp=1536, heads=9, kv_heads=3, head_dim=64, vocab=100,
                 tied=True)
    with pytest.raises(InputError, match="384 is not divisible by 9") as info:
        target_shape(PruneConfig(hidden=384), nine)
    assert info.value.field == "hidden"
    assert target_shape(PruneConfig(hidden=384, heads=6), nine).kv_heads == 2


def test_target_params_picks_the_widest_shape_within_budget() -> None:
    assert target_shape(PruneConfig(target_params=1.0), TEACHER) == TEACHER
    for fraction in (0.9, 0.6, 0.5):
        shape = target_shape(PruneConfig(target_params=fraction), TEACHER)
        assert 0.7 * fraction < shape.parameters() / TEACHER.parameters() <= fraction
        assert shape.mlp % 64 == 0 and shape.hidden % 64 == 0
        assert shape.mlp / 256 <= shape.hidden / 128  # the MLP is cut at least as deep
        assert (shape.layers, shape.heads, shape.kv_heads) == (4, 4, 2)
    fixed = target_shape(PruneConfig(target_params=0.5, hidden=128, layers=2), TEACHER)
    assert (fixed.hidden, fixed.layers) == (128, 2) and fixed.mlp < 256
    # SmolLM2-135M's shape: 9 heads leave no multiple of 64 below 576 that transformers
    # accepts (hidden % heads == 0), so half the parameters cuts one KV group (6 heads).
    smol = Shape(layers=30, hidden=576, mlp=1536, heads=9, kv_heads=3, head_dim=64,
                 vocab=49152, tied=True)
    assert smol.parameters() == 134_515_008  # what transformers counts for the model
    half = target_shape(PruneConfig(target_params=0.5), smol)
    assert (half.hidden, half.mlp, half.heads, half.kv_heads) == (384, 960, 6, 2)
    assert target_shape(PruneConfig(target_params=0.75), smol).heads == 9


def test_bad_input_is_named_before_weights_load(gqa_teacher: Path, calibration: Path,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the input was checked")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    with pytest.raises(InputError, match="needs --calibration") as info:
        prune(gqa_teacher, None, tmp_path / "a", target_params=0.5)  # type: ignore[arg-type]
    assert info.value.field == "calibration"
    with pytest.raises(InputError, match="cannot keep 6") as info:
        prune(gqa_teacher, calibration, tmp_path / "b", heads=6)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(sft_record(0)) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(InputError, match="not a trace") as info:
        prune(gqa_teacher, bad, tmp_path / "c", mlp=128)
    assert (info.value.field, info.value.line) == ("calibration", 2)
    with pytest.raises(ValueError, match="less than or equal to 1"):
        PruneConfig(target_params=1.5)


def test_calibration_reads_sft_traces_and_problems(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    path = tmp_path / "mixed.jsonl"
    rows = [sft_record(1),
            {"question": "Tom has 2 apples.", "completion": "He has 2. \\boxed{2}"},
            {"id": "p", "question": "What is 3 + 4?", "answer": "7"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    texts = calibration_texts(path, tokenizer)
    assert len(texts) == 3
    assert "<|im_start|>assistant\n2 + 3 = 5" in texts[0]  # the chat template applied
    assert "\\boxed{2}" in texts[1] and texts[2] == "What is 3 + 4?\n7"


# --- importance --------------------------------------------------------------------------------


def test_importance_ranks_planted_dead_parts_last(gqa_teacher: Path, calibration: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotdistill.compress.importance import measure_importance, token_sequences

    tokenizer = AutoTokenizer.from_pretrained(gqa_teacher)
    model = AutoModelForCausalLM.from_pretrained(gqa_teacher).eval()
    sequences = token_sequences(calibration_texts(calibration, tokenizer), tokenizer, 300, 64)
    assert sum(map(len, sequences)) == 300
    scores = measure_importance(model, sequences)
    assert scores.tokens == 300
    layer, channel = DEAD_MLP
    assert int(scores.mlp[layer].argmin()) == channel and scores.mlp[layer][channel] == 0
    assert scores.mlp[layer].sort().values[1] > 0
    layer, group = DEAD_GROUP
    heads = scores.heads[layer]
    assert set(heads.argsort()[:2].tolist()) == {2 * group, 2 * group + 1}
    assert heads[2 * group] == 0 and heads[:2].min() > 0
    assert int(scores.hidden.argmin()) == DEAD_HIDDEN and scores.hidden.sort().values[1] > 0
    assert min(range(4), key=scores.blocks.__getitem__) == IDENTITY_LAYER
    assert scores.blocks[IDENTITY_LAYER] < 1e-6 < min(
        b for i, b in enumerate(scores.blocks) if i != IDENTITY_LAYER)


# --- pruning -----------------------------------------------------------------------------------


def test_pruning_nothing_reproduces_the_teacher_exactly(gqa_teacher: Path, calibration: Path,
                                                        tmp_path: Path) -> None:
    import torch

    out = tmp_path / "same"
    assert main(["student", "prune", "--teacher", str(gqa_teacher), "--out", str(out),
                 "--calibration", str(calibration), "--target-params", "1.0"]) == 0
    _, expected = logits(gqa_teacher)
    _, got = logits(out)
    assert torch.equal(got, expected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["parameter_fraction"] == 1.0
    cut = manifest["cut"]
    assert cut["removed_layers"] == [] and cut["removed_hidden_channels"] == []


def zeroed_teacher(teacher: Path, manifest: dict):
    """The teacher with every cut MLP channel and head silenced (its output columns zeroed)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(teacher).eval()
    with torch.no_grad():
        for cut in manifest["cut"]["per_layer"]:
            layer = model.model.layers[cut["teacher_layer"]]
            layer.mlp.down_proj.weight[:, cut["removed_mlp_channels"]] = 0
            for head in cut["removed_heads"]:
                layer.self_attn.o_proj.weight[:, head * 32:(head + 1) * 32] = 0
    return model


@pytest.mark.parametrize("head_mode", ["kv_groups", "within_groups"])
def test_cut_mlp_and_heads_equal_the_teacher_with_them_silenced(
    gqa_teacher: Path, calibration: Path, tmp_path: Path, head_mode: str
) -> None:
    import torch

    out = tmp_path / head_mode
    manifest = prune(gqa_teacher, calibration, out, mlp=192, heads=2, head_mode=head_mode)
    model, got = logits(out)
    config = model.config
    assert (config.intermediate_size, config.num_attention_heads, config.head_dim) == (192, 2, 32)
    for cut in manifest["cut"]["per_layer"]:
        assert len(cut["removed_mlp_channels"]) == 64 and len(cut["removed_heads"]) == 2
        if cut["teacher_layer"] == DEAD_MLP[0]:
            assert DEAD_MLP[1] in cut["removed_mlp_channels"]
        removed = cut["removed_heads"]
        if head_mode == "kv_groups":  # a whole group goes, with its KV head
            assert removed in ([0, 1], [2, 3]) and len(cut["removed_kv_heads"]) == 1
            if cut["teacher_layer"] == DEAD_GROUP[0]:
                assert cut["removed_kv_heads"] == [DEAD_GROUP[1]]
        else:  # one query head from each group; both KV heads stay
            assert sorted(h // 2 for h in removed) == [0, 1] and cut["removed_kv_heads"] == []
    assert config.num_key_value_heads == (1 if head_mode == "kv_groups" else 2)
    with torch.no_grad():
        expected = zeroed_teacher(gqa_teacher, manifest)(
            torch.tensor([[5, 17, 99, 230, 11, 64, 300, 2]]), use_cache=False).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_every_dimension_pruned_loads_and_generates(gqa_teacher: Path, calibration: Path,
                                                    tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "small"
    manifest = prune(gqa_teacher, calibration, out, mlp=128, hidden=64, heads=2, layers=2)
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in ("intermediate_size", "hidden_size", "num_attention_heads",
                                   "num_key_value_heads", "num_hidden_layers", "head_dim")} == {
        "intermediate_size": 128, "hidden_size": 64, "num_attention_heads": 2,
        "num_key_value_heads": 1, "num_hidden_layers": 2, "head_dim": 32}
    cut = manifest["cut"]
    assert IDENTITY_LAYER in cut["removed_layers"] and len(cut["kept_layers"]) == 2
    assert DEAD_HIDDEN in cut["removed_hidden_channels"]
    assert len(cut["removed_hidden_channels"]) == 64
    assert manifest["inputs"][str(calibration)] and manifest["counts"]["calibration_tokens"] > 0

    model = AutoModelForCausalLM.from_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    assert params == manifest["counts"]["parameters"] == Shape.of(model.config).parameters()
    assert model.model.layers[0].self_attn.q_proj.weight.shape == (64, 64)
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                     add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_target_params_half(gqa_teacher: Path, calibration: Path, tmp_path: Path) -> None:
    manifest = prune(gqa_teacher, calibration, tmp_path / "half", target_params=0.5)
    assert manifest["counts"]["parameters"] <= 0.5 * manifest["counts"]["teacher_parameters"]
    assert manifest["shape"]["mlp"] % 64 == 0 and manifest["shape"]["hidden"] % 64 == 0


# --- the real engine ---------------------------------------------------------------------------


@pytest.mark.vllm
def test_vllm_serves_a_pruned_model(gqa_teacher: Path, calibration: Path,
                                    tmp_path: Path) -> None:
    """Pruned to tests/helpers/tiny.py's sizes (hidden 64, 2 heads of 32, 1 KV head, MLP 128),
    then quantised to w4a16: both folders are served (the pruned widths, multiples of 64, keep
    the quantiser's groups whole)."""
    from cotdistill.backends.sizing import Workload
    from cotdistill.backends.vllm_backend import VLLMBackend
    from cotdistill.compress.quantize import QuantizeConfig, run_quantize
    from cotdistill.config import EngineConfig, SamplingConfig
    from cotdistill.records import Message

    out = tmp_path / "served"
    prune(gqa_teacher, calibration, out, mlp=128, hidden=64, heads=2, layers=2)
    run_quantize(QuantizeConfig(model=str(out), scheme="w4a16", out=tmp_path / "w4a16"))
    for folder, quantization in ((out, None), (tmp_path / "w4a16", "compressed-tensors")):
        backend = VLLMBackend(str(folder), EngineConfig(), Workload.of(1, 1, 8))
        try:
            model_config = backend.llm.llm_engine.vllm_config.model_config
            served = model_config.hf_config
            assert (served.hidden_size, served.num_hidden_layers,
                    served.num_key_value_heads) == (64, 2, 1)
            assert model_config.quantization == quantization
            [[completion]] = backend.generate(
                [[Message(role="user", content="What is 2 + 3?")]],
                SamplingConfig(temperature=0.0, max_tokens=8))
        finally:
            backend.close()
        assert completion.num_tokens > 0
