"""CPU time of a command and every process it starts, for the benches that report CPU minutes.

A vLLM engine runs in processes of its own, and one whose parent did not wait for it is
re-parented to init, where `RUSAGE_CHILDREN` never sees it. `measured` makes the bench the
subreaper of its descendants (Linux `PR_SET_CHILD_SUBREAPER`), reaps each one itself and adds
up their `os.wait4` rusage: user + system seconds of the command and all its descendants,
orphans included, and the largest single process's peak RSS.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
ORPHAN_GRACE_S = 120  # descendants still running this long after the command ends are killed


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process (idempotent)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def tree_cpu(process: psutil.Process) -> float:
    """CPU seconds of a process, its reaped children and its live descendants."""
    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def reap() -> tuple[int, int, Any] | None:
    """One finished child of this process (any), or None."""
    try:
        pid, status, usage = os.wait4(-1, os.WNOHANG)
    except ChildProcessError:
        return None
    return (pid, status, usage) if pid else None


def measured(command: list[str], log: Path | None = None,
             watch: Path | None = None) -> dict[str, Any]:
    """Run `command` (output to `log`, or to this terminal); its CPU seconds and every
    descendant's, the largest single process's peak RSS, wall seconds and, when `watch` is
    given, the tree's CPU seconds when each checkpoint-N folder in it appeared. A failed
    command raises SystemExit naming it (and its log)."""
    become_subreaper()
    started = time.time()
    if log is None:
        child = subprocess.Popen(command, cwd=ROOT)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("w") as sink:
            child = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    process, marks = psutil.Process(child.pid), {}
    cpu, rss, status, ended = 0.0, 0, None, 0.0
    while status is None or psutil.Process().children():
        if status is not None and time.time() - ended > ORPHAN_GRACE_S:
            for orphan in psutil.Process().children():  # left running by the command
                orphan.kill()
        finished = reap()
        if finished is None:
            if watch is not None and watch.exists():
                for folder in watch.glob("checkpoint-*"):
                    marks.setdefault(folder.name, round(cpu + tree_cpu(process), 1))
            time.sleep(1 if status is not None else 2)
            continue
        pid, code, usage = finished
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss)
        if pid == child.pid:
            status, ended = os.waitstatus_to_exitcode(code), time.time()
    child.returncode = status
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed ({status})"
                         + (f"; see {log}" if log else ""))
    return {"command": " ".join(command), "cpu_s": round(cpu, 1),
            "peak_rss_gib": round(rss / 2**20, 2),
            "wall_s": round(time.time() - started, 1), "checkpoint_cpu_s": marks}
