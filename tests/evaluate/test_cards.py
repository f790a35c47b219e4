"""evaluate adds its measured rows to a trained student's card, never to other folders, and a
card that changed does not make the next evaluation sample the student again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.cards import CARD, add_model_index, read_card, write_card
from cotdistill.evaluate.config import EvaluateConfig
from cotdistill.evaluate.sources import folder_hash
from cotdistill.evaluate.stage import run_evaluate

QUESTIONS = {"p1": ("What is 2 + 3?", "5"), "p2": ("What is 3 + 4?", "7"),
             "p3": ("What is 4 + 5?", "9")}
ANSWERS = {  # problem -> the two samples' final numbers
    "teacher": {"p1": ["5", "5"], "p2": ["7", "1"], "p3": ["2", "3"]},
    "student": {"p1": ["5", "4"], "p2": ["1", "1"], "p3": ["9", "8"]},
}


def factory_counting(built: list[str]):
    by_question = {q: pid for pid, (q, _) in QUESTIONS.items()}

    def factory(path: str) -> FakeBackend:
        built.append(path)

        def respond(question: str, index: int) -> str:
            problem = by_question[question.rsplit("] ", 1)[-1]]
            return f"Adding up gives \\boxed{{{ANSWERS[path][problem][index]}}}"

        return FakeBackend(path, responder=respond, logprob=-0.5)

    return factory


@pytest.fixture
def folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A teacher folder and a student folder that `cotdistill train` made (manifest + card)."""
    monkeypatch.chdir(tmp_path)
    for name in ("teacher", "student"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_text(f"{name} weights")
    (tmp_path / "student" / "manifest.json").write_text(json.dumps({"stage": "train"}))
    write_card(tmp_path / "student" / CARD, {"base_model": "teacher", "tags": ["cotdistill"]},
               "# Distilled student\n\n## Method\n\nSFT.")
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": p, "question": q, "answer": a}) + "\n"
                                for p, (q, a) in QUESTIONS.items()))
    return tmp_path


def test_measured_rows_go_to_the_student_card_only(folders: Path) -> None:
    config = EvaluateConfig(problems=folders / "problems.jsonl", out=folders / "eval",
                            model=["teacher=teacher", "student=student"], n=2, temperature=0.7,
                            prompt_template="plain", bootstrap_resamples=100)
    before = folder_hash(folders / "student")
    run_evaluate(config, factory_counting([]))

    meta, body = read_card(folders / "student" / CARD)
    assert meta["base_model"] == "teacher" and "## Method" in body  # train's card kept
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    assert result["dataset"]["name"] == str(folders / "problems.jsonl")
    values = {m["type"]: m["value"] for m in result["metrics"]}
    summary = json.loads((folders / "eval" / "summary.json").read_text())
    student = summary["models"]["student"]
    assert values["accuracy"] == round(student["accuracy"], 4) == round(1 / 3, 4)
    assert values["maj"] == round(student["maj@2"], 4)
    assert values["pass"] == round(student["pass@2"], 4)
    assert values["retention"] == round(summary["retention"]["student"]["value"], 4)
    assert "## Evaluation (cotdistill evaluate)" in body
    assert not (folders / "teacher" / CARD).exists()  # not a folder train made
    assert folder_hash(folders / "student") == before  # the card is not the model

    # The card changed; the weights did not: the second evaluation reuses the samples, and
    # replaces (does not repeat) the rows for the same problems.
    built: list[str] = []
    run_evaluate(config.model_copy(update={"bootstrap_resamples": 200}), factory_counting(built))
    assert built == []
    meta, body = read_card(folders / "student" / CARD)
    assert len(meta["model-index"][0]["results"]) == 1
    assert body.count("## Evaluation (cotdistill evaluate)") == 1


def test_rows_need_a_folder_that_train_made(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    assert not add_model_index(tmp_path / "model", "x", {"name": "p", "type": "p"},
                               [{"type": "accuracy", "name": "accuracy", "value": 0.5}])
    assert not (tmp_path / "model" / CARD).exists()
    (tmp_path / "manifest.json").write_text(json.dumps({"stage": "train"}))
    (tmp_path / "merged").mkdir()  # a LoRA run's merged folder: its parent's manifest says
    assert add_model_index(tmp_path / "merged", "x", {"name": "p", "type": "p"},
                           [{"type": "accuracy", "name": "accuracy", "value": 0.5}])
    assert read_card(tmp_path / "merged" / CARD)[0]["model-index"][0]["name"] == "x"


def test_every_reuse_hash_skips_the_card(tmp_path: Path) -> None:
    """evaluate's cache, `run`'s stamps and train's resume stamp hash the model, not its card."""
    from cotdistill.run.steps import content_hash
    from cotdistill.train.checkpoints import model_fingerprint

    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "weights.bin").write_text("w")
    write_card(folder / CARD, {"tags": ["cotdistill"]}, "first")
    hashes = (folder_hash(folder), content_hash(folder), model_fingerprint(str(folder)))
    write_card(folder / CARD, {"tags": ["cotdistill"], "model-index": []}, "second")
    assert (folder_hash(folder), content_hash(folder), model_fingerprint(str(folder))) == hashes
    (folder / "weights.bin").write_text("w2")  # the weights are the model
    assert folder_hash(folder) != hashes[0] and content_hash(folder) != hashes[1]
    assert model_fingerprint(str(folder)) != hashes[2]
