"""The progress bar every long stage shows: count, rate and ETA (tqdm)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, unit: str = "sample", scale: bool = False,
                 leave: bool = True) -> Any:
    """`leave=False` for a step of a stage whose summary line follows (the bar is cleared
    when done): the terminal keeps one line per stage, not one per bar."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=scale, dynamic_ncols=True, mininterval=0.5,
        leave=leave,
    )
