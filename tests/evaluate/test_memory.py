"""Peak memory is measured per stage and says what it measured (cotdistill/memory.py)."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from cotdistill.evaluate.config import EvaluateConfig
from cotdistill.evaluate.per_model import stage_memory

HOLD = 600 * 2**20


def _hold(ready: Any, done: Any) -> None:
    block = b"x" * HOLD  # written, so resident
    ready.set()
    done.wait(30)
    del block


def _peak_with_child(method: str) -> tuple[int, int]:
    """(peak measured by evaluate while a `method` child holds HOLD bytes, baseline)."""
    import psutil

    ctx = multiprocessing.get_context(method)
    ready, done = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(ready, done), daemon=True)
    child.start()
    try:
        assert ready.wait(60)
        baseline = psutil.Process().memory_info().rss
        memory = stage_memory(EvaluateConfig())
        assert memory is not None
        with memory:
            time.sleep(0.3)
        return memory.peak_bytes, baseline
    finally:
        done.set()
        child.join(10)


def test_evaluate_peak_counts_the_engine_but_not_math_verify_workers() -> None:
    # An engine child (fork, as vLLM's CPU engine) counts; a forkserver child, where
    # cotdistill.verify runs math-verify, does not.
    engine_peak, baseline = _peak_with_child("fork")
    assert engine_peak > baseline + HOLD * 0.9
    verify_peak, baseline = _peak_with_child("forkserver")
    assert verify_peak < baseline + HOLD * 0.5
    memory = stage_memory(EvaluateConfig())
    assert memory is not None and "math-verify workers excluded" in memory.what


def test_evaluate_measures_nothing_for_a_remote_server() -> None:
    assert stage_memory(EvaluateConfig(backend="openai", base_url="http://x/v1")) is None
