"""One writer per output folder: an exclusive, non-blocking `flock` on `<out>/.lock`.

Two runs started on the same `--out` (two terminals, a job scheduled twice) would both append
to the same files. Every stage's `run_*` function takes this lock first; the second run stops
with one line naming the pid that holds it. The kernel drops a `flock` when its holder dies,
even by kill -9, so a crash never leaves a stale lock behind (the `.lock` file stays, and means
nothing by itself; a clean exit leaves it empty).

    with output_lock(Path("runs/gen"), "generate"):
        ...

    @locks_output("generate")          # locks config.out around the whole call
    def run_generate(config): ...

Locks on different folders are independent, so `run` can hold its folder while each stage
holds its own subfolder. Taking a lock this process already holds is a no-op (the same writer).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from cotdistill.errors import InputError

LOCK = ".lock"
F = TypeVar("F", bound=Callable[..., Any])

# Folders this process holds, so a nested call on the same folder does not lock itself out:
# flock conflicts between two open files of one process as well as between processes.
_held: dict[Path, int] = {}


class FolderLocked(InputError):
    """Another process is writing to the folder."""


def _holder(path: Path) -> str:
    """'generate run (pid 123)' from the lock file's "123 generate"."""
    try:
        pid, _, stage = path.read_text().strip().partition(" ")
    except OSError:
        pid, stage = "", ""
    # Empty between the holder's flock and its write: a moment, but name what we know.
    return f"{stage or 'cotdistill'} run (pid {pid or 'unknown'})"


def _acquire(path: Path) -> int:
    """An open descriptor of `path` holding its flock; BlockingIOError if another has it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # A run that failed on bad input removes the lock file it created; if that happened
            # between our open and flock, we hold a lock on a deleted file: open the new one.
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextmanager
def output_lock(folder: Path, stage: str) -> Iterator[None]:
    """Hold `<folder>/.lock` for the duration; raise FolderLocked if another process has it.

    A folder this call had to create is removed again if the body fails while the folder
    holds nothing but the lock: bad input must not leave empty output folders behind.
    """
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder] += 1
        try:
            yield
        finally:
            _held[folder] -= 1
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    try:
        fd = _acquire(path)
    except BlockingIOError:
        raise FolderLocked(
            f"another {_holder(path)} is writing to this folder; wait for it to finish or use "
            "another --out",
            file=folder,
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        # Some network filesystems have no flock: run unguarded rather than not at all.
        print(f"{stage}: cannot lock {folder} ({exc.strerror}); make sure no other run writes "
              "there", file=sys.stderr)
        yield
        return
    failed = False
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {stage}\n".encode())
        _held[folder] = 1
        yield
    except BaseException:
        failed = True
        raise
    finally:
        _held.pop(folder, None)
        # Emptied on release, so folder hashes (model folders are hashed whole) do not change
        # with the pid of the last writer.
        os.ftruncate(fd, 0)
        if failed and created and [p.name for p in folder.iterdir()] == [LOCK]:
            try:
                path.unlink()  # still holding the lock, so no one else can be using this file
                folder.rmdir()
            except OSError:
                pass  # another run has just started here: the folder is its now
        os.close(fd)  # closing the last descriptor releases the flock


def _is_main_rank() -> bool:
    # Under accelerate / torchrun every rank runs the stage on the same `out`: rank 0 locks.
    return int(os.environ.get("RANK", "0")) == 0


def locks_output(stage: str, main_rank_only: bool = False) -> Callable[[F], F]:
    """Decorate `run_*(config, ...)` to hold `config.out` for the whole call.

    Nothing is locked when `config.out` is unset (the stage reports that itself) or on a dry
    run (which writes nothing and must not create the folder).
    """

    def wrap(run: F) -> F:
        @functools.wraps(run)
        def locked(config: Any, *args: Any, **kwargs: Any) -> Any:
            out = getattr(config, "out", None)
            if out is None or getattr(config, "dry_run", False) or (
                main_rank_only and not _is_main_rank()
            ):
                return run(config, *args, **kwargs)
            with output_lock(Path(out), stage):
                return run(config, *args, **kwargs)

        return locked  # type: ignore[return-value]

    return wrap
