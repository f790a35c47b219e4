"""generate --until-correct K --max-samples M with the fake backend: a teacher that is right on
chosen attempts of each problem shows when a problem stops (K correct, M samples, no gold: n),
what the manifest says each problem cost, resume after an interrupted wave, and the flags'
checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from cotdistill import cli
from cotdistill.backends.fake import FakeBackend
from cotdistill.errors import InputError
from cotdistill.generate.adaptive import Ledger, verified_correct
from cotdistill.generate.config import GenerateConfig
from cotdistill.generate.stage import run_generate
from cotdistill.records import Problem, Sampling, Trace
from tests.helpers.problems import make_problems, read_traces


class Teacher:
    """Right on the listed attempts (0-based, counted per question across calls), else wrong.

    `right[i]` belongs to problem p0i; `attempts` can start from the samples a traces file
    already holds, so a resumed run sees the same teacher as an uninterrupted one."""

    def __init__(self, right: dict[int, set[int]], attempts: Counter[str] | None = None) -> None:
        self.right = right
        self.attempts: Counter[str] = attempts if attempts is not None else Counter()
        self.asked: Counter[str] = Counter()

    def __call__(self, prompt: str, sample_index: int) -> str:
        question = prompt.rsplit("Problem: ", 1)[-1]
        index = int(question.split()[2])  # "Ann has {i} pens ..." is problem p0i
        attempt = self.attempts[question]
        self.attempts[question] += 1
        self.asked[f"p{index:02d}"] += 1
        if attempt in self.right.get(index, set()):
            total = 2 * index + 1
            return f"{index} + {index + 1} = {total}. The answer is \\boxed{{{total}}}."
        return f"I think it is \\boxed{{{1000 + attempt}}}."


# p00 always right, p01 right on its 3rd and 6th attempts, p02 never, p03 on its first two.
RIGHT = {0: set(range(100)), 1: {2, 5}, 3: {0, 1}}


def setup(tmp_path: Path, count: int = 4, gold: bool = True, **values) -> GenerateConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    problems = make_problems(tmp_path / "problems.jsonl", count)
    if not gold:  # p03 loses its gold answer: it gets the plain n
        rows = [json.loads(line) for line in problems.read_text().splitlines()]
        rows[3].pop("answer")
        problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"n": 2, "temperature": 0.7, "until_correct": 2, "max_samples": 12, **values}
    return GenerateConfig(problems=problems, out=tmp_path / "out", **settings)


def costs(out: Path) -> dict[str, tuple[int, int, str]]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {pid: (c["samples"], c["correct"], c["status"])
            for pid, c in manifest["adaptive"]["costs"].items()}


def test_a_problem_stops_at_k_correct_a_hard_one_at_m_and_one_without_gold_at_n(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = setup(tmp_path, gold=False)
    teacher = Teacher(RIGHT)
    manifest = run_generate(cfg, backend=FakeBackend(responder=teacher))

    # p00: one wave of 2, both right. p01: waves [0,1] [2,3] [4,5] hold its 2 right ones.
    # p02: never right, stopped by the budget. p03: no gold, n=2 although it was right.
    assert costs(cfg.out) == {"p00": (2, 2, "solved"), "p01": (6, 2, "solved"),
                              "p02": (12, 0, "budget"), "p03": (2, 0, "no_gold")}
    assert teacher.asked == {"p00": 2, "p01": 6, "p02": 12, "p03": 2}
    traces = read_traces(cfg.out)
    by_problem: dict[str, list[int]] = {}
    for t in traces:
        by_problem.setdefault(t["problem_id"], []).append(t["sample_index"])
    assert {pid: sorted(i) for pid, i in by_problem.items()} == {
        "p00": [0, 1], "p01": list(range(6)), "p02": list(range(12)), "p03": [0, 1]}
    assert {t["sampling"]["n"] for t in traces} == {2}  # the run's n, on every wave's trace
    adaptive = manifest["adaptive"]
    assert adaptive["problems"] == {"solved": 2, "budget": 1, "no_gold": 1, "open": 0}
    assert adaptive["samples"] == manifest["counts"]["samples"] == 22
    assert adaptive["correct_traces"] == 4
    tokens = sum(t["num_tokens"] for t in traces)
    assert adaptive["output_tokens"] == tokens
    assert adaptive["correct_per_1k_tokens"] == round(4000 / tokens, 3)
    assert adaptive["costs"]["p01"]["first_correct_sample"] == 2
    assert adaptive["costs"]["p02"]["first_correct_sample"] is None
    assert "2 problems solved, 1 stopped at the budget, 1 without gold" in capsys.readouterr().out


def test_the_last_wave_asks_only_for_what_the_budget_has_left(tmp_path: Path) -> None:
    cfg = setup(tmp_path, count=3, n=2, max_samples=5)
    run_generate(cfg, backend=FakeBackend(responder=Teacher(RIGHT)))
    assert costs(cfg.out)["p02"] == (5, 0, "budget")  # waves of 2, 2, 1
    assert costs(cfg.out)["p01"] == (5, 1, "budget")  # right once (attempt 2) in 5


def test_a_truncated_or_wrong_trace_does_not_count_as_correct() -> None:
    def trace(completion: str, finish: str = "stop") -> Trace:
        return Trace(problem_id="p", question="q", gold_answer="12", completion=completion,
                     finish_reason=finish, num_tokens=5)

    traces = [trace("so \\boxed{12}"), trace("so \\boxed{12}", "length"),
              trace("so \\boxed{13}"), trace("The answer is 12.0 apples"),
              trace("<think>it is 12"), trace("<think>ok</think> The answer is 12")]
    assert verified_correct(traces) == [True, False, False, True, False, True]


def test_resume_after_an_interrupted_wave_pays_for_no_finished_problem(tmp_path: Path) -> None:
    whole = setup(tmp_path / "whole", count=4)
    run_generate(whole, backend=FakeBackend(responder=Teacher(RIGHT)))

    cfg = setup(tmp_path / "cut", count=4, batch_size=2)

    class Dies(FakeBackend):
        def generate(self, conversations, sampling, progress=None):  # type: ignore[no-untyped-def]
            if self.calls == 3:  # waves 1 (two batches) and 2 are written; wave 3 dies
                raise RuntimeError("engine died")
            return super().generate(conversations, sampling, progress)

    with pytest.raises(RuntimeError, match="engine died"):
        run_generate(cfg, backend=Dies(responder=Teacher(RIGHT)))
    path = cfg.out / "traces.jsonl"
    assert not (cfg.out / "manifest.json").exists()
    # A kill in the middle of the last write: one sample of p02's wave lost, half a line left.
    lines = path.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["problem_id"] == "p02"
    path.write_text("".join(lines[:-1]) + lines[-1][:50])
    on_disk = Counter(json.loads(line)["problem_id"] for line in lines[:-1])
    solved_before = {"p00", "p03"}
    assert all(on_disk[p] == 2 for p in solved_before)

    # The same teacher, having already been asked what the file holds.
    attempts = Counter({f"Ann has {i} pens and gets {i + 1} more. How many?": on_disk[f"p0{i}"]
                        for i in range(4)})
    teacher = Teacher(RIGHT, attempts)
    manifest = run_generate(cfg, backend=FakeBackend(responder=teacher))

    assert not solved_before & set(teacher.asked)  # finished problems are not paid again
    assert costs(cfg.out) == costs(whole.out)
    assert manifest["counts"]["new_samples"] == sum(teacher.asked.values())
    strip = ("problem_id", "sample_index", "completion")
    assert sorted(tuple(t[k] for k in strip) for t in read_traces(cfg.out)) == \
        sorted(tuple(t[k] for k in strip) for t in read_traces(whole.out))


def test_a_rerun_with_a_larger_k_samples_on_from_where_the_last_stopped(tmp_path: Path) -> None:
    cfg = setup(tmp_path, count=2, until_correct=1)
    run_generate(cfg, backend=FakeBackend(responder=Teacher(RIGHT)))
    assert costs(cfg.out)["p01"] == (4, 1, "solved")
    teacher = Teacher(RIGHT, Counter({"Ann has 1 pens and gets 2 more. How many?": 4}))
    run_generate(cfg.model_copy(update={"until_correct": 2}),
                 backend=FakeBackend(responder=teacher))
    assert teacher.asked == {"p01": 2}  # p00 already had 2 correct
    assert costs(cfg.out)["p01"] == (6, 2, "solved")


def test_a_plain_rerun_refuses_a_folder_made_with_until_correct(tmp_path: Path) -> None:
    cfg = setup(tmp_path, count=3)
    run_generate(cfg, backend=FakeBackend(responder=Teacher(RIGHT)))
    before = (cfg.out / "traces.jsonl").read_bytes()
    plain = cfg.model_copy(update={"until_correct": None, "max_samples": None})
    with pytest.raises(InputError, match="until-correct") as err:
        run_generate(plain, backend=FakeBackend())
    assert err.value.field == "sample_index"
    assert (cfg.out / "traces.jsonl").read_bytes() == before


def test_shards_each_sample_until_correct_and_the_merge_sums_their_costs(tmp_path: Path) -> None:
    cfg = setup(tmp_path, count=4, shards=2)
    manifest = run_generate(cfg, backend=FakeBackend(responder=Teacher(RIGHT)))
    assert {pid: (c["samples"], c["status"]) for pid, c in manifest["adaptive"]["costs"].items()} \
        == {"p00": (2, "solved"), "p01": (6, "solved"), "p02": (12, "budget"),
            "p03": (2, "solved")}
    assert manifest["counts"]["samples"] == manifest["adaptive"]["samples"] == 22


@pytest.mark.parametrize(
    ("values", "field", "message"),
    [
        ({"until_correct": 2}, "max_samples", "needs --max-samples"),
        ({"max_samples": 8}, "max_samples", "needs --until-correct"),
        ({"until_correct": 4, "max_samples": 3}, "max_samples", "max_samples 3 < until_correct 4"),
        ({"until_correct": 1, "max_samples": 3, "n": 4}, "max_samples", "max_samples 3 < n 4"),
        ({"until_correct": 1, "max_samples": 3, "n": 1, "temperature": 0.0}, "temperature",
         "temperature > 0"),
    ],
)
def test_flags_that_do_not_fit_together_are_refused_before_any_work(
    tmp_path: Path, values: dict, field: str, message: str
) -> None:
    cfg = GenerateConfig(problems=make_problems(tmp_path / "p.jsonl"), out=tmp_path / "out",
                         **{"n": 2, "temperature": 0.7, **values})
    backend = FakeBackend()
    with pytest.raises(InputError, match=message) as err:
        run_generate(cfg, backend=backend)
    assert err.value.field == field
    assert backend.calls == 0 and not (tmp_path / "out").exists()


def test_the_cli_refuses_k_below_one_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = make_problems(tmp_path / "p.jsonl")
    status = cli.main(["generate", "--problems", str(problems), "--out", str(tmp_path / "o"),
                       "--until-correct", "0", "--max-samples", "4"])
    assert status == 2
    assert "until_correct" in capsys.readouterr().err


def test_the_ledger_reads_cost_and_correctness_back_from_traces() -> None:
    problems = [Problem(id="a", question="q", gold_answer="3"), Problem(id="b", question="r")]
    sampling = Sampling(temperature=0.7, top_p=1.0, max_tokens=9, n=2)
    rows = {"a": [Trace(problem_id="a", sample_index=i, question="q", gold_answer="3",
                        completion=f"\\boxed{{{i + 2}}}", num_tokens=4, sampling=sampling,
                        finish_reason="stop").model_dump(mode="json") for i in range(3)]}
    ledger = Ledger.of(problems, rows)
    cfg = GenerateConfig(n=2, temperature=0.7, until_correct=2, max_samples=4)
    assert (ledger.costs["a"].samples, ledger.costs["a"].tokens) == (3, 12)
    assert ledger.costs["a"].correct_at == [1]
    assert ledger.next_wave(problems[0], cfg) == 1  # the budget has 1 sample left
    assert ledger.next_wave(problems[1], cfg) == 2  # no gold: n
    assert ledger.worst_case(problems, cfg) == 3


def test_the_manifest_gives_solved_at_k_over_problems_with_gold(tmp_path: Path) -> None:
    cfg = setup(tmp_path, gold=False, max_samples=6)
    manifest = run_generate(cfg, backend=FakeBackend(responder=Teacher(RIGHT)))
    # p00 first right at sample 0, p01 at 2, p02 never; p03 has no gold and is not counted.
    assert manifest["adaptive"]["solved_at_k"] == [0.3333, 0.3333, 0.6667, 0.6667, 0.6667,
                                                   0.6667]
