"""Figures of the study reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def save_figure(path: Path, draw: Callable[..., Any], *args: Any, size: tuple[float, float] = (10, 3.6)) -> Path:
    """``draw(fig, *args)`` on a new figure, saved as ``path`` (PNG) and closed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pretrain.plot import save_atomic

    fig = plt.figure(figsize=size)
    try:
        draw(fig, *args)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return save_atomic(fig, path)
