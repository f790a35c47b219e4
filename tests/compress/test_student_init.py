"""`student init`: a shallower student cut from the teacher's own weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.cli import main
from cotdistill.compress.student_init import (
    StudentInitConfig,
    chosen_layers,
    cut_state_dict,
    run_student_init,
)
from cotdistill.errors import InputError


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0,2,4", [0, 2, 4]), (["0", "2", "4"], [0, 2, 4]), (["0,2", "5"], [0, 2, 5]),
     ([1, 3], [1, 3])],
)
def test_layers_accept_comma_and_space_forms(value, expected: list[int]) -> None:
    assert StudentInitConfig(layers=value).layers == expected


def test_layer_choice_errors() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        StudentInitConfig(layers="2,1")
    with pytest.raises(InputError, match="exactly one"):
        chosen_layers(StudentInitConfig(layers="0", keep_every=2), 4)
    with pytest.raises(InputError, match="exactly one"):
        chosen_layers(StudentInitConfig(), 4)
    with pytest.raises(InputError, match="layer 4 does not exist"):
        chosen_layers(StudentInitConfig(layers="0,4"), 4)
    assert chosen_layers(StudentInitConfig(keep_every=3), 7) == [0, 3, 6]


def test_cut_state_dict_renumbers_kept_layers() -> None:
    state = {"emb": 0, "m.layers.0.w": 10, "m.layers.1.w": 11, "m.layers.2.w": 12,
             "m.layers.10.w": 20, "head": 1}
    assert cut_state_dict(state, "m.layers.", [1, 10]) == {
        "emb": 0, "m.layers.0.w": 11, "m.layers.1.w": 20, "head": 1}


def test_student_keeps_chosen_layers_bit_for_bit_and_generates(
    tiny_teacher: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    # The generated flags, with the comma form of --layers.
    assert main(["student", "init", "--teacher", str(tiny_teacher), "--out", str(out),
                 "--layers", "1,3"]) == 0
    teacher = AutoModelForCausalLM.from_pretrained(tiny_teacher).state_dict()
    student_model = AutoModelForCausalLM.from_pretrained(out)
    student = student_model.state_dict()
    assert student_model.config.num_hidden_layers == 2
    for new, old in enumerate([1, 3]):
        prefix_new, prefix_old = f"model.layers.{new}.", f"model.layers.{old}."
        names = [k[len(prefix_old):] for k in teacher if k.startswith(prefix_old)]
        assert names
        for name in names:
            assert torch.equal(student[prefix_new + name], teacher[prefix_old + name])
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(student[name], teacher[name])
    assert not any(k.startswith("model.layers.2.") for k in student)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kept_layers"] == [1, 3] and manifest["counts"]["teacher_layers"] == 4

    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                     add_generation_prompt=True, return_tensors="pt",
                                     return_dict=True)
    generated = student_model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    # The cut model computes the same as running the teacher's layers 1 and 3 by hand.
    with torch.no_grad():
        ids = prompt["input_ids"]
        full = AutoModelForCausalLM.from_pretrained(tiny_teacher)
        full.model.layers = torch.nn.ModuleList([full.model.layers[i] for i in (1, 3)])
        for j, layer in enumerate(full.model.layers):
            layer.self_attn.layer_idx = j
        full.config.num_hidden_layers = 2
        expected = full(ids, use_cache=False).logits
        assert torch.allclose(student_model(ids, use_cache=False).logits, expected, atol=1e-5)


def test_keep_every_and_bad_teacher(tiny_teacher: Path, tmp_path: Path) -> None:
    manifest = run_student_init(StudentInitConfig(teacher=str(tiny_teacher), out=tmp_path / "s",
                                                  keep_every=2))
    assert manifest["kept_layers"] == [0, 2]
    with pytest.raises(InputError) as info:
        run_student_init(StudentInitConfig(teacher=str(tmp_path / "missing"),
                                           out=tmp_path / "x", keep_every=2))
    assert info.value.field == "teacher"
