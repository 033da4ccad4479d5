"""Statistics for the LR-schedule studies (docs: /work/shared/papers/protocols.md, sections 1, 2 and 4).

SkipLR (Table 2): HF-style 10-step mean losses, the transition step of Φ3 onto Φ2, the table's columns with
Wilson intervals, and the contraction rate r of ln|L3 − L2|. D2Z: the best loss over a peak-LR grid (quadratic
in log2 LR), the relative gap Δ of two schedules' bests with a paired seed bootstrap, Spearman's ρ; paired t-intervals
(:func:`paired_estimate`, one named estimator per line) and margin verdicts (:func:`verdict`). Verdicts turn an
interval into reproduced / not reproduced / inconclusive. Pure functions of numpy arrays; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "window_means", "transition_step", "wilson", "TransitionTable", "transition_table", "gap",
    "contraction_rate", "log_linear_rate", "bootstrap_ci", "best_over_lr", "relative_gap_of_best", "delta_ci", "spearman",
    "Verdict", "verdict_ci", "t_interval", "Estimate", "paired_estimate", "verdict", "DEFAULT_MARGIN", "T_MAX_SEEDS",
    "vertex_of_three",
]

# The statistical standard of every study (issue 21, part 5):
# - per-seed paired differences, their mean with a Student-t interval whenever there are <= T_MAX_SEEDS seeds
#   (a percentile bootstrap over 3 seeds is only the min-max of the per-seed values);
# - a "no worse" / "equivalent" verdict needs a margin, stated in the report, and the interval inside it;
# - every line's point estimate and interval come from one named estimator (:class:`Estimate`).
T_MAX_SEEDS = 10
DEFAULT_MARGIN = 0.001  # +-0.1% relative: the equivalence / non-inferiority margin unless a study states another


def window_means(steps: Sequence[int], losses: Sequence[float], window: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """HF-Trainer-style logged loss: the mean training loss over consecutive windows of ``window`` steps.

    Steps are 1-based optimizer steps; window k holds steps ``(k-1)*window+1 .. k*window`` and is logged at its
    last step (steps 1..1000 -> logged 10, 20, ..., 1000). Only windows that end at or before the last recorded
    step and hold at least one recorded step are returned (a trailing partial window is dropped, as HF logs only
    every ``window`` steps). Non-finite losses are left out of the mean; a window with none finite is NaN (kept,
    so that curves of different runs stay aligned on the same logged steps). Returns ``(logged_steps, means)``.
    """
    s = np.asarray(steps, dtype=np.int64).ravel()
    x = np.asarray(losses, dtype=np.float64).ravel()
    if s.shape != x.shape:
        raise ValueError(f"steps and losses differ in length: {s.size} vs {x.size}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if s.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    if s.min() < 1:
        raise ValueError("steps are 1-based optimizer steps; got a step < 1")
    idx = (s - 1) // window
    keep = (idx + 1) * window <= s.max()
    idx, x = idx[keep], x[keep]
    uniq, inv = np.unique(idx, return_inverse=True)
    finite = np.isfinite(x)
    sums = np.bincount(inv, weights=np.where(finite, x, 0.0), minlength=uniq.size)
    counts = np.bincount(inv, weights=finite.astype(np.float64), minlength=uniq.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return (uniq + 1) * window, means


def gap(l_a: Sequence[float], l_b: Sequence[float]) -> np.ndarray:
    """Relative gap ``|l_a - l_b| / |l_b|`` elementwise (NaN where undefined)."""
    a, b = np.asarray(l_a, dtype=np.float64), np.asarray(l_b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.abs(a - b) / np.abs(b)


def transition_step(steps: Sequence[int], l3: Sequence[float], l2: Sequence[float], t_k: int,
                    eps: float = 0.01) -> int | None:
    """The first logged step ``>= t_k`` where ``|l3 - l2| / l2 < eps`` (arrays aligned on ``steps``); None if never.

    This is the SkipLR notebook's rule: the first crossing counts, whether or not the curves stay together.
    A NaN gap (a diverged run) never counts as a transition.
    """
    s = np.asarray(steps, dtype=np.int64)
    order = np.argsort(s, kind="stable")
    s, g = s[order], gap(l3, l2)[order]
    hit = np.flatnonzero((s >= t_k) & (g < eps))
    return int(s[hit[0]]) if hit.size else None


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k/n`` (clipped to [0, 1]; ``(0, 1)`` when n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


@dataclass
class TransitionTable:
    """One row of SkipLR's Table 2. Percentages are in percent (0-100) of ALL seeds, CIs are Wilson 95%.

    ``median``/``min``/``max`` count a failure as step T (as the paper does); they are NaN/None with no seeds.
    ``trivial`` counts the seeds whose curves were already within eps at t_k (they say nothing about contraction).
    """

    n: int
    transitioned: int
    pct: float
    pct_ci: tuple[float, float]
    by_25: float
    by_25_ci: tuple[float, float]
    by_50: float
    by_50_ci: tuple[float, float]
    by_75: float
    by_75_ci: tuple[float, float]
    median: float
    min: int | None
    max: int | None
    trivial: int

    def as_row(self) -> dict:
        """Display strings keyed by Table 2's column names (plus n and Trivial); raw values: ``dataclasses.asdict``."""
        def pc(v: float, ci: tuple[float, float]) -> str:
            return "n/a" if math.isnan(v) else f"{v:.0f} [{ci[0]:.0f}, {ci[1]:.0f}]"

        return {
            "n": self.n,
            "Trans.%": pc(self.pct, self.pct_ci),
            "≤25%": pc(self.by_25, self.by_25_ci),
            "≤50%": pc(self.by_50, self.by_50_ci),
            "≤75%": pc(self.by_75, self.by_75_ci),
            "Median": "n/a" if math.isnan(self.median) else f"{self.median:g}",
            "Min": "n/a" if self.min is None else str(self.min),
            "Max": "n/a" if self.max is None else str(self.max),
            "Trivial": self.trivial,
        }


def transition_table(transitions: Sequence[int | None], t_k: int, T: int,
                     trivial: Sequence[bool] = ()) -> TransitionTable:
    """Table 2's columns from per-seed transition steps (None = never within eps).

    "Trans.%" = % of seeds that transitioned; "≤25/50/75%" = % of ALL seeds whose transition step is
    ``<= 0.25/0.5/0.75 * T`` (steps 250/500/750 for T = 1000). Transitions are ``>= t_k`` by construction, so a
    transition at t_k itself counts (the paper's GPT2 rows; the notebook's extra "> t_k" rule would contradict
    them). Failures count as step T in median/min/max. ``trivial`` (optional, one bool per seed) is counted.
    """
    n = len(transitions)
    if trivial and len(trivial) != n:
        raise ValueError(f"trivial has {len(trivial)} entries for {n} seeds")
    ok = [t for t in transitions if t is not None]
    if any(t < t_k or t > T for t in ok):
        raise ValueError(f"transition steps must lie in [t_k, T] = [{t_k}, {T}]")
    filled = np.array([T if t is None else t for t in transitions], dtype=np.float64)

    def share(k: int) -> tuple[float, tuple[float, float]]:
        lo, hi = wilson(k, n)
        return (100.0 * k / n if n else math.nan), (100.0 * lo, 100.0 * hi)

    pct, pct_ci = share(len(ok))
    b25, b25_ci = share(sum(t <= 0.25 * T for t in ok))
    b50, b50_ci = share(sum(t <= 0.50 * T for t in ok))
    b75, b75_ci = share(sum(t <= 0.75 * T for t in ok))
    return TransitionTable(
        n=n, transitioned=len(ok), pct=pct, pct_ci=pct_ci, by_25=b25, by_25_ci=b25_ci, by_50=b50, by_50_ci=b50_ci,
        by_75=b75, by_75_ci=b75_ci, median=float(np.median(filled)) if n else math.nan,
        min=int(filled.min()) if n else None, max=int(filled.max()) if n else None,
        trivial=int(sum(bool(v) for v in trivial)),
    )


def contraction_rate(steps: Sequence[int], l3: Sequence[float], l2: Sequence[float], t_k: int,
                     floor: float = 0.0) -> tuple[float, float, int]:
    """Least-squares fit of ``ln|L3 - L2| = a - r (t - t_k)`` over logged steps ``t >= t_k``; returns (r, R², points).

    The absolute gap |L3 - L2| is fitted (its log differs from the relative gap's by ln L2, which varies slowly).
    With ``floor > 0`` the fit stops at the first step where the gap falls to ``floor`` or below (the noise floor;
    later points are excluded even if the gap rises again); with ``floor = 0`` every positive gap is used.
    Non-finite gaps are skipped. Fewer than 3 points: ``(nan, nan, points)``. R² is NaN for a flat series.
    """
    s = np.asarray(steps, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    with np.errstate(invalid="ignore"):
        d = np.abs(np.asarray(l3, dtype=np.float64) - np.asarray(l2, dtype=np.float64))[order]
    s = s[order]
    after = s >= t_k
    s, d = s[after], d[after]
    fin = np.isfinite(d)
    s, d = s[fin], d[fin]
    if floor > 0:
        below = np.flatnonzero(d <= floor)
        if below.size:
            s, d = s[: below[0]], d[: below[0]]
    else:
        s, d = s[d > 0], d[d > 0]
    return log_linear_rate(s - t_k, d)


def log_linear_rate(x: np.ndarray, g: np.ndarray) -> tuple[float, float, int]:
    """Least squares ``ln g = a - r x`` over positive ``g``: ``(r, R², points)``; fewer than 3 points:
    ``(nan, nan, points)``; R² is NaN for a flat series. The fit behind every contraction rate here."""
    x, g = np.asarray(x, dtype=np.float64), np.asarray(g, dtype=np.float64)
    n = int(x.size)
    if n < 3:
        return math.nan, math.nan, n
    y = np.log(g)
    slope, intercept = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (intercept + slope * x)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    return float(-slope), r2, n


def bootstrap_ci(stat: Callable[[np.ndarray], float], data: np.ndarray, n_boot: int = 10000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Percentile bootstrap: resample rows of ``data`` (seeds, axis 0) with replacement.

    Returns ``(stat(data), lo, hi)``. Whole rows move together, so columns of one row stay paired. Resamples whose
    statistic is NaN are ignored (all NaN -> NaN bounds). Deterministic for a given ``seed``.
    """
    arr = np.asarray(data)
    n = arr.shape[0] if arr.ndim else 0
    if n < 1:
        raise ValueError("bootstrap_ci needs at least one row")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    est = float(stat(arr))
    rng = np.random.default_rng(seed)
    vals = np.array([float(stat(arr[i])) for i in rng.integers(0, n, size=(n_boot, n))])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return est, math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(vals, [100 * alpha, 100 * (1 - alpha)])
    return est, float(lo), float(hi)


def best_over_lr(losses: np.ndarray, lrs: Sequence[float], fit: bool = True) -> float:
    """Best loss over a peak-LR grid; ``losses[i]`` is the (mean) loss at ``lrs[i]``, NaN = diverged.

    ``fit=False``: the observed minimum. ``fit=True``: the exact parabola in log2(lr) through the 3 finite points
    around the argmin (the 3 nearest the edge when the argmin is at an end of the grid); its vertex value is
    returned if the parabola is convex and the vertex lies within those 3 points, else the observed minimum.
    NaN if every LR diverged.
    """
    y = np.asarray(losses, dtype=np.float64).ravel()
    x = np.log2(np.asarray(lrs, dtype=np.float64).ravel())
    if x.shape != y.shape:
        raise ValueError(f"{y.size} losses for {x.size} LRs")
    order = np.argsort(x)
    x, y = x[order], y[order]
    fin = np.isfinite(y)
    x, y = x[fin], y[fin]
    if y.size == 0:
        return math.nan
    i = int(np.argmin(y))
    observed = float(y[i])
    if not fit or y.size < 3:
        return observed
    j = min(max(i - 1, 0), y.size - 3)
    xs, ys = x[j: j + 3], y[j: j + 3]
    a, b, c = np.polyfit(xs, ys, 2)
    if not a > 0:
        return observed
    xv = -b / (2 * a)
    if not xs[0] <= xv <= xs[2]:
        return observed
    return float(min(c - b * b / (4 * a), observed))


def relative_gap_of_best(a: np.ndarray, b: np.ndarray, lrs: Sequence[float], fit: bool = True) -> float:
    """Δ = (best_A − best_B) / best_A with best_X = best_over_lr(mean over seeds of X).

    ``a``, ``b``: (n_seeds, n_lr) losses of schedules A (e.g. Lin-10x) and B (e.g. Lin-D2Z), paired by seed; a 1-D
    array is one seed. The seed mean is a plain mean: an LR that diverged in any seed counts as diverged.
    Δ > 0 means B is better.
    """
    ma = np.atleast_2d(np.asarray(a, dtype=np.float64)).mean(axis=0)
    mb = np.atleast_2d(np.asarray(b, dtype=np.float64)).mean(axis=0)
    best_a, best_b = best_over_lr(ma, lrs, fit), best_over_lr(mb, lrs, fit)
    return (best_a - best_b) / best_a


def delta_ci(a: np.ndarray, b: np.ndarray, lrs: Sequence[float], fit: bool = True, n_boot: int = 2000,
             seed: int = 0) -> tuple[float, float, float]:
    """``relative_gap_of_best`` with a 95% percentile bootstrap over seeds: (Δ, lo, hi).

    Paired: each resample draws seed rows once and uses those same seeds for A and B.
    """
    a2 = np.atleast_2d(np.asarray(a, dtype=np.float64))
    b2 = np.atleast_2d(np.asarray(b, dtype=np.float64))
    if a2.shape != b2.shape:
        raise ValueError(f"a and b differ in shape: {a2.shape} vs {b2.shape}")
    both = np.stack([a2, b2], axis=1)  # (n_seeds, 2, n_lr)
    return bootstrap_ci(lambda d: relative_gap_of_best(d[:, 0], d[:, 1], lrs, fit), both, n_boot=n_boot, seed=seed)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (``scipy.stats.spearmanr``) over the pairs where both are finite.

    NaN with fewer than 2 such pairs or a constant side.
    """
    from scipy.stats import spearmanr  # deferred: importing this module stays cheap

    xa, ya = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length: {xa.size} vs {ya.size}")
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if xa.size < 2 or np.all(xa == xa[0]) or np.all(ya == ya[0]):
        return math.nan
    return float(spearmanr(xa, ya).statistic)


@dataclass
class Verdict:
    """Whether a paper's claim was reproduced: True, False, or None (inconclusive)."""

    claim: str
    reproduced: bool | None
    statistic: str
    why: str = ""

    def markdown(self) -> str:
        """One markdown bullet: ``- **STATUS** claim: statistic (why)``."""
        status = {True: "REPRODUCED", False: "NOT REPRODUCED", None: "INCONCLUSIVE"}[self.reproduced]
        return f"- **{status}** {self.claim}: {self.statistic}" + (f" ({self.why})" if self.why else "")


_EXPECT = (">0", "<0", ">=0", "<=0", "==0")


def verdict_ci(claim: str, estimate: float, lo: float, hi: float, n_seeds: int, expect: str, unit: str = "%",
               scale: float = 100.0, name: str = "Δ", margin: float = DEFAULT_MARGIN, estimator: str = "",
               units: str = "") -> Verdict:
    """A verdict from an estimate and its CI [lo, hi] (shown ×``scale`` in ``unit``).

    - ``">0"`` (the effect is positive): True if lo > 0; False if hi < 0 (the opposite sign is significant);
      else None (the interval contains 0). ``"<0"`` mirrors it: True if hi < 0, False if lo > 0, else None.
    - ``">=0"`` (no worse: the effect is not negative by more than ``margin``, e.g. "10x is no worse than D2Z at
      2 TPP" with Δ = (best_D2Z − best_10x)/best_D2Z): True if lo > −margin (the interval lies inside the margin's
      side); False if hi < −margin (worse by more than the margin, significantly); else None (INCONCLUSIVE: the
      interval leaves the margin). ``"<=0"`` mirrors it: True if hi < margin, False if lo > margin, else None.
    - ``"==0"`` (equivalent within ±margin): True if −margin < lo and hi < margin; False if the interval lies
      wholly outside (lo > margin or hi < −margin); else None.
    - Always None with fewer than 2 seeds (no interval) or a NaN bound. The statistic names the estimator (when
      given), the count of paired values (``units`` when they are not seeds, e.g. "16 held-out runs (2 seeds)") and,
      for the margin verdicts, the margin.
    """
    if expect not in _EXPECT:
        raise ValueError(f"expect must be one of {_EXPECT}, got {expect!r}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    seeds = units or f"{n_seeds} seed" + ("" if n_seeds == 1 else "s")

    def f(v: float) -> str:
        return f"{v * scale:+.2f}"
    stat = f"{name} = {f(estimate)}{unit} [{f(lo)}, {f(hi)}], {seeds}"
    if estimator:
        stat += f", {estimator}"
    has_margin = expect in (">=0", "<=0", "==0")
    if has_margin:
        stat += f"; margin ±{margin * scale:.2f}{unit}"
    if not all(math.isfinite(v) for v in (estimate, lo, hi)):
        return Verdict(claim, None, stat, "no estimate (NaN)")
    if n_seeds < 2:
        return Verdict(claim, None, stat, "fewer than 2 seeds: no interval")
    if expect == "==0":
        if -margin < lo and hi < margin:
            return Verdict(claim, True, stat, "the interval lies inside the margin")
        if lo > margin or hi < -margin:
            return Verdict(claim, False, stat, "the interval lies outside the margin")
        return Verdict(claim, None, stat, "the interval leaves the margin")
    sign = 1.0 if expect in (">0", ">=0") else -1.0
    slo, shi = sorted((sign * lo, sign * hi))  # flip so that the claimed direction is positive
    if expect in (">0", "<0"):
        if slo > 0:
            return Verdict(claim, True, stat, "")
        if shi < 0:
            return Verdict(claim, False, stat, "the opposite sign is significant")
        return Verdict(claim, None, stat, "the interval contains 0")
    side = "below" if sign > 0 else "above"
    if slo > -margin:
        return Verdict(claim, True, stat, "the interval lies inside the margin" + (
            f" (significantly {'above' if sign > 0 else 'below'} 0)" if slo > 0 else ""))
    if shi < -margin:
        return Verdict(claim, False, stat, f"significantly {side} 0 by more than the margin")
    return Verdict(claim, None, stat, "the interval leaves the margin")


def t_interval(x: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the Student-t interval of the mean of ``x`` (non-finite values dropped).

    NaN bounds with fewer than 2 values; a zero-width interval when all values are equal.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    a = np.asarray(x, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(a.mean())
    if a.size < 2:
        return mean, math.nan, math.nan
    from scipy.stats import t  # deferred: importing this module stays cheap

    half = float(t.ppf(0.5 + level / 2, a.size - 1) * a.std(ddof=1) / math.sqrt(a.size))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Estimate:
    """One line's point estimate and 95% interval, both from the estimator it names.

    ``estimator`` says what each seed contributes (e.g. "per-seed observed minimum over the LR bracket");
    ``method`` how the interval is made ("paired t" for <= T_MAX_SEEDS seeds, else "paired bootstrap");
    ``per_seed`` the paired per-seed values the interval is over.
    """

    estimator: str
    value: float
    lo: float
    hi: float
    n: int
    method: str
    per_seed: tuple[float, ...] = ()

    def text(self, scale: float = 100.0, unit: str = "%") -> str:
        def f(v: float) -> str:
            return "NaN" if not math.isfinite(v) else f"{v * scale:+.2f}"
        return (f"{f(self.value)}{unit} [{f(self.lo)}, {f(self.hi)}] ({self.method} over {self.n} seed"
                f"{'' if self.n == 1 else 's'}; {self.estimator})")


def paired_estimate(per_seed: Sequence[float], estimator: str, level: float = 0.95, n_boot: int = 10000,
                    seed: int = 0) -> Estimate:
    """The mean of paired per-seed values with its interval: Student t for <= T_MAX_SEEDS seeds, else a percentile
    bootstrap of the mean. Non-finite per-seed values (a diverged or missing arm) are left out and not counted."""
    a = np.asarray(per_seed, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    if a.size <= T_MAX_SEEDS:
        mean, lo, hi = t_interval(a, level)
        method = "paired t"
    else:
        mean, lo, hi = bootstrap_ci(lambda d: float(np.mean(d)), a, n_boot=n_boot, level=level, seed=seed)
        method = "paired bootstrap"
    return Estimate(estimator, mean, lo, hi, int(a.size), method, tuple(float(v) for v in a))


def verdict(claim: str, est: Estimate, expect: str, margin: float = DEFAULT_MARGIN, **kw) -> Verdict:
    """:func:`verdict_ci` on an :class:`Estimate` (its estimator and interval method named in the statistic)."""
    return verdict_ci(claim, est.value, est.lo, est.hi, est.n, expect, margin=margin,
                      estimator=f"{est.method}, {est.estimator}", **kw)


def vertex_of_three(losses: Sequence[float], lrs: Sequence[float]) -> float:
    """The quadratic-vertex estimator on one seed's bracket: the minimum of the parabola in log2(lr) through three
    (lr, loss) points, when it is convex with its vertex between the outer two, else the observed minimum (NaN if
    any of the three is not finite)."""
    y = np.asarray(losses, dtype=np.float64).ravel()
    x = np.log2(np.asarray(lrs, dtype=np.float64).ravel())
    if y.size != 3 or x.size != 3:
        raise ValueError(f"need exactly 3 losses and 3 LRs, got {y.size} and {x.size}")
    if not np.isfinite(y).all():
        return math.nan
    return best_over_lr(y, np.exp2(x), fit=True)
