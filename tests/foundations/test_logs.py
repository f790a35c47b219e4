"""Quiet by default (cotdistill/logs.py): engine and library output goes to the log file, the
terminal keeps the stage's own lines; --verbose / COTDISTILL_LOG bring the logs back.

Each case runs in a child process: file descriptors 1 and 2 are what is being redirected.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cotdistill.errors import InputError
from cotdistill.infra.logs import logging_config, terminal_level

SCRIPT = r"""
import logging, os, subprocess, sys, warnings
from pathlib import Path
from cotdistill.infra.logs import capture_logs

with capture_logs(Path(sys.argv[1]), None if sys.argv[2] == "quiet" else sys.argv[2]):
    print("stage line")
    sys.stderr.write("progress bar\n")
    logging.getLogger("vllm.engine").warning("engine warning")
    logging.getLogger("vllm.engine").info("engine info")
    warnings.warn("python warning")
    os.write(2, b"written to fd 2\n")
    os.write(1, b"written to fd 1\n")
    subprocess.run([sys.executable, "-c",
                    "import sys; print('child stdout'); print('child stderr', file=sys.stderr)"])
    import transformers.utils.logging as hf_logging
    hf_logging.get_logger("transformers.modeling").warning("transformers warning")
    print("vllm config:", os.environ["VLLM_LOGGING_CONFIG_PATH"])
    if len(sys.argv) > 3:
        raise RuntimeError("engine died")
print("after the stage")
"""
LIBRARY_LINES = ["engine warning", "engine info", "python warning", "written to fd 2",
                 "written to fd 1", "child stdout", "child stderr", "transformers warning"]


def run(tmp_path: Path, level: str, *extra: str) -> tuple[subprocess.CompletedProcess, str]:
    log = tmp_path / "logs" / "generate.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(log), level, *extra],
        capture_output=True, text=True, timeout=120,
    )
    return done, log.read_text() if log.exists() else ""


def test_quiet_by_default_everything_else_goes_to_the_file(tmp_path: Path) -> None:
    done, log = run(tmp_path, "quiet")
    assert done.returncode == 0, done.stderr
    terminal = done.stdout.splitlines()
    assert [line for line in terminal if not line.startswith("vllm config:")] == [
        "stage line", "after the stage"
    ]
    assert done.stderr == "progress bar\n"
    for text in LIBRARY_LINES:
        assert text in log, text
    # vLLM processes configure themselves from this file: the same log, nothing on a stream.
    config_path = Path(next(x for x in terminal if x.startswith("vllm config:")).split(": ")[1])
    config = json.loads(config_path.read_text())
    assert set(config["loggers"]["vllm"]["handlers"]) == {"file"}
    assert config["handlers"]["file"]["filename"] == str(tmp_path / "logs" / "generate.log")


def test_verbose_shows_logs_on_the_terminal_and_still_writes_the_file(tmp_path: Path) -> None:
    done, log = run(tmp_path, "info")
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    for text in ("engine warning", "engine info", "transformers warning", "child stdout"):
        assert text in terminal, text
    assert "engine info" in log
    done, _ = run(tmp_path, "warning")
    assert "engine warning" in done.stderr and "engine info" not in done.stderr


def test_a_failure_says_where_the_log_is(tmp_path: Path) -> None:
    done, log = run(tmp_path, "quiet", "fail")
    assert done.returncode == 1
    assert f"(engine and library logs: {tmp_path / 'logs' / 'generate.log'})" in done.stderr
    assert "RuntimeError: engine died" in done.stderr  # the traceback reaches the terminal


def test_levels_from_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COTDISTILL_LOG", raising=False)
    assert terminal_level(verbose=False) is None
    assert terminal_level(verbose=True) == "info"
    monkeypatch.setenv("COTDISTILL_LOG", "DEBUG")
    assert terminal_level(verbose=False) == "debug"
    monkeypatch.setenv("COTDISTILL_LOG", "quiet")
    assert terminal_level(verbose=False) is None
    monkeypatch.setenv("COTDISTILL_LOG", "loud")
    with pytest.raises(InputError, match="COTDISTILL_LOG"):
        terminal_level(verbose=False)
    config = logging_config(Path("x.log"), "debug")
    assert config["handlers"]["terminal"]["level"] == "DEBUG"
    assert config["root"]["level"] == "DEBUG"


@pytest.mark.train
def test_quiet_training_shows_its_step_bar_and_stage_line_only(tiny_model: Path,
                                                              tmp_path: Path) -> None:
    """Weight-loading, dataset-mapping and shard-writing bars and the Trainer's metrics dicts
    are library output: quiet, the terminal has the step bar and the stage's summary line."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {i} plus 1?"},
        {"role": "assistant", "content": f"{i} plus 1 is {i + 1}."}]}) + "\n" for i in range(8)))
    out = tmp_path / "student"
    args = [sys.executable, "-m", "cotdistill", "train", "--data", str(data), "--student",
            str(tiny_model), "--out", str(out), "--no-lora", "--max-steps", "2",
            "--logging-steps", "1", "--batch-size", "4"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "COTDISTILL_LOG": ""})
    assert done.returncode == 0, done.stderr
    terminal = done.stdout + done.stderr
    for library_output in ("Loading weights", "Writing model shards", "Building labels",
                           "'loss':", "train_runtime"):
        assert library_output not in terminal, library_output
    assert "2/2" in terminal  # the step bar
    assert "train: 2 steps" in terminal
    # The metrics the terminal no longer shows are in the run's own log.
    assert len([line for line in (out / "train_log.jsonl").read_text().splitlines()
                if '"loss"' in line]) == 2
