"""The generate stage with the fake backend: outputs, manifest, CLI, config, resume, shards."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from cotdistill import cli
from cotdistill.backends.fake import FakeBackend, add_numbers
from cotdistill.config import load_config
from cotdistill.errors import InputError
from cotdistill.generate.config import GenerateConfig
from cotdistill.generate.stage import run_generate
from cotdistill.problems import question_id
from cotdistill.prompts import load_template
from tests.helpers.problems import ROOT, make_problems, read_traces
from tests.helpers.processes import kill_when_written


def config(tmp_path: Path, **values) -> GenerateConfig:
    problems = values.pop("problems", None) or make_problems(tmp_path / "problems.jsonl")
    return GenerateConfig(problems=problems, out=tmp_path / "out", **values)


class Recorder:
    """A responder that remembers which questions the backend was asked about."""

    def __init__(self) -> None:
        self.questions: list[str] = []

    def __call__(self, question: str, sample_index: int) -> str:
        if sample_index == 0:  # the fake sees the rendered prompt; keep the problem text
            self.questions.append(question.rsplit("Problem: ", 1)[-1])
        return add_numbers(question, sample_index) + f" (sample {sample_index})"


def test_traces_hold_every_field_and_the_manifest_is_written_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(tmp_path, n=3, max_tokens=64, temperature=0.7, batch_size=4)
    manifest = run_generate(cfg, backend=FakeBackend(logprob=-0.25))
    traces = read_traces(cfg.out)
    template = load_template("math_cot")

    assert len(traces) == 30
    assert [(t["problem_id"], t["sample_index"]) for t in traces] == [
        (f"p{i:02d}", k) for i in range(10) for k in range(3)
    ]
    first = traces[0]
    assert first["question"] == "Ann has 0 pens and gets 1 more. How many?"
    assert first["gold_answer"] == "1"
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["question"] in first["messages"][-1]["content"]
    assert first["completion"].endswith("\\boxed{1}.")
    assert first["finish_reason"] == "stop"
    assert first["num_tokens"] == len(first["completion"].split())
    assert first["mean_logprob"] == first["min_logprob"] == -0.25
    assert first["token_logprobs"] == [-0.25] * first["num_tokens"]
    assert (first["teacher"], first["prompt_template"]) == ("fake", "math_cot")
    assert {t["prompt_hash"] for t in traces} == {template.hash}
    assert first["sampling"] == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 64, "n": 3,
                                 "stop": [], "seed": 0}

    on_disk = json.loads((cfg.out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["counts"]["problems"] == 10
    assert manifest["counts"]["samples"] == manifest["counts"]["new_samples"] == 30
    assert manifest["counts"]["output_tokens"] == sum(t["num_tokens"] for t in traces)
    assert manifest["counts"]["finish_reasons"] == {"stop": 30}
    assert manifest["config"]["n"] == 3
    assert manifest["prompt_template"] == {"name": "math_cot", "hash": template.hash}
    assert len(manifest["inputs"][str(cfg.problems)]) == 64
    assert manifest["output_tokens_per_s"] > 0
    assert "pydantic" in manifest["versions"] and manifest["wall_time_s"] >= 0
    # Manifest written last: nothing in the folder is newer than it.
    assert os.path.getmtime(cfg.out / "manifest.json") >= os.path.getmtime(
        cfg.out / "traces.jsonl"
    )

    captured = capsys.readouterr()
    assert "generate: 10 problems, 30 samples (30 new" in captured.out
    assert "30/30" in captured.err and "tok_s=" in captured.err  # the progress bar


def test_truncated_samples_report_length(tmp_path: Path) -> None:
    cfg = config(tmp_path, max_tokens=3, limit=2)
    manifest = run_generate(cfg, backend=FakeBackend())
    assert {t["finish_reason"] for t in read_traces(cfg.out)} == {"length"}
    assert {t["num_tokens"] for t in read_traces(cfg.out)} == {3}
    assert manifest["counts"]["finish_reasons"] == {"length": 2}


def test_plain_template_renders_the_bare_question(tmp_path: Path) -> None:
    cfg = config(tmp_path, prompt_template="plain", limit=1)
    run_generate(cfg, backend=FakeBackend())
    trace = read_traces(cfg.out)[0]
    assert trace["messages"] == [{"role": "user", "content": trace["question"]}]
    assert trace["prompt_template"] == "plain"


def test_custom_template_file(tmp_path: Path) -> None:
    template = tmp_path / "mine.yaml"
    template.write_text("user: 'Q: {question} A: \\boxed{}'\n")
    cfg = config(tmp_path, prompt_template=str(template), limit=1)
    run_generate(cfg, backend=FakeBackend())
    trace = read_traces(cfg.out)[0]
    assert trace["messages"][0]["content"] == f"Q: {trace['question']} A: \\boxed{{}}"
    assert trace["prompt_template"] == "mine"


def test_a_backend_passed_in_is_left_open_for_the_caller(tmp_path: Path) -> None:
    class Closing(FakeBackend):
        closed = False

        def close(self) -> None:
            self.closed = True

    backend = Closing()
    run_generate(config(tmp_path, limit=1), backend=backend)
    assert not backend.closed


def test_backend_returning_wrong_sample_count_is_an_error(tmp_path: Path) -> None:
    class Short(FakeBackend):
        def generate(self, conversations, sampling, progress=None):
            return [samples[:1] for samples in super().generate(conversations, sampling)]

    with pytest.raises(RuntimeError, match="returned 1 samples"):
        run_generate(config(tmp_path, n=2), backend=Short())


# --- CLI and configuration --------------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to load a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("cotdistill.models.resolve_model", refuse)
    monkeypatch.setattr("cotdistill.generate.single.make_backend", refuse)


@pytest.mark.usefixtures("no_model")
def test_cli_bad_input_exits_2_before_loading_a_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = tmp_path / "p.jsonl"
    problems.write_text('{"question": "ok"}\n{"question": ""}\n')
    status = cli.main(["generate", "--problems", str(problems), "--out", str(tmp_path / "o")])
    assert status == 2
    err = capsys.readouterr().err
    assert f"cotdistill generate: error: {problems}:2, field 'question': question is empty" in err


@pytest.mark.usefixtures("no_model")
@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--prompt-template", "nope"], "prompt template not found"),
        (["--shard", "4/4"], "shard must be I/N"),
        (["--backend", "openai"], "needs --base-url"),
        (["--temperature", "0", "--n", "2"], "n > 1 needs temperature > 0"),
    ],
)
def test_cli_other_input_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch, argv: list[str],
                                words: str) -> None:
    from cotdistill.backends import make_backend  # the openai backend fails before any request

    monkeypatch.setattr("cotdistill.generate.single.make_backend", make_backend)
    problems = make_problems(tmp_path / "p.jsonl")
    status = cli.main(["generate", "--problems", str(problems), "--out", str(tmp_path / "o"),
                       *argv])
    assert status == 2
    assert words in capsys.readouterr().err


@pytest.mark.usefixtures("no_model")
def test_cli_unknown_yaml_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("generate:\n  temprature: 0.5\n")
    assert cli.main(["generate", "--config", str(cfg)]) == 2
    assert "field 'temprature'" in capsys.readouterr().err


def test_yaml_then_flags_precedence(tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("generate:\n  n: 4\n  temperature: 0.9\n  max_tokens: 77\n"
                        "  question_field: [prompt]\nfilter:\n  n: 99\n")
    cfg = load_config(GenerateConfig, cfg_file, section="generate",
                      overrides={"n": 2, "temperature": None})
    assert (cfg.n, cfg.temperature, cfg.max_tokens) == (2, 0.9, 77)  # flag > YAML > default
    assert cfg.question_field == ["prompt"] and cfg.top_p == 1.0


def test_cli_runs_with_yaml_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole command line path, with the engine replaced by the fake backend."""
    made = []

    class Closing(FakeBackend):
        closed = False

        def close(self) -> None:
            self.closed = True

    def fake_backend(name, model, engine, workload=None):
        made.append((name, model, engine.seed, engine.gpu_memory_utilization))
        made.append(Closing())
        return made[-1]

    monkeypatch.setattr("cotdistill.models.resolve_model", lambda name: ("/models/x", "x"))
    monkeypatch.setattr("cotdistill.generate.single.make_backend", fake_backend)
    problems = make_problems(tmp_path / "p.jsonl", 4)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(f"generate:\n  problems: {problems}\n  n: 3\n  max_tokens: 50\n"
                        f"  seed: 5\n  gpu_memory_utilization: 0.2\n")
    out = tmp_path / "out"
    status = cli.main(["generate", "--config", str(cfg_file), "--out", str(out), "--n", "2",
                       "--temperature", "0.6", "--prompt-template", "plain"])
    assert status == 0
    assert made[0] == ("vllm", "/models/x", 5, 0.2)
    assert made[1].closed  # the engine run_generate built is shut down at the end
    traces = read_traces(out)
    assert len(traces) == 8
    assert traces[0]["sampling"] == {"temperature": 0.6, "top_p": 1.0, "max_tokens": 50,
                                     "n": 2, "stop": [], "seed": 5}
    assert traces[0]["teacher"] == "x" and traces[0]["prompt_template"] == "plain"


# --- resume -------------------------------------------------------------------------------


def test_resume_after_a_crash_regenerates_only_what_is_missing(tmp_path: Path) -> None:
    cfg = config(tmp_path, n=2)
    run_generate(cfg, backend=FakeBackend())
    lines = (cfg.out / "traces.jsonl").read_text().splitlines(keepends=True)
    # Simulate a crash: p03 lost its second sample, p09 was never written and the last write
    # of p08 stopped halfway through a line; the manifest was never written.
    kept = [ln for ln in lines if '"p03"' not in ln or '"sample_index": 0' in ln]
    kept = [ln for ln in kept if '"p09"' not in ln and '"p08"' not in ln]
    p08 = [ln for ln in lines if '"p08"' in ln]
    (cfg.out / "traces.jsonl").write_text("".join(kept) + p08[0] + p08[1][:40])
    (cfg.out / "manifest.json").unlink()

    recorder = Recorder()
    manifest = run_generate(cfg, backend=FakeBackend(responder=recorder))

    assert sorted(recorder.questions) == sorted(
        f"Ann has {i} pens and gets {i + 1} more. How many?" for i in (3, 8, 9)
    )
    traces = read_traces(cfg.out)
    pairs = [(t["problem_id"], t["sample_index"]) for t in traces]
    assert sorted(pairs) == [(f"p{i:02d}", k) for i in range(10) for k in range(2)]
    assert len(set(pairs)) == len(pairs) == 20
    assert manifest["counts"]["samples"] == 20 and manifest["counts"]["new_samples"] == 6


def test_rerun_of_a_complete_set_asks_for_nothing(tmp_path: Path) -> None:
    cfg = config(tmp_path, n=2)
    run_generate(cfg, backend=FakeBackend())
    before = (cfg.out / "traces.jsonl").read_bytes()
    backend = FakeBackend()
    manifest = run_generate(cfg, backend=backend)
    assert backend.calls == 0
    assert (cfg.out / "traces.jsonl").read_bytes() == before
    assert manifest["counts"]["new_samples"] == 0 and manifest["counts"]["samples"] == 20


def test_rerun_of_a_complete_set_does_not_start_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config(tmp_path, n=1)
    run_generate(cfg, backend=FakeBackend())
    monkeypatch.setattr("cotdistill.models.resolve_model", lambda name: ("/m", "fake"))

    def refuse(*args, **kwargs):
        raise AssertionError("engine started for nothing")

    monkeypatch.setattr("cotdistill.generate.single.make_backend", refuse)
    assert run_generate(cfg)["counts"]["samples"] == 10


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"temperature": 0.9}, "sampling"),
        ({"n": 1}, "sampling"),
        ({"prompt_template": "plain"}, "prompt_hash"),
        ({"teacher": "other-model"}, "teacher"),
    ],
)
def test_resume_with_other_settings_is_refused_and_the_file_kept(
    tmp_path: Path, change: dict, field: str
) -> None:
    run_generate(config(tmp_path, n=2, limit=3), backend=FakeBackend())
    path = tmp_path / "out" / "traces.jsonl"
    before = path.read_bytes()
    backend = FakeBackend()
    with pytest.raises(InputError) as info:
        run_generate(config(tmp_path, **{"n": 2, **change}), backend=backend)
    assert (info.value.file, info.value.line, info.value.field) == (str(path), 1, field)
    assert "use another --out" in info.value.message
    assert path.read_bytes() == before  # nothing cut away, even with another n
    assert backend.calls == 0


def test_cli_refuses_a_mismatched_resume_with_status_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_generate(config(tmp_path, n=2, limit=2, teacher="t"), backend=FakeBackend())
    monkeypatch.setattr("cotdistill.models.resolve_model", lambda name: (name, name))

    def refuse(*args, **kwargs):
        raise AssertionError("engine started before the resume check")

    monkeypatch.setattr("cotdistill.generate.single.make_backend", refuse)
    status = cli.main(["generate", "--problems", str(tmp_path / "problems.jsonl"), "--out",
                       str(tmp_path / "out"), "--n", "2", "--teacher", "t", "--top-p", "0.5"])
    assert status == 2
    assert "different sampling" in capsys.readouterr().err


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from cotdistill.backends.fake import FakeBackend, add_numbers
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate

    def slow(question, index):
        time.sleep(0.02)
        # Long lines make a kill in the middle of a write more likely.
        return add_numbers(question, index) + " padding" * 2000

    config = GenerateConfig(problems=sys.argv[1], out=sys.argv[2], n=3, batch_size=1,
                            max_tokens=5000)
    run_generate(config, backend=FakeBackend(responder=slow))
    """
)


def test_kill_9_then_rerun_completes_the_set(tmp_path: Path) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 40)
    out = tmp_path / "out"
    script = tmp_path / "slow_generate.py"
    script.write_text(KILL_SCRIPT)
    traces = out / "traces.jsonl"
    code = kill_when_written([sys.executable, str(script), str(problems), str(out)], traces, 30,
                             cwd=ROOT)
    assert code == -signal.SIGKILL
    assert not (out / "manifest.json").exists()
    written = traces.read_bytes().count(b"\n")
    assert 30 <= written < 120  # killed mid-run

    recorder = Recorder()
    cfg = GenerateConfig(problems=problems, out=out, n=3, batch_size=1, max_tokens=5000)
    manifest = run_generate(cfg, backend=FakeBackend(responder=lambda q, i: recorder(q, i)
                                                     + " padding" * 2000))
    rows = read_traces(out)
    pairs = sorted((r["problem_id"], r["sample_index"]) for r in rows)
    assert pairs == [(f"p{i:02d}", k) for i in range(40) for k in range(3)]
    assert manifest["counts"]["samples"] == 120
    # Only problems without all their samples were asked for again.
    assert 0 < len(recorder.questions) <= 40 - written // 3 + 1


# --- shards ---------------------------------------------------------------------------------


def test_shards_cover_every_problem_exactly_once(tmp_path: Path) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 30)
    seen: list[str] = []
    for index in range(4):
        out = tmp_path / f"shard{index}"
        cfg = GenerateConfig(problems=problems, out=out, shard=f"{index}/4")
        run_generate(cfg, backend=FakeBackend())
        ids = [t["problem_id"] for t in read_traces(out)]
        assert ids  # 30 problems over 4 shards: each gets some
        seen += ids
        # Deterministic: the same shard again gives the same problems.
        again = GenerateConfig(problems=problems, out=tmp_path / f"again{index}",
                               shard=f"{index}/4")
        run_generate(again, backend=FakeBackend())
        assert [t["problem_id"] for t in read_traces(again.out)] == ids
    assert sorted(seen) == [f"p{i:02d}" for i in range(30)]


def test_limit_takes_the_first_problems(tmp_path: Path) -> None:
    cfg = config(tmp_path, limit=3)
    run_generate(cfg, backend=FakeBackend())
    assert [t["problem_id"] for t in read_traces(cfg.out)] == ["p00", "p01", "p02"]


def test_problems_without_ids_use_the_question_hash(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n')
    cfg = config(tmp_path, problems=path)
    run_generate(cfg, backend=FakeBackend())
    assert read_traces(cfg.out)[0]["problem_id"] == question_id("What is 2 + 2?")


@pytest.mark.parametrize(
    ("edit", "change", "field"),
    [
        # A corrected gold answer in the problems file.
        (lambda row: {**row, "answer": "#### 999"} if row["id"] == "p01" else row, {},
         "gold_answer"),
        # Same file, read another way: `#### 3` is then the raw text, not 3.
        (lambda row: row, {"answer_format": "raw"}, "gold_answer"),
        (lambda row: {**row, "question": row["question"] + " Twice."}
         if row["id"] == "p02" else row, {}, "question"),
    ],
)
def test_resume_refuses_traces_of_an_edited_problems_file(
    tmp_path: Path, edit, change: dict, field: str
) -> None:
    problems = tmp_path / "problems.jsonl"
    run_generate(config(tmp_path, n=2, limit=3), backend=FakeBackend())
    path = tmp_path / "out" / "traces.jsonl"
    before = path.read_bytes()
    rows = [edit(json.loads(line)) for line in problems.read_text().splitlines()]
    problems.write_text("".join(json.dumps(r) + "\n" for r in rows))
    backend = FakeBackend()
    with pytest.raises(InputError) as info:
        run_generate(config(tmp_path, problems=problems, n=2, limit=5, **change),
                     backend=backend)
    assert info.value.field == field and info.value.file == str(path)
    assert "changed since its traces were made" in info.value.message
    assert "--fresh generate" in info.value.message
    assert path.read_bytes() == before and backend.calls == 0


def test_resume_with_an_unchanged_problems_file_adds_the_rest(tmp_path: Path) -> None:
    run_generate(config(tmp_path, n=1, limit=3), backend=FakeBackend())
    manifest = run_generate(config(tmp_path, problems=tmp_path / "problems.jsonl", n=1,
                                   limit=5), backend=FakeBackend())
    assert manifest["counts"]["samples"] == 5 and manifest["counts"]["new_samples"] == 2


def test_resume_refuses_traces_of_problems_the_run_no_longer_selects(tmp_path: Path) -> None:
    """A smaller --limit (or a problems file without some rows, e.g. a validation split taken
    out) must not leave the old traces of the dropped problems in the dataset."""
    run_generate(config(tmp_path, n=1, limit=5), backend=FakeBackend())
    path = tmp_path / "out" / "traces.jsonl"
    before = path.read_bytes()
    backend = FakeBackend()
    with pytest.raises(InputError) as info:
        run_generate(config(tmp_path, problems=tmp_path / "problems.jsonl", n=1, limit=3),
                     backend=backend)
    assert info.value.field == "problem_id" and info.value.file == str(path)
    assert "does not select" in info.value.message and "--fresh generate" in info.value.message
    assert path.read_bytes() == before and backend.calls == 0
