"""One writer per output folder: a second run on the same --out stops naming the holder's pid,
a killed holder leaves no stale lock, nested locks on different folders do not block, and a
traces file that two runs once both appended to is repaired on resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cotdistill.backends.fake import FakeBackend
from cotdistill.cli import main as cli_main
from cotdistill.errors import InputError
from cotdistill.generate.config import GenerateConfig
from cotdistill.generate.stage import run_generate
from cotdistill.infra.locking import LOCK, FolderLocked, locks_output, output_lock

ROOT = Path(__file__).resolve().parents[2]

SLOW_GENERATE = textwrap.dedent(
    """
    import sys, time
    from cotdistill.backends.fake import FakeBackend, add_numbers
    from cotdistill.generate.config import GenerateConfig
    from cotdistill.generate.stage import run_generate

    def slow(question, index):
        time.sleep(0.5)
        return add_numbers(question, index)

    config = GenerateConfig(problems=sys.argv[1], out=sys.argv[2], n=2, batch_size=1)
    run_generate(config, backend=FakeBackend(responder=slow))
    """
)


def make_problems(path: Path, count: int) -> Path:
    rows = [{"id": f"p{i}", "question": f"What is {i} + {i}?", "answer": str(2 * i)}
            for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_second_generate_on_the_same_out_stops_naming_the_pid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 40)
    out = tmp_path / "out"
    script = tmp_path / "slow.py"
    script.write_text(SLOW_GENERATE)
    first = subprocess.Popen([sys.executable, str(script), str(problems), str(out)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        traces = out / "traces.jsonl"
        wait_for(lambda: traces.exists() and traces.stat().st_size > 0)
        before = traces.read_bytes()
        code = cli_main(["generate", "--problems", str(problems), "--out", str(out),
                         "--n", "2"])
        err = capsys.readouterr().err
        assert code == 2
        assert f"another generate run (pid {first.pid}) is writing" in err and str(out) in err
        assert len(err.strip().splitlines()) == 1
        assert traces.read_bytes().startswith(before)  # the second run wrote nothing
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # kill -9 leaves no stale lock: the next run takes the folder and finishes the set.
    manifest = run_generate(GenerateConfig(problems=problems, out=out, n=2, batch_size=1),
                            backend=FakeBackend())
    rows = [json.loads(line) for line in (out / "traces.jsonl").open()]
    pairs = [(r["problem_id"], r["sample_index"]) for r in rows]
    assert sorted(pairs) == sorted((f"p{i}", k) for i in range(40) for k in range(2))
    assert manifest["counts"]["samples"] == 80
    assert (out / LOCK).read_text() == ""  # emptied on release: folder hashes stay stable


HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cotdistill.infra.locking import output_lock

    with output_lock(Path(sys.argv[1]), "filter"):
        print("held", flush=True)
        time.sleep(120)
    """
)


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(FolderLocked) as info, output_lock(out, "filter"):
            pass
        assert f"another filter run (pid {holder.pid})" in info.value.message
        assert info.value.file == str(out.resolve())
        assert isinstance(info.value, InputError)  # the CLI prints it as one line, status 2
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait()
    with output_lock(out, "filter"):
        assert (out / LOCK).read_text() == f"{os.getpid()} filter\n"


def test_nested_locks_on_different_folders_and_reentry(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with output_lock(run_dir, "run"):
        # `run` holds its folder while each stage holds its own subfolder.
        with output_lock(run_dir / "generate", "generate"):
            pass
        with output_lock(run_dir / "filter", "filter"), output_lock(run_dir, "run"):
            pass  # the same process taking its own folder again is the same writer
        assert (run_dir / LOCK).read_text().startswith(str(os.getpid()))


def test_a_failing_run_leaves_no_folder_it_created(tmp_path: Path) -> None:
    class Config:
        out = tmp_path / "new" / "out"

    @locks_output("stage")
    def failing(config: Config) -> None:
        assert (config.out / LOCK).exists()
        raise InputError("bad input")

    with pytest.raises(InputError):
        failing(Config())
    assert not Config.out.exists()


def test_resume_drops_duplicate_sample_lines_keeping_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    problems = make_problems(tmp_path / "p.jsonl", 5)
    out = tmp_path / "out"
    config = GenerateConfig(problems=problems, out=out, n=2)
    run_generate(config, backend=FakeBackend())
    traces = out / "traces.jsonl"
    original = traces.read_text().splitlines(keepends=True)
    # What two unlocked runs left: every sample twice, the second copies different.
    copies = [json.dumps({**json.loads(line), "completion": "second copy"}) + "\n"
              for line in original]
    traces.write_text("".join(original[:4] + copies[:4] + original[4:] + copies[4:]))

    backend = FakeBackend()
    manifest = run_generate(config, backend=backend)
    assert backend.calls == 0  # every problem was complete: nothing regenerated
    rows = [json.loads(line) for line in traces.open()]
    assert sorted(json.dumps(r, sort_keys=True) for r in rows) == sorted(
        json.dumps(json.loads(line), sort_keys=True) for line in original)
    assert manifest["counts"]["samples"] == 10
    assert "dropped 10 duplicate (problem, sample) lines" in capsys.readouterr().out
