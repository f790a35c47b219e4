"""Top-k capture beside traces.jsonl: format, resume after kill -9, reconcile, refusals."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from cotdistill.errors import InputError
from cotdistill.generate.config import GenerateConfig
from cotdistill.generate.stage import run_generate
from cotdistill.topk_store import TopkStore, bytes_per_token
from tests.helpers.problems import ROOT, make_problems, read_traces
from tests.helpers.processes import kill_when_written
from tests.helpers.topk_fake import TopkFakeBackend, fake_topk

K = 5


def check_store_matches_traces(out: Path) -> int:
    """Every trace has exactly one row, and it is that trace's (recomputed from its text)."""
    import numpy as np

    rows = read_traces(out)
    store = TopkStore.open([out])
    assert len(store.index) == len(rows)
    for row in rows:
        data = store.get((row["problem_id"], row["sample_index"]))
        assert data is not None, row["problem_id"]
        want = fake_topk(row["completion"], K)
        assert len(data["sampled"]) == row["num_tokens"]
        assert np.array_equal(data["sampled"], want.sampled)
        assert np.array_equal(data["ids"], want.ids)
        assert data["ids"].dtype == np.int32 and data["logprobs"].dtype == np.float16
    return len(rows)


def test_capture_writes_compact_rows_and_records_the_tokenizer(
    tiny_model: Path, tmp_path: Path
) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 6)
    out = tmp_path / "out"
    config = GenerateConfig(problems=problems, out=out, n=2, batch_size=4, topk_logprobs=K,
                            teacher=str(tiny_model))
    manifest = run_generate(config, backend=TopkFakeBackend())
    assert check_store_matches_traces(out) == 12
    info = manifest["topk"]
    assert info["k"] == K and info["rows"] == 12
    assert info["vocab_size"] == 512 and len(info["vocab_sha256"]) == 64
    assert info["tokenizer"] == str(tiny_model)
    # Fixed width: 6K + 6 bytes a token, plus a small .npy header per array and shard.
    assert info["bytes_per_token"] == bytes_per_token(K) == 36
    assert info["bytes_per_token_on_disk"] < bytes_per_token(K) + 700 * 8 / info["tokens"]


def test_rows_of_traces_cut_away_on_resume_are_dropped_and_regenerated(
    tiny_model: Path, tmp_path: Path
) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 5)
    out = tmp_path / "out"
    config = GenerateConfig(problems=problems, out=out, n=2, batch_size=2, topk_logprobs=K,
                            teacher=str(tiny_model))
    run_generate(config, backend=TopkFakeBackend())
    # A kill after a shard was written but before (all of) its traces were appended: the last
    # problem's lines are gone, its top-k rows are still there.
    traces = out / "traces.jsonl"
    lines = traces.read_text().splitlines(keepends=True)
    traces.write_text("".join(lines[:-1]))
    # and an unfinished shard (arrays without their index) lies around
    (out / "topk" / "shard-000099.ids.npy").write_bytes(b"partial")
    run_generate(config, backend=TopkFakeBackend())
    assert check_store_matches_traces(out) == 10
    assert not (out / "topk" / "shard-000099.ids.npy").exists()


def test_until_correct_captures_a_row_for_every_wave(tiny_model: Path, tmp_path: Path) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 4)
    out = tmp_path / "out"
    config = GenerateConfig(problems=problems, out=out, n=1, temperature=0.7, until_correct=2,
                            max_samples=4, topk_logprobs=K, teacher=str(tiny_model))
    run_generate(config, backend=TopkFakeBackend())
    # One sample per wave: the rows of the second and later waves were captured too.
    assert max(row["sample_index"] for row in read_traces(out)) >= 1
    assert check_store_matches_traces(out) == len(read_traces(out)) >= 8


def test_refusals_before_any_engine(tiny_model: Path, tmp_path: Path) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 3)
    plain = GenerateConfig(problems=problems, out=tmp_path / "plain", n=1,
                           teacher=str(tiny_model))
    run_generate(plain, backend=TopkFakeBackend())
    # Traces made without top-k cannot be completed with it (they would have no rows).
    more = make_problems(tmp_path / "p4.jsonl", 4)
    with pytest.raises(InputError, match="no top-k logprobs"):
        run_generate(plain.model_copy(update={"problems": more, "topk_logprobs": K}),
                     backend=TopkFakeBackend())
    # ... nor the other way round.
    with_k = GenerateConfig(problems=problems, out=tmp_path / "k", n=1, topk_logprobs=K,
                            teacher=str(tiny_model))
    run_generate(with_k, backend=TopkFakeBackend())
    with pytest.raises(InputError, match="asks for none"):
        run_generate(with_k.model_copy(update={"problems": more, "topk_logprobs": 0}),
                     backend=TopkFakeBackend())
    with pytest.raises(InputError, match="vllm backend"):
        run_generate(GenerateConfig(problems=problems, out=tmp_path / "o", backend="openai",
                                    base_url="http://127.0.0.1:9/v1", teacher="m",
                                    topk_logprobs=K))


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from cotdistill.backends.fake import add_numbers
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate
    from tests.helpers.topk_fake import TopkFakeBackend

    def slow(question, index):
        time.sleep(0.02)
        return add_numbers(question, index) + " padding" * 500

    config = GenerateConfig(problems=sys.argv[1], out=sys.argv[2], n=3, batch_size=1,
                            max_tokens=5000, topk_logprobs=5, teacher=sys.argv[3])
    run_generate(config, backend=TopkFakeBackend(responder=slow))
    """
)


def test_kill_9_then_rerun_leaves_one_row_per_trace(tiny_model: Path, tmp_path: Path) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 30)
    out = tmp_path / "out"
    script = tmp_path / "slow_generate.py"
    script.write_text(KILL_SCRIPT)
    traces = out / "traces.jsonl"
    code = kill_when_written(
        [sys.executable, str(script), str(problems), str(out), str(tiny_model)], traces, 25,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},  # for tests.helpers.topk_fake
    )
    assert code == -signal.SIGKILL
    assert 25 <= traces.read_bytes().count(b"\n") < 90  # killed mid-run

    config = GenerateConfig(problems=problems, out=out, n=3, batch_size=1, max_tokens=5000,
                            topk_logprobs=K, teacher=str(tiny_model))
    manifest = run_generate(config, backend=TopkFakeBackend(
        responder=lambda q, i: TopkFakeBackend().responder(q, i) + " padding" * 500))
    assert check_store_matches_traces(out) == 90
    assert manifest["topk"]["rows"] == 90
    meta = json.loads((out / "topk" / "meta.json").read_text())
    assert meta["k"] == K


def test_run_points_offline_topk_students_at_its_generate_stage(tmp_path: Path) -> None:
    from cotdistill.run.config import PipelineConfig
    from cotdistill.run.plan import plan

    problems = make_problems(tmp_path / "p.jsonl", 3)
    values = {
        "out": tmp_path / "run", "teacher": "fake-teacher", "problems": problems,
        "eval_problems": problems, "generate": {"topk_logprobs": 20},
        "students": [{"name": "kd", "train": {"kd": "offline-topk"}}],
    }
    steps = {s.name: s for s in plan(PipelineConfig.model_validate(values)).steps}
    assert steps["kd: train"].config.topk_from == [tmp_path / "run" / "generate"]
    assert steps["generate"].config.topk_logprobs == 20
    with pytest.raises(InputError, match="topk_logprobs"):
        plan(PipelineConfig.model_validate({**values, "generate": {}}))


def test_run_adds_an_on_policy_stage_after_a_students_sft(tmp_path: Path) -> None:
    from cotdistill.run.config import PipelineConfig
    from cotdistill.run.plan import plan

    problems = make_problems(tmp_path / "p.jsonl", 3)
    config = PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": "fake-teacher", "problems": problems,
        "eval_problems": problems,
        "students": [{"name": "s", "train": {"epochs": 1},
                      "on_policy": {"max_steps": 5, "kd_loss": "reverse"}}],
    })
    result = plan(config)
    names = [s.name for s in result.steps]
    assert names.index("s: on-policy") == names.index("s: train") + 1
    steps = {s.name: s for s in result.steps}
    stage = steps["s: on-policy"].config
    assert stage.kd == "on-policy" and stage.teacher == "fake-teacher"
    assert stage.student == str(tmp_path / "run" / "students" / "s" / "model")
    assert stage.kd_loss == "reverse" and stage.max_steps == 5
    # The student evaluated is the on-policy stage's result.
    evaluated = steps["evaluate"].config.model
    assert f"s={tmp_path / 'run' / 'students' / 's' / 'on_policy'}" in evaluated


@pytest.mark.parametrize("mode", ["on-policy-vllm", "online"])
def test_run_on_policy_stage_takes_the_vllm_mode_and_refuses_others(tmp_path: Path,
                                                                     mode: str) -> None:
    from cotdistill.errors import InputError
    from cotdistill.run.config import PipelineConfig
    from cotdistill.run.plan import plan

    problems = make_problems(tmp_path / "p.jsonl", 3)
    config = PipelineConfig.model_validate({
        "out": tmp_path / "run", "teacher": "fake-teacher", "problems": problems,
        "eval_problems": problems,
        "students": [{"name": "s", "train": {"epochs": 1},
                      "on_policy": {"max_steps": 5, "kd": mode}}],
    })
    if mode == "online":
        with pytest.raises(InputError, match="on_policy.kd"):
            plan(config)
        return
    stage = {s.name: s for s in plan(config).steps}["s: on-policy"].config
    assert stage.kd == "on-policy-vllm" and stage.teacher == "fake-teacher"


def test_the_model_card_names_the_vllm_on_policy_mode() -> None:
    from cotdistill.train.card import method
    from cotdistill.train.config import TrainConfig

    config = TrainConfig(kd="on-policy-vllm", teacher="t", data=[Path("d.jsonl")])
    lines = method(config, {"teacher_model": "t", "kd": {"mode": "on-policy-vllm"}})
    assert "samples on vLLM" in lines[0]


def test_the_issue_flags_exist() -> None:
    from cotdistill.cli import build_parser
    from cotdistill.config import load_config
    from cotdistill.train.config import TrainConfig

    parser = build_parser()
    gen = parser.parse_args(["generate", "--topk-logprobs", "20"])
    assert gen.topk_logprobs == 20
    args = parser.parse_args(["train", "--kd", "offline-topk", "--topk-from", "a", "b",
                              "--topk-tail", "bucket", "--kd-loss", "jsd", "--kd-beta", "0.2"])
    values = {k: getattr(args, k) for k in ("kd", "topk_from", "topk_tail", "kd_loss", "kd_beta")}
    config = load_config(TrainConfig, overrides=values)
    assert (config.kd, config.topk_tail, config.kd_loss, config.kd_beta) == (
        "offline-topk", "bucket", "jsd", 0.2)
    assert config.topk_from == [Path("a"), Path("b")]
    with pytest.raises(InputError):
        load_config(TrainConfig, overrides={"kd": "offline"})


@pytest.mark.parametrize(("input_ids", "sampled", "expected"), [
    ([1, 2, 10, 11, 12, 99, 5], [10, 11, 12, 99], (4, True)),   # template suffix: no rows
    ([1, 2, 10, 11, 12], [10, 11, 12, 99], (3, True)),          # cut by max_length
    ([1, 2, 10, 13, 12, 99], [10, 11, 12, 99], (1, False)),     # re-tokenized differently
    ([1, 2, 7, 11], [10, 11], (0, False)),
])
def test_align_uses_rows_only_up_to_the_first_differing_token(input_ids, sampled,
                                                              expected) -> None:
    from cotdistill.train.topk_table import align

    mask = [0, 0] + [1] * (len(input_ids) - 2)
    assert align(input_ids, mask, sampled) == expected


def test_table_rows_follow_the_label_tokens_of_each_example(tmp_path: Path) -> None:
    """Batch rows come example by example, one per completion token; rows past the aligned
    prefix (and of examples without top-k) are invalid."""
    import numpy as np

    from cotdistill.topk_store import TopkWriter
    from cotdistill.train.topk_table import build_table

    writer = TopkWriter(tmp_path / "topk", 2, {"vocab_sha256": "x"})
    writer.write([(("a", 0), fake_topk("w1 w2 w3", 2)), (("b", 0), fake_topk("w4 w5", 2))])
    store = TopkStore.open([tmp_path])
    a = fake_topk("w1 w2 w3", 2)
    b = fake_topk("w4 w5", 2)
    examples = [
        (("a", 0), [1, *a.sampled.tolist(), 7], [0, 1, 1, 1, 1]),      # 3 rows + suffix
        (("b", 0), [1, 1, int(b.sampled[0]), 3], [0, 0, 1, 1]),        # differs at token 1
        (("c", 0), [1, 5, 6], [0, 1, 1]),                              # no stored rows
    ]
    table, stats = build_table(store, examples)
    assert (stats.aligned, stats.mismatched, stats.missing, stats.kd_tokens) == (1, 1, 1, 4)
    ids, logprobs, valid = table.batch([0, 1, 2])
    assert valid.tolist() == [True, True, True, False, True, False, False, False]
    assert np.array_equal(ids[:3].numpy(), a.ids) and np.array_equal(ids[4].numpy(), b.ids[0])
    assert logprobs.dtype.is_floating_point and ids.shape == (8, 2)
