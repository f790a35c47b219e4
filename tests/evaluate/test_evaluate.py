"""Evaluation: metric functions on hand-computed tables, the stage on a fake backend with
hand-made answers, input errors before any model loads, and a LoRA student through vLLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cotdistill.answers.equivalence import answer_key
from cotdistill.backends.fake import FakeBackend
from cotdistill.errors import InputError
from cotdistill.evaluate.config import EvaluateConfig
from cotdistill.evaluate.measures.metrics import (
    bootstrap_mean,
    bootstrap_ratio,
    expected_calibration_error,
    majority_correct,
    pass_at_k,
)
from cotdistill.evaluate.sources import locate_models, parameter_count, parse_model_specs
from cotdistill.evaluate.stage import run_evaluate
from tests.helpers.problems import write_problems

# --- metric functions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 1, 4, 1.0),
        (4, 0, 4, 0.0),
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    ],
)
def test_pass_at_k(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("answers", "correct", "expected"),
    [
        (["7", "7", "8"], [True, True, False], True),
        (["8", "7", "7"], [False, True, True], True),
        (["8", "8", "7"], [False, False, True], False),
        (["8", "7"], [False, True], False),  # tie: the answer seen first wins
        (["7", "8"], [True, False], True),
        ([None, None, "7"], [False, False, True], True),  # no answer, no vote
        ([None, None], [False, False], False),
        (["3", "3.0", "4"], [True, True, False], True),  # one vote under answer_key
        (["4", "3", "3.0"], [False, True, True], True),
    ],
)
def test_majority_correct(answers: list, correct: list, expected: bool) -> None:
    assert majority_correct(answers, correct, answer_key) is expected


def test_ece_hand_computed() -> None:
    confidences = [0.95, 0.85, 0.15, 0.05]
    correct = [True, False, False, False]
    # Ten bins, one sample each: (0.05 + 0.85 + 0.15 + 0.05) / 4.
    assert expected_calibration_error(confidences, correct, 10) == pytest.approx(0.275)
    # Two bins: upper has confidence 0.9 and accuracy 0.5, lower 0.1 and 0.
    assert expected_calibration_error(confidences, correct, 2) == pytest.approx(0.25)
    assert expected_calibration_error([1.0, 1.0], [True, True], 10) == pytest.approx(0.0)
    assert expected_calibration_error([], [], 10) is None


def test_bootstrap_is_paired_and_seeded() -> None:
    scores = [1.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0, 0.0]
    same = bootstrap_ratio(scores, scores, resamples=500, seed=3)
    # Paired resampling: a student identical to its teacher retains exactly 1 in every draw.
    assert (same.value, same.low, same.high) == (1.0, 1.0, 1.0)
    half = bootstrap_ratio([s / 2 for s in scores], scores, resamples=500, seed=3)
    assert half.value == pytest.approx(0.5)
    assert half.low == pytest.approx(0.5) and half.high == pytest.approx(0.5)
    first = bootstrap_mean(scores, resamples=500, seed=3)
    again = bootstrap_mean(scores, resamples=500, seed=3)
    other = bootstrap_mean(scores, resamples=500, seed=4)
    assert first == again and first != other
    assert first.value == pytest.approx(4.5 / 8)
    assert first.low < first.value < first.high


def test_bootstrap_ratio_counts_undefined_resamples() -> None:
    interval = bootstrap_ratio([1.0, 0.0], [0.0, 1.0], resamples=400, seed=0)
    assert interval.value == 1.0
    # A draw of problem 0 twice has a teacher mean of 0: no ratio, counted, not hidden.
    assert 0 < interval.undefined < 400
    nothing = bootstrap_ratio([1.0], [0.0], resamples=10, seed=0)
    assert nothing.value is None and nothing.undefined == 10


# --- the stage on a fake backend ---------------------------------------------------------------

QUESTIONS = {"p1": ("What is 2 + 3?", "5"), "p2": ("What is 3 + 4?", "7"),
             "p3": ("What is 4 + 5?", "9")}
# Hand-made answers per model: problem -> the two samples' final numbers.
ANSWERS = {
    "teacher": {"p1": ["5", "5"], "p2": ["7", "1"], "p3": ["2", "3"]},
    "student": {"p1": ["5", "4"], "p2": ["1", "1"], "p3": ["9", "8"]},
}


@pytest.fixture
def problems_file(tmp_path: Path) -> Path:
    rows = [{"id": pid, "question": q, "answer": a} for pid, (q, a) in QUESTIONS.items()]
    return write_problems(tmp_path / "problems.jsonl", rows)


def fake_factory(logprobs: dict[str, float], built: list[str]):
    by_question = {q: pid for pid, (q, _) in QUESTIONS.items()}

    def factory(path: str) -> FakeBackend:
        built.append(path)
        answers = ANSWERS[path]

        def respond(question: str, index: int) -> str:
            # Latency prompts open with a tag ("[ref abc] What is ..."): the same problem.
            problem = by_question[question.rsplit("] ", 1)[-1]]
            return f"Adding up gives \\boxed{{{answers[problem][index]}}}"

        return FakeBackend(path, responder=respond, logprob=logprobs[path])

    return factory


def test_contrasts_add_paired_rows_and_a_wrong_name_is_refused_before_any_model_loads(
    tmp_path: Path, problems_file: Path
) -> None:
    specs = ["teacher=teacher", "student=student", "other=student"]
    built: list[str] = []
    bad = EvaluateConfig(problems=problems_file, out=tmp_path / "bad", model=specs,
                         contrasts=["student:nobody"], prompt_template="plain")
    with pytest.raises(InputError, match="contrast 'student:nobody'"):
        run_evaluate(bad, fake_factory({"teacher": -0.1, "student": -1.0}, built))
    assert built == []
    config = EvaluateConfig(problems=problems_file, out=tmp_path / "eval", model=specs[:2],
                            contrasts=["teacher:student"], prompt_template="plain",
                            bootstrap_resamples=50, latency_prompts=0)
    run_evaluate(config, fake_factory({"teacher": -0.1, "student": -1.0}, built))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert [(d["model"], d["versus"]) for d in summary["differences"]] == [
        ("student", "teacher"), ("teacher", "student")]
    first, second = summary["differences"]
    assert first["value"] == pytest.approx(-second["value"])
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Paired differences" in report and "| teacher | student | +" in report


def test_evaluate_hand_made_case(tmp_path: Path, problems_file: Path) -> None:
    out = tmp_path / "eval"
    config = EvaluateConfig(
        problems=problems_file, out=out, model=["teacher=teacher", "student=student"],
        n=2, temperature=0.7, bootstrap_resamples=200, calibration_bins=10,
        prompt_template="plain",
    )
    built: list[str] = []
    manifest = run_evaluate(config, fake_factory({"teacher": -0.1, "student": -1.0}, built))
    assert built == ["teacher", "student"]

    summary = json.loads((out / "summary.json").read_text())
    teacher, student = summary["models"]["teacher"], summary["models"]["student"]
    # teacher per problem: 2/2, 1/2, 0/2; student: 1/2, 0/2, 1/2.
    assert teacher["accuracy"] == pytest.approx(0.5)
    assert student["accuracy"] == pytest.approx(1 / 3)
    # maj@2: ties go to the first sample -> teacher right on p1, p2; student on p1, p3.
    assert teacher["maj@2"] == pytest.approx(2 / 3)
    assert student["maj@2"] == pytest.approx(2 / 3)
    assert teacher["pass@2"] == pytest.approx(2 / 3)
    assert student["pass@2"] == pytest.approx(2 / 3)
    # One confidence per model (constant logprob): ECE = |accuracy - exp(logprob)|.
    assert teacher["ece"] == pytest.approx(abs(0.5 - math.exp(-0.1)))
    assert student["ece"] == pytest.approx(abs(1 / 3 - math.exp(-1.0)))
    assert teacher["calibration_samples"] == 6
    assert teacher["verdicts"] == {"correct": 3, "wrong": 3}
    assert teacher["truncated_share"] == 0.0
    assert teacher["mean_reasoning_tokens"] == pytest.approx(4.0)

    kept = summary["retention"]["student"]
    assert kept["reference"] == "teacher"
    assert kept["value"] == pytest.approx((1 / 3) / 0.5)
    assert kept["low"] <= kept["value"] <= kept["high"]
    assert "teacher" not in summary["retention"]

    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 3 * 2
    row = next(r for r in lines if r["model"] == "student" and r["problem_id"] == "p3")
    assert (row["predicted_answer"], row["verdict"], row["correct"]) == ("9", "correct", True)

    report = (out / "report.md").read_text()
    assert "| student |" in report and "0.667 [" in report  # the retention column
    for png in ("accuracy.png", "reliability.png", "lengths.png"):
        assert (out / png).stat().st_size > 1000
    assert manifest["counts"] == {"problems": 3, "models": 2, "samples": 12,
                                  "engine_starts": 2, "weight_reloads": 0}
    assert json.loads((out / "manifest.json").read_text())["stage"] == "evaluate"


def model_folders(root: Path, names: list[str], weights: str = "w") -> None:
    """Local model folders named like the fake's models: their files identify their weights."""
    for name in names:
        (root / name).mkdir(exist_ok=True)
        (root / name / "weights.bin").write_text(f"{name} {weights}")


def test_models_scored_before_are_reused(
    tmp_path: Path, problems_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reuse needs weights that something identifies: here folders, found from the working dir.
    monkeypatch.chdir(tmp_path)
    model_folders(tmp_path, ["teacher", "student"])
    config = EvaluateConfig(
        problems=problems_file, out=tmp_path / "eval", model=["teacher=teacher", "student=student"],
        n=2, prompt_template="plain", bootstrap_resamples=100,
    )
    logprobs = {"teacher": -0.1, "student": -1.0}
    run_evaluate(config, fake_factory(logprobs, []))
    first = json.loads((tmp_path / "eval" / "summary.json").read_text())

    # Interval settings do not change any sample: nothing is generated again.
    built: list[str] = []
    run_evaluate(config.model_copy(update={"bootstrap_resamples": 200}),
                 fake_factory(logprobs, built))
    assert built == []
    again = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert again["models"]["student"]["accuracy"] == first["models"]["student"]["accuracy"]
    assert again["models"]["student"]["cached"] is True
    assert "come from an earlier run" in (tmp_path / "eval" / "report.md").read_text()

    # Sampling settings do: both models run again.
    run_evaluate(config.model_copy(update={"temperature": 0.5}), fake_factory(logprobs, built))
    assert built == ["teacher", "student"]


def test_truncated_outputs_are_counted(tmp_path: Path, problems_file: Path) -> None:
    config = EvaluateConfig(
        problems=problems_file, out=tmp_path / "eval", model=["teacher=x"], n=1, max_tokens=3,
        bootstrap_resamples=50,
    )
    manifest = run_evaluate(config, lambda path: FakeBackend(path))
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    # The fake's default answer has more than three words: every sample hits the limit.
    assert summary["models"]["teacher"]["truncated_share"] == 1.0
    assert summary["retention"] == {}
    assert manifest["counts"]["samples"] == 3


def never_called(path: str) -> FakeBackend:
    raise AssertionError("a model was loaded before the input was checked")


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["teacher"], "NAME=MODEL"),
        (["a=x", "a=y"], "given twice"),
        (["bad name=x"], "letters, digits"),
        ([], "at least one"),
    ],
)
def test_bad_model_specs(specs: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        parse_model_specs(specs)
    assert info.value.field == "model"


def test_missing_gold_fails_before_loading(tmp_path: Path) -> None:
    problems = write_problems(
        tmp_path / "p.jsonl",
        [{"id": "a", "question": "1+1?", "answer": "2"}, {"id": "b", "question": "2+2?"}],
    )
    config = EvaluateConfig(problems=problems, out=tmp_path / "o", model=["teacher=x"])
    with pytest.raises(InputError) as info:
        run_evaluate(config, never_called)
    assert (info.value.file, info.value.line, info.value.field) == (str(problems), 2, "answer")


def test_adapter_with_missing_base_fails_before_loading(tmp_path: Path, problems_file: Path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(tmp_path / "gone")})
    )
    config = EvaluateConfig(
        problems=problems_file, out=tmp_path / "o", model=[f"student={adapter}"]
    )
    with pytest.raises(InputError, match="does not exist") as info:
        run_evaluate(config, never_called)
    assert info.value.field == "base_model_name_or_path"


def test_parameter_count_reads_safetensors_headers(tiny_model: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert parameter_count(tiny_model) == sum(p.numel() for p in model.parameters())


# --- a LoRA student through the real path (merge + vLLM) ---------------------------------------


def make_adapter(base: Path, out: Path) -> Path:
    """A LoRA adapter whose weights are large enough to change the tiny model's greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # peft initialises B to zero (a no-op adapter)
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(out)
    return out


def greedy_with_adapter(base: Path, adapter: Path, question: str, max_tokens: int) -> str:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )["input_ids"]
    output = model.generate(ids, max_new_tokens=max_tokens, do_sample=False)
    return tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.vllm
def test_lora_student_is_evaluated_with_its_adapter(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COTDISTILL_CACHE", str(tmp_path / "cache"))
    adapter = make_adapter(tiny_model, tmp_path / "adapter")
    rows = [{"id": "a", "question": "Sam has 3 apples and gets 4 more.", "answer": "7"},
            {"id": "b", "question": "What is 6 + 2?", "answer": "8"}]
    problems = write_problems(tmp_path / "p.jsonl", rows)
    config = EvaluateConfig(
        problems=problems, out=tmp_path / "eval", model=[f"base={tiny_model}",
                                                         f"student={adapter}"],
        prompt_template="plain", n=1, temperature=0.0, max_tokens=12, dtype="float32",
        reference="base", bootstrap_resamples=20,
    )
    (source,) = locate_models({"student": str(adapter)})
    assert source.adapter == adapter
    run_evaluate(config)

    lines = [json.loads(x) for x in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    text = {(r["model"], r["problem_id"]): r["completion"] for r in lines}
    for row in rows:
        # vLLM holds back an incomplete UTF-8 byte sequence at the end; HF decodes it as U+FFFD.
        expected = greedy_with_adapter(tiny_model, adapter, row["question"], 12).rstrip("\ufffd")
        assert text[("student", row["id"])] == expected
        assert text[("base", row["id"])] != expected
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    student = summary["models"]["student"]
    assert student["adapter"]["path"] == str(adapter)
    assert Path(student["served_path"]).parent == tmp_path / "cache" / "merged"
    assert student["parameters"] == summary["models"]["base"]["parameters"]
    assert student["peak_memory_mb"] > 0 and student["output_tokens_per_s"] > 0


# --- issue 19: truncation and unscored verdicts -------------------------------------------------


def test_truncated_output_has_no_answer_unless_it_closed_a_marker_before_the_cut(
    tmp_path: Path
) -> None:
    from cotdistill.evaluate.score import completion_truncated

    problems = write_problems(tmp_path / "p.jsonl", [
        {"id": "cut", "question": "What is 6 * 7?", "answer": "42"},
        {"id": "boxed", "question": "What is 3 + 4?", "answer": "7"},
        {"id": "whole", "question": "What is 1 + 1?", "answer": "2"},
    ])
    replies = {
        # Cut mid-thought: its last number (42) is where the cut fell, not an answer.
        "What is 6 * 7?": "6*7 = 42 hmm, but maybe I should check the product again",
        # Cut after a closed box: that answer stands.
        "What is 3 + 4?": "\\boxed{7} and now let me verify this once more in detail",
        "What is 1 + 1?": "it is 2",
    }
    config = EvaluateConfig(problems=problems, out=tmp_path / "eval", model=["teacher=x"], n=1,
                            max_tokens=5, bootstrap_resamples=20, latency_prompts=0,
                            prompt_template="plain")
    run_evaluate(config, lambda path: FakeBackend(path, responder=lambda q, i: replies[q]))
    rows = {r["problem_id"]: r for r in map(
        json.loads, (tmp_path / "eval" / "results.jsonl").read_text().splitlines())}
    assert (rows["cut"]["predicted_answer"], rows["cut"]["correct"]) == (None, False)
    assert rows["cut"]["verdict"] == "no_answer" and rows["cut"]["truncated"] is True
    assert (rows["boxed"]["predicted_answer"], rows["boxed"]["correct"]) == ("7", True)
    # Not cut: the last-number fallback still reads a plain answer.
    assert (rows["whole"]["predicted_answer"], rows["whole"]["correct"]) == ("2", True)
    teacher = json.loads((tmp_path / "eval" / "summary.json").read_text())["models"]["teacher"]
    assert (teacher["truncated"], teacher["truncated_answered"]) == (2, 1)
    assert teacher["accuracy"] == pytest.approx(2 / 3)
    assert "| 2 (0.667) |" in (tmp_path / "eval" / "report.md").read_text()
    # A backend that gives no finish reason: an output that used every token was cut.
    assert completion_truncated(None, 5, 5) and not completion_truncated(None, 4, 5)
    assert not completion_truncated("stop", 5, 5) and completion_truncated("length", 3, 5)


def test_unverifiable_and_timeout_verdicts_are_counted_apart_beside_accuracy(
    tmp_path: Path, problems_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checked: list[tuple] = []

    def verify(pairs):  # the checker times out on p1 and cannot parse p2's gold
        checked.extend(pairs)
        script = {"5": "timeout", "7": "unverifiable"}
        return [script.get(gold, "correct" if gold == pred else "wrong") for gold, pred in pairs]

    def respond(question: str, index: int) -> str:
        return "no idea" if "4 + 5" in question and index == 1 else "So \\boxed{5}."

    config = EvaluateConfig(problems=problems_file, out=tmp_path / "eval", model=["teacher=x"],
                            n=2, bootstrap_resamples=20, latency_prompts=0,
                            prompt_template="plain", fallback_last_number=False)
    run_evaluate(config, lambda path: FakeBackend(path, responder=respond), verify=verify)
    teacher = json.loads((tmp_path / "eval" / "summary.json").read_text())["models"]["teacher"]
    # 2 timeouts (p1), 2 unverifiable (p2); p3: one wrong, one without an answer, which is the
    # model's failure and never reaches the checker.
    assert teacher["unscored"] == {"timeout": 2, "unverifiable": 2}
    assert teacher["unscored_share"] == pytest.approx(4 / 6)
    assert teacher["verdicts"] == {"timeout": 2, "unverifiable": 2, "wrong": 1, "no_answer": 1}
    assert len(checked) == 5 and all(pred is not None for _, pred in checked)
    assert teacher["accuracy"] == 0.0
    report = (tmp_path / "eval" / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| teacher |"))
    assert "(4 unscored: 2 timeout, 2 unverifiable)" in row
    assert "accuracy 0.000 (4 unscored: 2 timeout, 2 unverifiable" in capsys.readouterr().out


def test_a_model_known_by_name_only_is_never_reused(tmp_path: Path, problems_file: Path) -> None:
    # A hub id with no known revision (offline, not in the cache): its name says nothing about
    # the weights a later load gets, so its samples are generated again and the report says so.
    config = EvaluateConfig(problems=problems_file, out=tmp_path / "eval",
                            model=["teacher=nobody/unknown-model"], n=1, prompt_template="plain",
                            bootstrap_resamples=20, latency_prompts=0)
    built: list[str] = []

    def factory(path: str) -> FakeBackend:
        built.append(path)
        return FakeBackend(path)

    run_evaluate(config, factory)
    run_evaluate(config, factory)
    assert built == ["nobody/unknown-model"] * 2
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert "nothing identifies its weights" in summary["models"]["teacher"]["cache_off"]
    assert "samples are not cached" in (tmp_path / "eval" / "report.md").read_text()


def test_maj_at_k_groups_equivalent_answers_and_counts_ties() -> None:
    # 0.5, 1/2 and \frac{1}{2} are one vote (3) against two wrong 0.25 votes; the second problem
    # ties 1-1 and the tie is reported.
    from cotdistill.evaluate.config import EvalSample
    from cotdistill.evaluate.summary import summarize_model

    def sample(pid: str, answer: str, correct: bool) -> EvalSample:
        return EvalSample(model="m", problem_id=pid, sample_index=0, question="q",
                          gold_answer="0.5", completion=str(answer), predicted_answer=answer,
                          verdict="correct" if correct else "wrong", correct=correct,
                          num_tokens=5, finish_reason="stop", mean_logprob=None)

    # By string, "0.25" would win problem a with two votes against one each.
    samples = [sample("a", "0.25", False), sample("a", "0.5", True), sample("a", "1/2", True),
               sample("a", "\\frac{1}{2}", True), sample("a", "0.25", False),
               sample("b", "3", False), sample("b", "0.5", True), sample("b", "3", False),
               sample("b", "0.5", True), sample("b", None, False)]
    summary = summarize_model(samples)
    assert summary["maj@5"] == 0.5
    assert summary["maj@5_ties"] == 1
