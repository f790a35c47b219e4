"""The progress bar every long stage shows: count, rate and ETA (tqdm)."""

from __future__ import annotations

from typing import Any


def progress_bar(total: int, desc: str, unit: str = "sample", scale: bool = False) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=scale, dynamic_ncols=True, mininterval=0.5
    )
