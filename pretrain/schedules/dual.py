"""The dual view of an LR schedule under AdamW (D2Z paper, section 3.1, Eq. 5; Figures 2, 25-27).

With decoupled weight decay ``lambda`` and ``alpha_t = eta_t * lambda``, an
AdamW update is ``theta_t = (1 - alpha_t) theta_{t-1} + alpha_t x_t`` (with
``x_t = -update_t / lambda``), so the weights after update ``t`` are a convex
combination of the initial weights and every update::

    c_{t,0} = prod_{j=1..t} (1 - alpha_j)                    on the initial weights
    c_{t,i} = alpha_i * prod_{j=i+1..t} (1 - alpha_j)        on update i

and ``c_{t,0} + sum_i c_{t,i} = 1``. ``alpha`` here is that of the
weight-decayed matrices (under muP their LR is the base LR / m).

The *window* at ``f`` is the number of most recent updates that carry the
fraction ``f`` of the weight on updates (``1 - c_{t,0}``): small windows mean
the weights average over few recent updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def smoothing(multipliers: Sequence[float], alpha_peak: float) -> np.ndarray:
    """alpha_t for t = 1..T: the peak's alpha times the schedule multiplier of each update."""
    alpha = alpha_peak * np.asarray(multipliers, dtype=np.float64)
    if alpha.size and (alpha.max() >= 1.0 or alpha.min() < 0.0):
        raise ValueError(f"alpha_t = LR x weight decay must lie in [0, 1); the largest is {alpha.max():.4g}")
    return alpha


def coefficients(alpha: np.ndarray, t: int | None = None) -> tuple[float, np.ndarray]:
    """``(c_{t,0}, [c_{t,1}, ..., c_{t,t}])`` after update ``t`` (default: the last), in log space."""
    a = alpha[: len(alpha) if t is None else t]
    log_keep = np.log1p(-a)  # log(1 - alpha_j)
    # after_i = sum_{j > i} log(1 - alpha_j), for i = 1..t
    after = np.concatenate([np.cumsum(log_keep[::-1])[::-1][1:], [0.0]]) if a.size else a
    return float(np.exp(log_keep.sum())), a * np.exp(after)


def window(c: np.ndarray, fraction: float) -> int:
    """The number of most recent updates carrying ``fraction`` of the weight on updates."""
    total = float(c.sum())
    if total <= 0.0:
        return 0
    recent_first = np.cumsum(c[::-1])
    return min(int(np.searchsorted(recent_first, fraction * total * (1 - 1e-12))) + 1, len(c))


@dataclass(frozen=True)
class DualSummary:
    steps: int
    c0: float  # weight left on the initial weights
    window50: int
    window90: int

    def as_dict(self) -> dict:
        return {"steps": self.steps, "c0": self.c0, "window50": self.window50, "window90": self.window90}


def summarize(alpha: np.ndarray, t: int | None = None) -> DualSummary:
    c0, c = coefficients(alpha, t)
    return DualSummary(len(c), c0, window(c, 0.5), window(c, 0.9))
