"""Errors that carry where bad input came from, so a user can fix it without a traceback."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: names the file, line and field when known.

    Raised before any model is loaded; the CLI prints it as one line and exits with status 2.
    """

    def __init__(
        self,
        message: str,
        *,
        file: Path | str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file + (f":{self.line}" if self.line is not None else ""))
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class ServiceError(RuntimeError):
    """A remote service (an OpenAI-compatible server) kept failing after its retries.

    Not the user's input, but not a bug either: the CLI prints it as one line, exit status 1.
    """
