"""One engine per architecture in evaluate (cotdistill/evaluate/engines.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.evaluate import EvaluateConfig, run_evaluate
from cotdistill.evaluate.engines import Engines, architecture_key, engine_order
from tests.helpers.problems import write_problems
from tests.helpers.tiny import build_tiny_model

ROWS = [{"id": "a", "question": "Sam has 3 apples and gets 4 more.", "answer": "7"},
        {"id": "b", "question": "What is 6 + 2?", "answer": "8"},
        {"id": "c", "question": "Lena has 9 coins and loses 5.", "answer": "4"}]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> dict[str, Path]:
    """a, b: one architecture and tokenizer, other weights; deep: one more layer."""
    root = tmp_path_factory.mktemp("family")
    return {
        "a": tiny_model,
        "b": build_tiny_model(root / "b", layers=2, seed=7, tokenizer_from=tiny_model),
        "deep": build_tiny_model(root / "deep", layers=3, seed=3, tokenizer_from=tiny_model),
    }


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_architecture_key_is_shared_by_weights_alone(family: dict[str, Path],
                                                     tmp_path: Path) -> None:
    assert architecture_key(str(family["a"])) == architecture_key(str(family["b"]))
    assert architecture_key(str(family["a"])) != architecture_key(str(family["deep"]))
    renamed = shutil.copytree(family["b"], tmp_path / "renamed")
    edit_config(renamed, _name_or_path="somewhere/else", transformers_version="0.0.1",
                use_cache=False)  # as TRL saves a trained student
    assert architecture_key(str(renamed)) == architecture_key(str(family["a"]))


def test_architecture_key_separates_tokenizer_dtype_and_quantised_models(
    family: dict[str, Path], tmp_path: Path
) -> None:
    other_template = shutil.copytree(family["b"], tmp_path / "template")
    tokenizer_config = json.loads((other_template / "tokenizer_config.json").read_text())
    tokenizer_config["chat_template"] = "{{ messages[0]['content'] }}"
    (other_template / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert architecture_key(str(other_template)) != architecture_key(str(family["a"]))

    half = shutil.copytree(family["b"], tmp_path / "half")
    edit_config(half, torch_dtype="bfloat16", dtype="bfloat16")
    # An engine of a fixed dtype casts every model to it; under "auto" it takes the first's.
    assert architecture_key(str(half), "bfloat16") == architecture_key(str(family["a"]),
                                                                          "bfloat16")
    assert architecture_key(str(half)) != architecture_key(str(family["a"]))

    quantised = shutil.copytree(family["b"], tmp_path / "quantised")
    edit_config(quantised, quantization_config={"quant_method": "compressed-tensors"})
    assert architecture_key(str(quantised)) is None
    assert architecture_key("HuggingFaceTB/SmolLM2-135M-Instruct") is None


def test_engine_order_groups_by_key_where_the_group_first_stood() -> None:
    items = ["teacher", "cut", "self", "alone", "control"]
    keys = ["A", "B", "A", None, "A"]
    assert engine_order(items, keys) == ["teacher", "self", "control", "cut", "alone"]


class Reloading(FakeBackend):
    def __init__(self, model: str, events: list[str]) -> None:
        super().__init__(model)
        self.events = events
        events.append(f"start {Path(model).name}")

    def load_weights(self, model: str) -> None:
        self.events.append(f"reload {Path(model).name}")
        self.model = model

    def close(self) -> None:
        self.events.append(f"close {Path(self.model).name}")


def test_engines_reload_within_an_architecture_and_restart_across(
    family: dict[str, Path]
) -> None:
    events: list[str] = []
    engines = Engines(lambda path: Reloading(path, events), architecture_key)
    for name in ("a", "b", "deep", "a"):
        engines.open(str(family[name]))
    engines.close()
    assert events == ["start model", "reload b", "close b", "start deep", "close deep",
                      "start model", "close model"]
    assert (engines.starts, engines.reloads) == (3, 1)

    events.clear()
    fresh = Engines(lambda path: Reloading(path, events), architecture_key, share=False)
    for name in ("a", "b"):
        fresh.open(str(family[name]))
    fresh.close()
    assert events == ["start model", "close model", "start b", "close b"]


def test_evaluate_runs_each_architecture_on_one_engine_and_reports_it_in_given_order(
    tmp_path: Path, family: dict[str, Path]
) -> None:
    events: list[str] = []
    config = EvaluateConfig(
        problems=write_problems(tmp_path / "p.jsonl", ROWS), out=tmp_path / "eval",
        model=[f"teacher={family['a']}", f"deep={family['deep']}", f"student={family['b']}"],
        max_tokens=16, bootstrap_resamples=20, latency_prompts=0,
    )
    manifest = run_evaluate(config, backend_factory=lambda path: Reloading(path, events))
    assert events == ["start model", "reload b", "close b", "start deep", "close deep"]
    assert manifest["counts"]["engine_starts"] == 2
    assert manifest["counts"]["weight_reloads"] == 1
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert list(summary["models"]) == ["teacher", "deep", "student"]
    assert summary["models"]["student"]["engine"] == "reloaded"
    assert summary["engines"] == {"started": 2, "reloaded": 1}
    assert "Engines: 2 started, weights reloaded in place for 1 more model" in (
        tmp_path / "eval" / "report.md").read_text()


@pytest.mark.vllm
def test_each_model_on_a_shared_engine_answers_as_on_a_fresh_engine(
    tmp_path: Path, family: dict[str, Path]
) -> None:
    """a and b share one engine (b's weights reloaded into a's), deep has its own; b's greedy
    completions equal those of an engine started for b alone (a and deep started fresh)."""
    problems = write_problems(tmp_path / "p.jsonl", ROWS)

    def completions(models: list[str], share: bool) -> tuple[dict[tuple[str, str], str], dict]:
        out = tmp_path / ("shared" if share else "fresh")
        config = EvaluateConfig(problems=problems, out=out, model=models,
                                reference=models[0].split("=")[0], prompt_template="plain",
                                temperature=0.0, max_tokens=24, dtype="float32",
                                bootstrap_resamples=20, latency_prompts=2, share_engine=share)
        manifest = run_evaluate(config)
        rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
        return {(r["model"], r["problem_id"]): r["completion"] for r in rows}, manifest

    shared, manifest = completions(
        [f"a={family['a']}", f"deep={family['deep']}", f"b={family['b']}"], share=True)
    assert manifest["counts"]["engine_starts"] == 2
    assert manifest["counts"]["weight_reloads"] == 1
    fresh, _ = completions([f"b={family['b']}"], share=False)
    for row in ROWS:
        assert shared[("b", row["id"])] == fresh[("b", row["id"])]
    # The models do differ, so equality is not an engine that kept a's weights.
    assert any(shared[("a", r["id"])] != shared[("b", r["id"])] for r in ROWS)
