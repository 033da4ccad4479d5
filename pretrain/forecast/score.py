"""Scoring a fitted law on held-out curves, as the MPL authors do (thu-yao-01-luo/MultiPowerLaw, src/evaluation.py).

Per held-out run, over its points after warmup (window means are compared with the law's mean over the
same windows):

- PredE: the mean of |pred - actual| / actual over the curve;
- WorstE: the largest such error on the curve;
- the final-loss error: (pred - actual) / actual at the curve's last point (the final evaluation, or the
  window ending at the run's last update: the same absolute window for every run of that length);
- R²: per run, and over all held-out points pooled (:func:`pooled_r2`);
- where it errs: PredE over the points at the peak LR (``stable``) and below it (``decay``).

A trivial baseline (:class:`ShiftBaseline`) is scored the same way: the law has to beat it.
:func:`spearman_interval` ranks schedules over seeds with a bootstrap interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .fit import DECAY_MIN, ForecastError, RunCurve, _as_curve, anneal_fraction, window_steps
from .laws import warmup_of


@dataclass
class CurveScore:
    """How a prediction fits one held-out curve (relative errors as fractions)."""

    name: str
    points: int
    prede: float
    worste: float
    final_err: float  # signed: (pred - actual) / actual at the last point
    r2: float
    actual_final: float
    predicted_final: float
    stable_prede: float  # PredE over the points at the peak LR (NaN if none)
    decay_prede: float  # PredE over the points below the peak LR (NaN if none)

    def row(self) -> dict:
        return asdict(self)


def scored_points(curve: RunCurve) -> np.ndarray:
    """Which of the curve's points are scored: those whose window starts after the warmup."""
    W = warmup_of(curve.lrs)
    return (np.asarray(curve.steps) - curve.window + 1 > W) & np.isfinite(curve.losses)


def r2(actual: np.ndarray, pred: np.ndarray) -> float:
    """1 - SS_res / SS_tot (NaN with fewer than 2 points or a constant ``actual``)."""
    a, p = np.asarray(actual, float), np.asarray(pred, float)
    if a.size < 2:
        return math.nan
    tot = float(np.sum((a - a.mean()) ** 2))
    return 1.0 - float(np.sum((a - p) ** 2)) / tot if tot > 0 else math.nan


def score_curve(curve: RunCurve, pred: np.ndarray, name: str | None = None) -> CurveScore:
    """Score ``pred`` (the prediction at each of the curve's points) on the curve's points after warmup."""
    pred = np.asarray(pred, dtype=np.float64)
    if pred.shape != np.shape(curve.losses):
        raise ForecastError(f"{curve.name}: {pred.size} predictions for {np.size(curve.losses)} points")
    keep = scored_points(curve)
    if not keep.any():
        raise ForecastError(f"{curve.name}: no points after the warmup ({warmup_of(curve.lrs)} updates) to score")
    a, p = np.asarray(curve.losses, float)[keep], pred[keep]
    rel = np.abs(p - a) / a
    # the phase of each point: the LR at its last update against the peak after warmup
    W = warmup_of(curve.lrs)
    peak = curve.lrs[W - 1]
    lr_at = curve.lrs[np.asarray(curve.steps)[keep] - 1]
    decaying = lr_at < peak - DECAY_MIN * curve.lrs.max()

    def mean(x: np.ndarray) -> float:
        return float(x.mean()) if x.size else math.nan

    return CurveScore(name or curve.name, int(a.size), float(rel.mean()), float(rel.max()),
                      float((p[-1] - a[-1]) / a[-1]), r2(a, p), float(a[-1]), float(p[-1]),
                      mean(rel[~decaying]), mean(rel[decaying]))


def pooled_r2(curves: Sequence[RunCurve], preds: Sequence[np.ndarray]) -> float:
    """R² over every scored point of every held-out curve together."""
    a = [np.asarray(c.losses, float)[scored_points(c)] for c in curves]
    p = [np.asarray(q, float)[scored_points(c)] for c, q in zip(curves, preds, strict=True)]
    return r2(np.concatenate(a), np.concatenate(p)) if a else math.nan


@dataclass
class Summary:
    """Medians over the held-out runs (and the pooled R²)."""

    runs: int
    prede: float
    worste: float  # the median of the per-run WorstE
    worst_of_all: float  # the largest WorstE
    final_abs_err: float  # median |final-loss error|
    r2_pooled: float


def summarize(scores: Sequence[CurveScore], r2_pooled: float) -> Summary:
    if not scores:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, r2_pooled)
    return Summary(len(scores), float(np.median([s.prede for s in scores])), float(np.median([s.worste for s in scores])),
                   float(max(s.worste for s in scores)), float(np.median([abs(s.final_err) for s in scores])), r2_pooled)


# -- the trivial baseline ----------------------------------------------------------------------------

@dataclass
class ShiftBaseline:
    """The constant run's curve shifted by the fit runs' mean annealing gain.

    ``P(t) = L0 + A t^-alpha`` is fit (least squares on log loss) to the constant fit run's curve after warmup:
    the constant run's curve, extended to any length. ``gain`` is the fit runs' mean loss drop below P at
    their end per unit of LR annealed: ``(P(T_i) - L_i) / (1 - eta_i(T_i) / eta_peak)``. A held-out schedule
    is predicted as ``P(t) - gain * (1 - eta(t) / eta_peak)``: it knows how low each schedule's LR is at
    every step, nothing of when the loss responds to it (the law's whole subject).
    """

    L0: float
    A: float
    alpha: float
    gain: float

    def predict(self, lrs: np.ndarray, steps: np.ndarray) -> np.ndarray:
        lrs = np.asarray(lrs, dtype=np.float64)
        t = np.asarray(steps, dtype=np.int64)
        peak = lrs[warmup_of(lrs) - 1]
        return self.L0 + self.A * t.astype(float) ** -self.alpha - self.gain * (1.0 - lrs[t - 1] / peak)

    def predict_curve(self, curve: RunCurve) -> np.ndarray:
        w = int(curve.window)
        return self.predict(curve.lrs, window_steps(curve.steps, w)).reshape(-1, w).mean(axis=1)

    @classmethod
    def fit(cls, curves: Sequence[RunCurve]) -> ShiftBaseline:
        """From the fit runs: the constant one (no decay) gives P, the decaying ones the gain."""
        from scipy.optimize import least_squares

        cs = [_as_curve(c, i) for i, c in enumerate(curves)]
        const = [c for c in cs if anneal_fraction(c.lrs) == 0.0]
        if not const:
            raise ForecastError("baseline: no constant-LR run among the fit runs (its curve is the baseline's)")
        c0 = const[0]
        keep = scored_points(c0)
        t, y, w = c0.steps[keep], c0.losses[keep], c0.window
        if t.size < 3:
            raise ForecastError(f"baseline: {c0.name} has {t.size} points after warmup; need at least 3")
        tt = window_steps(t, w).astype(float)

        def resid(x: np.ndarray) -> np.ndarray:
            L0, A, alpha = x
            p = (L0 + A * tt ** -alpha).reshape(-1, w).mean(axis=1)
            return np.log(np.maximum(p, 1e-10)) - np.log(y)

        x0 = np.array([0.8 * y.min(), max(y[0] - 0.8 * y.min(), 1e-3) * t[0] ** 0.5, 0.5])
        res = least_squares(resid, x0, bounds=([0.0, 0.0, 0.01], [float(y.max()), np.inf, 3.0]))
        L0, A, alpha = (float(v) for v in res.x)
        gains = []
        for c in cs:
            if c is c0 or anneal_fraction(c.lrs) == 0.0:
                continue
            peak = c.lrs[warmup_of(c.lrs) - 1]
            t_end = window_steps(c.steps[-1:], c.window)
            frac = float(np.mean(1.0 - c.lrs[t_end - 1] / peak))
            if frac > 0:
                p_end = float(np.mean(L0 + A * t_end.astype(float) ** -alpha))
                gains.append((p_end - float(c.losses[-1])) / frac)
        return cls(L0, A, alpha, float(np.mean(gains)) if gains else 0.0)


# -- ranking -------------------------------------------------------------------------------------------

def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN with < 2 points or a constant side."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    if xa.size < 2 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return math.nan
    return float(np.corrcoef(_ranks(xa), _ranks(ya))[0, 1])


def spearman_interval(actual: np.ndarray, predicted: np.ndarray, n_boot: int = 2000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float, list[float]]:
    """Spearman between actual and predicted final losses of the same schedules over seeds.

    ``actual`` and ``predicted``: shape (seeds, schedules). Returns (rho of the seed means, interval low,
    high, rho per seed); the interval is a percentile bootstrap resampling seeds and schedules together.
    """
    a, p = np.atleast_2d(np.asarray(actual, float)), np.atleast_2d(np.asarray(predicted, float))
    if a.shape != p.shape:
        raise ForecastError(f"spearman_interval: actual {a.shape} and predicted {p.shape} differ in shape")
    if not 0 < level < 1 or n_boot < 1:
        raise ForecastError(f"spearman_interval: expected level in (0, 1) and n_boot >= 1, got {level}, {n_boot}")
    ok = np.all(np.isfinite(a) & np.isfinite(p), axis=0)
    a, p = a[:, ok], p[:, ok]
    est = spearman(a.mean(axis=0), p.mean(axis=0))
    per_seed = [spearman(a[i], p[i]) for i in range(a.shape[0])]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        rows = rng.integers(0, a.shape[0], a.shape[0])
        cols = rng.integers(0, a.shape[1], a.shape[1])
        r = spearman(a[np.ix_(rows, cols)].mean(axis=0), p[np.ix_(rows, cols)].mean(axis=0))
        if math.isfinite(r):
            boots.append(r)
    if not boots:
        return est, math.nan, math.nan, per_seed
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return est, float(lo), float(hi), per_seed


def score_runs(predict: Callable[[RunCurve], np.ndarray], curves: Sequence[RunCurve]) -> tuple[list[CurveScore], Summary]:
    """Score one predictor (a law's or the baseline's ``predict_curve``) on held-out curves."""
    preds = [predict(c) for c in curves]
    scores = [score_curve(c, q) for c, q in zip(curves, preds, strict=True)]
    return scores, summarize(scores, pooled_r2(curves, preds))


__all__ = ["CurveScore", "Summary", "ShiftBaseline", "score_curve", "score_runs", "pooled_r2", "r2", "summarize",
           "spearman", "spearman_interval", "scored_points"]
