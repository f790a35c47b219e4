"""matplotlib for the PNG figures every report writes: the Agg backend (no display needed),
imported on first use so that importing cotdistill stays instant.

    plt = pyplot()
"""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
