"""Where engine and library logs go: a file in the command's output folder, not the terminal.

A stage on vLLM prints hundreds of lines (engine INFO, weight-loading warnings, Triton
notices) from this process and from the engine processes it starts, on stdout as well as
stderr. By default they go to `<out>/logs/<command>.log`; the terminal keeps the progress
bars, the stage lines and the final table. `--verbose` or `COTDISTILL_LOG=info` (or debug,
warning, error) shows them on the terminal again, at that level, and still writes the file.

    with capture_logs(Path("runs/gen/logs/generate.log"), terminal_level(verbose=False)):
        run_generate(config)

How, in quiet mode:
- vLLM configures its logging on import in every process from `VLLM_LOGGING_CONFIG_PATH`, a
  JSON dictConfig written here before vLLM is imported, so its engine processes inherit it;
- file descriptors 1 and 2 point at the log file, so what any process writes there (C++
  warnings, child processes, Triton) lands in it, while this process's `sys.stdout` and
  `sys.stderr` are re-opened on the terminal for prints, progress bars and tracebacks;
- Python warnings and the root logger go to the file; transformers, datasets and
  huggingface_hub install their own terminal handlers when imported: those are replaced by
  propagation to the root logger as soon as the library loads.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import logging
import logging.config
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

from cotdistill.errors import InputError

ENV = "COTDISTILL_LOG"
LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s"
# Libraries that attach a handler on sys.stderr when their logging module is imported.
LIBRARY_LOGGING = {
    "transformers.utils.logging": "transformers",
    "datasets.utils.logging": "datasets",
    "huggingface_hub.utils.logging": "huggingface_hub",
}


def terminal_level(verbose: bool) -> str | None:
    """The level shown on the terminal; None: quiet (everything to the file only).

    `COTDISTILL_LOG` wins over `--verbose`: debug, info, warning, error, or quiet.
    """
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "quiet"):
        return "info" if verbose else None
    if value not in LEVELS:
        raise InputError(f"{ENV}={value!r}: choose one of {', '.join(LEVELS)} or quiet")
    return value


def logging_config(log_file: Path, terminal: str | None) -> dict[str, Any]:
    """A dictConfig for this process and vLLM's: everything to the file, some to the terminal."""
    file_level = "DEBUG" if terminal == "debug" else "INFO"
    handlers: dict[str, Any] = {
        "file": {
            "class": "logging.FileHandler", "filename": str(log_file), "mode": "a",
            "formatter": "plain", "level": file_level, "encoding": "utf-8",
        },
    }
    if terminal is not None:
        handlers["terminal"] = {
            "class": "logging.StreamHandler", "stream": "ext://sys.stderr",
            "formatter": "plain", "level": terminal.upper(),
        }
    names = list(handlers)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": FORMAT}},
        "handlers": handlers,
        "loggers": {"vllm": {"handlers": names, "level": file_level, "propagate": False}},
        "root": {"handlers": names, "level": file_level},
    }


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs `action(module)` right after the named module is imported (once)."""

    def __init__(self, name: str, action: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.action = action

    def find_spec(
        self, fullname: str, path: Any, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)  # let the other finders locate the real module
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module
        action = self.action

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            action(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _to_root(library: str) -> Callable[[ModuleType], None]:
    def route(module: ModuleType) -> None:
        configure = getattr(module, "_configure_library_root_logger", None)
        if callable(configure):
            configure()  # install the library's handler now, so it can be taken out
        logger = logging.getLogger(library)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
        # Weight-loading, shard-writing and dataset-mapping bars: one per model and file,
        # dozens per run. The stage's own bars (generate, train steps, evaluate) stay.
        quiet_bars = getattr(module, "disable_progress_bar", None)
        if callable(quiet_bars):
            quiet_bars()
        if library == "datasets":
            from datasets.utils.tqdm import disable_progress_bars

            disable_progress_bars()

    return route


def _route_libraries() -> list[_AfterImport]:
    hooks = []
    for module_name, library in LIBRARY_LOGGING.items():
        if module_name in sys.modules:
            _to_root(library)(sys.modules[module_name])
        else:
            hook = _AfterImport(module_name, _to_root(library))
            sys.meta_path.insert(0, hook)
            hooks.append(hook)
    return hooks


def _restore_bars() -> None:
    """Turn back on the library bars a quiet block turned off (for what runs after it)."""
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.enable_progress_bar()
    datasets_tqdm = sys.modules.get("datasets.utils.tqdm")
    if datasets_tqdm is not None:
        datasets_tqdm.enable_progress_bars()


def _reopen(fd: int, like: Any) -> io.TextIOWrapper:
    encoding = getattr(like, "encoding", None) or "utf-8"
    return open(fd, "w", buffering=1, encoding=encoding, errors="backslashreplace")  # noqa: SIM115


def _on_process_fds() -> bool:
    """Whether sys.stdout/sys.stderr write to descriptors 1 and 2 (not, e.g., a test's
    in-memory capture, which keeps what this process prints and has no descriptor to move)."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


@contextmanager
def capture_logs(log_file: Path, terminal: str | None) -> Iterator[Path]:
    """Send engine and library output to `log_file` while the block runs (see module doc).

    Set up before vLLM is imported: its processes read the environment set here. On an
    exception, one line on the terminal says where the full log is.
    """
    log_file = Path(log_file)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    config = logging_config(log_file, terminal)
    config_path = log_file.with_suffix(".logging.json")
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    environ = {
        "VLLM_CONFIGURE_LOGGING": "1",
        "VLLM_LOGGING_CONFIG_PATH": str(config_path),
        "VLLM_LOGGING_LEVEL": "DEBUG" if terminal == "debug" else "INFO",
    }
    saved_env = {key: os.environ.get(key) for key in environ}
    os.environ.update(environ)
    logging.config.dictConfig(config)
    logging.captureWarnings(True)
    hooks = _route_libraries() if terminal is None else []

    saved: tuple[int, int, Any, Any] | None = None
    if terminal is None and _on_process_fds():
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2), sys.stdout, sys.stderr)
        target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(target, 1)
        os.dup2(target, 2)
        os.close(target)
        sys.stdout = _reopen(os.dup(saved[0]), saved[2])
        sys.stderr = _reopen(os.dup(saved[1]), saved[3])
    was_quiet = _QUIET[0]
    _QUIET[0] = terminal is None
    try:
        yield log_file
    except InputError:
        raise  # one line that says what to change; the log has nothing to add
    except BaseException:
        print(f"(engine and library logs: {log_file})", file=sys.stderr, flush=True)
        raise
    finally:
        _QUIET[0] = was_quiet
        if terminal is None:
            _restore_bars()
        if saved is not None:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
                stream.close()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sys.stdout, sys.stderr = saved[2], saved[3]
        for hook in hooks:
            if hook in sys.meta_path:
                sys.meta_path.remove(hook)
        logging.captureWarnings(False)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def is_quiet() -> bool:
    """Whether a quiet `capture_logs` block is running (library output goes to its file)."""
    return _QUIET[0]


_QUIET = [False]


def log_file_for(out: Path | None, command: str) -> Path:
    """`<out>/logs/<command>.log`; without an output folder, the user cache's logs folder."""
    if out is None:
        from cotdistill.infra.files import cache_dir

        return cache_dir() / "logs" / f"{command.replace(' ', '-')}.log"
    return Path(out) / "logs" / f"{command.replace(' ', '-')}.log"
