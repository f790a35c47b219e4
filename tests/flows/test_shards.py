"""Shards without a cluster: Slurm's `--shard auto`, generate `--shards N` on the local executor,
and filter per shard then `--merge`, which must equal one filter over everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotdistill import cli
from cotdistill.backends.fake import FakeBackend, add_numbers
from cotdistill.errors import InputError
from cotdistill.filter.config import FilterConfig
from cotdistill.filter.stage import run_filter
from cotdistill.generate.config import GenerateConfig
from cotdistill.generate.shards import check_coverage, shard_configs
from cotdistill.generate.stage import run_generate
from cotdistill.infra.slurm import array_shard
from cotdistill.problems import in_shard


def make_problems(path: Path, count: int = 24) -> Path:
    rows = [{"id": f"p{i:02d}", "question": f"Ann has {i} pens and gets {i + 1} more. How many?",
             "answer": f"#### {2 * i + 1}"} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def slurm(task: int, count: int, low: int | None = 0, **more: str) -> dict[str, str]:
    env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count)}
    if low is not None:
        env |= {"SLURM_ARRAY_TASK_MIN": str(low), "SLURM_ARRAY_TASK_MAX": str(low + count - 1)}
    return env | more


# --- Slurm: --shard auto ---------------------------------------------------------------------


@pytest.mark.parametrize(("env", "expected"), [
    (slurm(0, 4), (0, 4)),
    (slurm(3, 4), (3, 4)),
    (slurm(5, 4, low=2), (3, 4)),        # --array=2-5: task 5 is the fourth shard
    (slurm(0, 1), (0, 1)),
    (slurm(2, 3, low=None), (2, 3)),     # no MIN/MAX exported: indices counted from 0
    (slurm(7, 2, low=6, SLURM_ARRAY_TASK_STEP="1"), (1, 2)),
])
def test_array_shard_reads_the_slurm_environment(env: dict, expected: tuple[int, int]) -> None:
    assert array_shard(env) == expected


@pytest.mark.parametrize(("env", "message"), [
    ({}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT"),
    ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT"),
    (slurm(0, 4, SLURM_ARRAY_TASK_STEP="2"), "not consecutive"),
    ({**slurm(0, 3), "SLURM_ARRAY_TASK_MAX": "8"}, "not consecutive"),  # --array=0,4,8
    (slurm(9, 4, low=None), "outside the array"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "2"}, "not a number"),
])
def test_array_shard_refuses_what_it_cannot_number(env: dict, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        array_shard(env)
    assert info.value.field == "shard"


def test_generate_shard_auto_runs_this_array_tasks_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    problems = make_problems(tmp_path / "p.jsonl")
    for name, value in slurm(12, 3, low=10).items():  # --array=10-12, the last task
        monkeypatch.setenv(name, value)
    config = GenerateConfig(problems=problems, out=tmp_path / "out", shard="auto")
    manifest = run_generate(config, backend=FakeBackend())
    ids = {r["problem_id"] for r in rows(tmp_path / "out" / "traces.jsonl")}
    assert ids == {f"p{i:02d}" for i in range(24) if in_shard(f"p{i:02d}", 2, 3)}
    assert 0 < len(ids) < 24
    assert manifest["config"]["shard"] == "2/3"  # what ran, not "auto"


def test_generate_shard_auto_outside_slurm_is_one_line_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"):
        monkeypatch.delenv(name, raising=False)
    code = cli.main(["generate", "--problems", str(make_problems(tmp_path / "p.jsonl")),
                     "--out", str(tmp_path / "out"), "--shard", "auto"])
    assert code == 2
    assert "SLURM_ARRAY_TASK_ID" in capsys.readouterr().err


# --- generate --shards N (local executor) ----------------------------------------------------


def test_generate_shards_cover_every_problem_once_and_merge(tmp_path: Path) -> None:
    problems = make_problems(tmp_path / "p.jsonl")
    config = GenerateConfig(problems=problems, out=tmp_path / "out", shards=3, n=2,
                            temperature=0.7)
    manifest = run_generate(config, backend=FakeBackend())
    merged = rows(tmp_path / "out" / "traces.jsonl")
    pairs = [(r["problem_id"], r["sample_index"]) for r in merged]
    assert sorted(pairs) == sorted((f"p{i:02d}", s) for i in range(24) for s in range(2))
    for i in range(3):
        shard = rows(tmp_path / "out" / f"shard-{i}-of-3" / "traces.jsonl")
        assert shard and all(in_shard(r["problem_id"], i, 3) for r in shard)
    assert manifest["executor"] == "local"
    assert manifest["counts"]["samples"] == 48
    assert sum(s["counts"]["samples"] for s in manifest["shards"]) == 48


def test_coverage_check_finds_a_problem_in_two_shards_and_a_missing_one(
    tmp_path: Path
) -> None:
    problems = make_problems(tmp_path / "p.jsonl", count=6)
    config = GenerateConfig(problems=problems, out=tmp_path / "out", shards=2)
    shards = shard_configs(config)
    for shard in shards:
        run_generate(shard, backend=FakeBackend())
    dirs = [Path(s.out) for s in shards]
    ids = [f"p{i:02d}" for i in range(6)]
    check_coverage(ids, dirs, 1)  # as generated: exact
    stolen = rows(dirs[0] / "traces.jsonl")[0]
    with open(dirs[1] / "traces.jsonl", "a") as fh:
        fh.write(json.dumps(stolen) + "\n")
    with pytest.raises(InputError, match="in two shards"):
        check_coverage(ids, dirs, 1)
    with pytest.raises(InputError, match="in no shard"):
        check_coverage([*ids, "p99"], dirs[:1], 1)


def test_shards_and_shard_together_are_refused(tmp_path: Path) -> None:
    config = GenerateConfig(problems=make_problems(tmp_path / "p.jsonl"), out=tmp_path / "o",
                            shards=2, shard="0/2")
    with pytest.raises(InputError, match="give one"):
        run_generate(config, backend=FakeBackend())


# --- filter per shard, then merge ------------------------------------------------------------


def sometimes_wrong(question: str, sample_index: int) -> str:
    """Right on even samples, wrong on odd ones for some problems: a funnel with rejections."""
    text = add_numbers(question, sample_index)
    if sample_index % 2 and "pens" in question and len(question) % 3 == 0:
        return text.replace("boxed{", "boxed{1")
    return text


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    config = GenerateConfig(problems=make_problems(tmp_path / "p.jsonl"), out=tmp_path / "gen",
                            n=4, temperature=0.7)
    run_generate(config, backend=FakeBackend(responder=sometimes_wrong))
    path = tmp_path / "gen" / "traces.jsonl"
    with open(path, "a") as fh:
        fh.write("{not json\n")  # an unreadable line: one shard must set it aside, once
    return path


def _filter(traces: Path, out: Path, **values) -> dict:
    return run_filter(FilterConfig(traces=[traces], out=out, max_per_problem=2,
                                   skip_invalid=True, verify_processes=1, **values))


def test_filter_shards_then_merge_equals_one_filter(tmp_path: Path, traces: Path) -> None:
    whole = _filter(traces, tmp_path / "whole")
    parts = [tmp_path / f"f{i}" for i in range(3)]
    for i, folder in enumerate(parts):
        _filter(traces, folder, shard=f"{i}/3")
        pids = {r["problem_id"] for r in rows(folder / "kept.jsonl")}
        assert pids and all(in_shard(p, i, 3) for p in pids)
    assert cli.main(["filter", "--merge", *map(str, parts), "--out",
                     str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "manifest.json").read_text())

    def keys(folder: Path, name: str) -> list:
        return sorted(json.dumps([r.get("problem_id"), r.get("sample_index"), r.get("raw")])
                      for r in rows(folder / name))

    for name in ("kept.jsonl", "rejected.jsonl", "sft.jsonl"):
        assert keys(tmp_path / "merged", name) == keys(tmp_path / "whole", name)
    assert merged["counts"] == whole["counts"]
    assert whole["counts"]["rejected"] > 1  # wrong answers, over_limit and the bad line
    assert merged["funnel"] == whole["funnel"]  # every check's in / rejected / out
    report = json.loads((tmp_path / "merged" / "report.json").read_text())
    single = json.loads((tmp_path / "whole" / "report.json").read_text())
    for key in ("problems", "coverage", "teacher_accuracy", "kept_per_problem", "confidence"):
        assert report[key] == single[key], key


def test_merge_refuses_a_missing_shard_and_other_settings(tmp_path: Path, traces: Path) -> None:
    parts = [tmp_path / f"f{i}" for i in range(3)]
    for i, folder in enumerate(parts):
        _filter(traces, folder, shard=f"{i}/3")
    with pytest.raises(InputError, match="2/3 are missing"):
        run_filter(FilterConfig(merge=parts[:2], out=tmp_path / "m"))
    with pytest.raises(InputError, match="given twice"):
        run_filter(FilterConfig(merge=[*parts, parts[0]], out=tmp_path / "m"))
    run_filter(FilterConfig(traces=[traces], out=parts[2], shard="2/3", max_per_problem=3,
                            skip_invalid=True))
    with pytest.raises(InputError, match="max_per_problem") as info:
        run_filter(FilterConfig(merge=parts, out=tmp_path / "m"))
    assert info.value.field == "max_per_problem"
    assert not (tmp_path / "m" / "kept.jsonl").exists()


def test_merge_refuses_a_problem_in_two_folders(tmp_path: Path, traces: Path) -> None:
    _filter(traces, tmp_path / "a")
    _filter(traces, tmp_path / "b")  # the same traces twice, unsharded
    with pytest.raises(InputError, match="in two shards"):
        run_filter(FilterConfig(merge=[tmp_path / "a", tmp_path / "b"], out=tmp_path / "m"))
    assert not (tmp_path / "m" / "kept.jsonl").exists()


def test_filter_shard_auto_from_slurm(
    tmp_path: Path, traces: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in slurm(1, 2).items():
        monkeypatch.setenv(name, value)
    manifest = _filter(traces, tmp_path / "f", shard="auto")
    assert manifest["config"]["shard"] == "1/2"
    pids = {r["problem_id"] for r in rows(tmp_path / "f" / "kept.jsonl")}
    assert pids and all(in_shard(p, 1, 2) for p in pids)


# --- examples/slurm: the array submits its dependent filter job; the filter job merges --------

SLURM = Path(__file__).resolve().parents[2] / "examples" / "slurm"


def _recorder(path: Path, log: Path, answer: str = "") -> Path:
    path.write_text(f'#!/bin/sh\necho "$(basename $0) $*" >> {log}\n{answer}\n')
    path.chmod(0o755)
    return path


def test_generate_sbatch_submits_the_array_then_an_afterok_filter_job(tmp_path: Path) -> None:
    import os
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    _recorder(bin_dir / "sbatch", log, answer="echo 4242")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OUT": str(tmp_path / "o")}
    for name in [n for n in env if n.startswith("SLURM_")]:
        del env[name]
    subprocess.run(["bash", str(SLURM / "generate.sbatch")], env=env, check=True, timeout=60)
    calls = log.read_text().splitlines()
    assert calls[0] == f"sbatch --parsable {SLURM / 'generate.sbatch'}"
    assert calls[1].startswith("sbatch --dependency=afterok:4242 ")
    assert calls[1].endswith(str(SLURM / "filter.sbatch"))

    # Inside array task 3 of --array=2-5: shard 1 of 4, into its own folder.
    cotdistill = _recorder(bin_dir / "cotdistill", log)
    env |= slurm(3, 4, low=2) | {"COTDISTILL": str(cotdistill)}
    subprocess.run(["bash", str(SLURM / "generate.sbatch")], env=env, check=True, timeout=60)
    call = log.read_text().splitlines()[-1]
    assert "generate " in call and "--shard auto" in call
    assert f"--out {tmp_path / 'o'}/shard-1-of-4 " in call


def test_filter_sbatch_filters_every_shard_and_merges(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    problems = make_problems(tmp_path / "p.jsonl", count=12)
    out = tmp_path / "gen"
    config = GenerateConfig(problems=problems, out=out, shards=2, n=2, temperature=0.7)
    for shard in shard_configs(config):  # what the two array tasks leave behind
        run_generate(shard, backend=FakeBackend(responder=sometimes_wrong))
    eval_file = make_problems(tmp_path / "eval.jsonl", count=2)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli_path = bin_dir / "cotdistill"
    cli_path.write_text(f'#!/bin/sh\nexec {sys.executable} -m cotdistill "$@"\n')
    cli_path.chmod(0o755)
    env = {**os.environ, "OUT": str(out), "EVAL": str(eval_file), "COTDISTILL": str(cli_path)}
    subprocess.run(["bash", str(SLURM / "filter.sbatch")], env=env, check=True, timeout=300,
                   capture_output=True)
    manifest = json.loads((out / "filter" / "manifest.json").read_text())
    assert manifest["counts"]["traces_in"] == 24
    assert len(manifest["merged_from"]) == 2
    reasons = {r for row in rows(out / "filter" / "rejected.jsonl") for r in row["reasons"]}
    assert "contaminated" in reasons  # the eval set's questions were dropped in each shard


def test_yaml_generate_section_takes_the_scale_out_keys(tmp_path: Path) -> None:
    from cotdistill.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text("generate:\n  executor: ray\n  shards: 4\n  shard_gpus: 1\n"
                    "  base_url: [http://a:8000/v1, http://b:8000/v1]\n")
    config = load_config(GenerateConfig, path, section="generate")
    assert (config.executor, config.shards, config.shard_gpus) == ("ray", 4, 1.0)
    assert config.base_url == ["http://a:8000/v1", "http://b:8000/v1"]
    path.write_text("generate:\n  executor: slurm\n")
    with pytest.raises(InputError) as info:
        load_config(GenerateConfig, path, section="generate")
    assert info.value.field == "executor"
