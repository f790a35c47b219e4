"""Killing a stage mid-run, as `kill -9` does, for the resume tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


def kill_when_written(args: Sequence[str], watch: Path, lines: int, *, cwd: Path,
                      env: dict[str, str] | None = None, timeout: float = 60.0) -> int:
    """Run `args`; SIGKILL it once `watch` holds `lines` lines (or after `timeout` seconds).
    Returns the exit code (-SIGKILL when it was still running)."""
    proc = subprocess.Popen(list(args), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if watch.exists() and watch.read_bytes().count(b"\n") >= lines:
                break
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode
