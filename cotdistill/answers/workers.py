"""Checking many answers in worker processes (math-verify's timeouts need a main thread), and
grouping equal answers.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from cotdistill.answers.equivalence import (
    Verdict,
    VerifyStats,
    answer_key,
    fast_verdict,
    verify_one,
)

# Seconds a worker may overrun its own alarm before the parent kills it.
HARD_LIMIT_GRACE_S = 1.0


# Items sent to a worker at once; results still come back one by one (for the time limit).
CHUNK = 32


def _worker(conn: Connection, timeout_s: float) -> None:
    """Worker loop: receive chunks of (index, gold, predicted), send back (index, verdict)."""
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for index, gold, predicted in chunk:
            try:
                verdict = verify_one(gold, predicted, timeout_s)
            except Exception:  # an error inside math-verify: the pair cannot be checked
                verdict = "unverifiable"
            conn.send((index, verdict))


@dataclass
class _Slot:
    process: Any
    conn: Connection
    chunk: deque[tuple[int, str, str]] = field(default_factory=deque)
    started: float = 0.0  # when the item at the head of `chunk` began


def _context() -> Any:
    # forkserver: workers fork from a clean helper process that has math-verify imported once,
    # so they start fast and never inherit threads or engines from the caller (vLLM, tqdm).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["math_verify", "cotdistill.verify"])
    return ctx


def _start(ctx: Any, timeout_s: float, worker: Callable[[Connection, float], None]) -> _Slot:
    parent, child = ctx.Pipe()
    process = ctx.Process(target=worker, args=(child, timeout_s), daemon=True)
    process.start()
    child.close()
    return _Slot(process, parent)


def _stop(slot: _Slot, kill: bool) -> None:
    if kill:
        slot.process.kill()
    else:
        try:
            slot.conn.send(None)
        except (BrokenPipeError, OSError):
            slot.process.kill()
    slot.process.join(timeout=5)
    slot.conn.close()


def _verify_in_workers(
    items: list[tuple[int, str, str]],
    timeout_s: float,
    processes: int,
    stats: VerifyStats,
    on_result: Callable[[int], None] | None,
    worker: Callable[[Connection, float], None] = _worker,
) -> dict[int, Verdict]:
    """Run items through a pool of workers; a worker stuck past the hard limit is replaced.

    `worker` is the loop each process runs (tests pass one that ignores the alarm).
    """
    results: dict[int, Verdict] = {}
    queue: deque[tuple[int, str, str]] = deque(items)
    ctx = _context()
    hard_limit = timeout_s + HARD_LIMIT_GRACE_S
    count = min(processes, -(-len(items) // CHUNK))
    slots = [_start(ctx, timeout_s, worker) for _ in range(count)]

    def feed(slot: _Slot) -> None:
        chunk = [queue.popleft() for _ in range(min(CHUNK, len(queue)))]
        if chunk:
            slot.chunk = deque(chunk)
            slot.started = time.monotonic()
            slot.conn.send(chunk)

    def finish(slot: _Slot, verdict: Verdict) -> None:
        index = slot.chunk.popleft()[0]
        results[index] = verdict
        slot.started = time.monotonic()
        if on_result is not None:
            on_result(index)

    def replace(slot: _Slot, verdict: Verdict) -> _Slot:
        """Give the worker's current item `verdict`, requeue the rest, start a new worker."""
        finish(slot, verdict)
        queue.extendleft(reversed(slot.chunk))
        slot.chunk.clear()
        _stop(slot, kill=True)
        stats.workers_killed += 1
        fresh = _start(ctx, timeout_s, worker)
        slots[slots.index(slot)] = fresh
        return fresh

    try:
        for slot in slots:
            feed(slot)
        while len(results) < len(items):
            busy = [s for s in slots if s.chunk]
            now = time.monotonic()
            next_deadline = min(s.started + hard_limit for s in busy)
            ready = wait([s.conn for s in busy], timeout=max(0.0, next_deadline - now))
            for slot in busy:
                try:
                    while slot.chunk and slot.conn in ready and slot.conn.poll():
                        index, verdict = slot.conn.recv()
                        if index != slot.chunk[0][0]:
                            raise RuntimeError("verify worker answered out of order")
                        finish(slot, verdict)
                except (EOFError, ConnectionResetError):
                    # The worker died on this item (out of memory, a crash in C code).
                    slot = replace(slot, "unverifiable")
                if slot.chunk and time.monotonic() - slot.started > hard_limit:
                    slot = replace(slot, "timeout")
                if not slot.chunk:
                    feed(slot)
    finally:
        for slot in slots:
            _stop(slot, kill=bool(slot.chunk))
    return results


def check_answers(
    pairs: Sequence[tuple[str | None, str | None]],
    *,
    timeout_s: float = 5.0,
    processes: int | None = None,
    fast_path: bool = True,
    stats: VerifyStats | None = None,
    on_result: Callable[[int], None] | None = None,
) -> list[Verdict]:
    """Verdict for each (gold, predicted) pair, in order; never hangs.

    A None on either side is "unverifiable"; so is a side math-verify cannot parse. A pair that
    exceeds `timeout_s` is "timeout". `fast_path=False` sends every pair through math-verify
    (benchmarks). `on_result(k)` is called as verdicts arrive (progress bars).
    """
    started = time.perf_counter()
    stats = stats if stats is not None else VerifyStats()
    verdicts: list[Verdict | None] = [None] * len(pairs)
    unique: dict[tuple[str, str], list[int]] = {}
    for position, (gold, predicted) in enumerate(pairs):
        if gold is None or predicted is None or not gold.strip() or not predicted.strip():
            verdicts[position] = "unverifiable"
            stats.unverifiable_missing += 1
            continue
        if fast_path:
            quick = fast_verdict(gold, predicted)
            if quick is not None:
                verdicts[position] = quick
                stats.fast_path += 1
                continue
        unique.setdefault((gold, predicted), []).append(position)
    if on_result is not None:
        on_result(len(pairs) - sum(len(v) for v in unique.values()))

    if unique:
        keys = list(unique)
        items = [(i, gold, predicted) for i, (gold, predicted) in enumerate(keys)]
        workers = processes or os.cpu_count() or 1

        def progress(index: int) -> None:
            if on_result is not None:
                on_result(len(unique[keys[index]]))

        found = _verify_in_workers(items, timeout_s, workers, stats, progress)
        for i, key in enumerate(keys):
            for position in unique[key]:
                verdicts[position] = found[i]
        stats.unique_checked += len(keys)

    done = [v if v is not None else "unverifiable" for v in verdicts]
    stats.pairs += len(pairs)
    stats.timeouts += done.count("timeout")
    for verdict in done:
        stats.by_verdict[verdict] = stats.by_verdict.get(verdict, 0) + 1
    stats.seconds += time.perf_counter() - started
    return done  # type: ignore[return-value]


def group_equivalent_many(
    answer_lists: Sequence[Sequence[str | None]],
    *,
    timeout_s: float = 5.0,
    processes: int | None = None,
    stats: VerifyStats | None = None,
) -> list[list[list[int]]]:
    """For each list of answers (one problem's samples), the groups of equal answers.

    A group is a list of indices into that list; groups come in order of first appearance and
    answers that are None belong to none. Answers with one `answer_key` are one group at once
    (cheap); then a group joins the earliest group whose first answer math-verify finds equal
    to its own (earlier answer as gold, as the filter checks against a label), so `0.5`, `1/2`
    and `\\frac{1}{2}` are one group. `fast_verdict` decides plain numbers without math-verify;
    the pairs left go through `check_answers` in one batch for all lists.
    """
    keyed: list[list[list[int]]] = []
    for answers in answer_lists:
        by_key: dict[str, list[int]] = {}
        for index, answer in enumerate(answers):
            if answer is not None and answer.strip():
                by_key.setdefault(answer_key(answer), []).append(index)
        keyed.append(list(by_key.values()))

    equal: dict[tuple[int, int, int], bool] = {}
    pending: list[tuple[int, int, int]] = []
    for list_index, groups in enumerate(keyed):
        answers = answer_lists[list_index]
        for j in range(1, len(groups)):
            for i in range(j):
                quick = fast_verdict(answers[groups[i][0]], answers[groups[j][0]])  # type: ignore[arg-type]
                if quick is None:
                    pending.append((list_index, i, j))
                else:
                    equal[(list_index, i, j)] = quick == "correct"
    verdicts = check_answers(
        [(answer_lists[li][keyed[li][i][0]], answer_lists[li][keyed[li][j][0]])
         for li, i, j in pending],
        timeout_s=timeout_s, processes=processes, stats=stats,
    ) if pending else []
    for pair, verdict in zip(pending, verdicts, strict=True):
        equal[pair] = verdict == "correct"  # a timeout or unparsable pair is not merged

    result = []
    for list_index, groups in enumerate(keyed):
        heads: list[int] = []  # key-group index that starts each merged group
        merged: list[list[int]] = []
        for j, members in enumerate(groups):
            target = next((n for n, i in enumerate(heads) if equal[(list_index, i, j)]), None)
            if target is None:
                heads.append(j)
                merged.append(list(members))
            else:
                merged[target].extend(members)
        result.append([sorted(m) for m in merged])
    return result


def group_equivalent(answers: Sequence[str | None], **options: Any) -> list[list[int]]:
    """The groups of equal answers of one list (see `group_equivalent_many`)."""
    return group_equivalent_many([answers], **options)[0]
