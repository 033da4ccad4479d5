"""SkipLR's statistics on one study's curves (paper 000, Table 2; protocols.md section 1, tests (a)-(e)).

Pure numpy on 10-step mean training losses aligned on logged steps (``stats.window_means``); no torch, no runs.

- :func:`analyze_seed`: one seed's transition of Phi3 onto Phi2, the placebo Phi1 vs Phi2, the transition a
  *delayed copy* of Phi2 would make (the delay null: Phi3(t) = Phi2(t - t_k), what happens when eta1 moves
  nothing), the gap g(t_k), the contraction rate r of ln g(t) (test a) and the tracking index (where Phi3 sits
  between Phi2 and the delayed copy: +1 on Phi2, -1 on the delayed copy).
- :func:`slope_test` (test b), :func:`halving_test` (test c), :func:`delay_null_test`, :func:`placebo_test`.
- :func:`probe_stable` / :func:`largest_stable` (the probe that picks eta2), :func:`pilot_check` (the gate before
  20 seeds: can the transition be observed within T at the pilot's contraction rate?), :func:`scratch_T`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .stats import (
    Estimate,
    TransitionTable,
    Verdict,
    bootstrap_ci,
    gap,
    log_linear_rate,
    paired_estimate,
    transition_step,
    transition_table,
    wilson,
)

SEPARATION = 2.0  # steps where Phi2 and its delayed copy differ by >= SEPARATION x eps tell the two hypotheses apart
HALVING_BAND = (0.3, 0.7)  # test (c): r(eta2/2) / r(eta2) "roughly halves" when its interval lies inside this band
SLOPE_BAND = (0.5, 2.0)  # test (b): slope x r "about 1" when its interval lies inside this band


@dataclass
class SeedCurves:
    """One seed's logged steps and 10-step mean losses: Phi1, Phi2 and Phi3 (Phi3 = Phi1 up to t_k)."""

    seed: int
    steps: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    l3: np.ndarray

    def __post_init__(self):
        self.steps = np.asarray(self.steps, dtype=np.int64)
        for name in ("l1", "l2", "l3"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.shape != self.steps.shape:
                raise ValueError(f"seed {self.seed}: {name} has {arr.size} values for {self.steps.size} steps")
            setattr(self, name, arr)

    def delayed_l2(self, t_k: int) -> np.ndarray:
        """Phi2 delayed by t_k: L2(t - t_k) at each logged step (NaN where t - t_k is before Phi2's first log)."""
        return np.interp(self.steps - t_k, self.steps, self.l2, left=np.nan, right=np.nan)


def fit_rate(steps: np.ndarray, g: np.ndarray, t_k: int, eps: float) -> tuple[float, float, int]:
    """Test (a): least squares ``ln g(t) = a - r (t - t_k)`` over logged steps after t_k, up to (not including) the
    first step where the relative gap g falls below eps (the noise floor); ``(r, R², points)``, NaN under 3 points."""
    s, g = np.asarray(steps, dtype=np.float64), np.asarray(g, dtype=np.float64)
    keep = (s > t_k) & np.isfinite(g)
    s, g = s[keep], g[keep]
    below = np.flatnonzero(g < eps)
    if below.size:
        s, g = s[: below[0]], g[: below[0]]
    s, g = s[g > 0], g[g > 0]
    return log_linear_rate(s - t_k, g)


@dataclass
class SeedResult:
    seed: int
    transition: int | None  # Phi3 onto Phi2 (the paper's rule)
    placebo: int | None  # Phi1 onto Phi2
    delayed: int | None  # Phi2's delayed copy onto Phi2 (what the delay null predicts)
    g0: float  # |L1 - L2| / L2 at t_k
    trivial: bool  # g0 < eps: within eps at t_k already, says nothing about contraction
    rate: float  # r of ln g(t), Phi3 vs Phi2
    r2: float
    rate_null: float  # r of the delayed copy's gap
    tracking: float  # mean over separated steps of (D_delay - D_phi2) / separation: +1 on Phi2, -1 on the delayed copy
    separated: int  # logged steps where Phi2 and its delayed copy differ by >= SEPARATION x eps
    curves: SeedCurves = field(repr=False)


def analyze_seed(c: SeedCurves, t_k: int, eps: float = 0.01) -> SeedResult:
    at = c.steps == t_k
    g0 = float(gap(c.l1[at], c.l2[at])[0]) if at.any() else math.nan
    l2d = c.delayed_l2(t_k)
    after = c.steps > t_k
    with np.errstate(invalid="ignore", divide="ignore"):
        sep = np.abs(c.l2 - l2d) / c.l2
        d_phi2, d_delay = np.abs(c.l3 - c.l2) / c.l2, np.abs(c.l3 - l2d) / c.l2
        idx = (d_delay - d_phi2) / sep
    use = after & np.isfinite(idx) & (sep >= SEPARATION * eps)
    rate, r2, _ = fit_rate(c.steps, gap(c.l3, c.l2), t_k, eps)
    rate_null, _, _ = fit_rate(c.steps, sep, t_k, eps)
    delayed_ok = np.isfinite(l2d)
    return SeedResult(
        seed=c.seed, transition=transition_step(c.steps, c.l3, c.l2, t_k, eps),
        placebo=transition_step(c.steps, c.l1, c.l2, t_k, eps),
        delayed=transition_step(c.steps[delayed_ok], l2d[delayed_ok], c.l2[delayed_ok], t_k, eps),
        g0=g0, trivial=bool(g0 < eps), rate=rate, r2=r2, rate_null=rate_null,
        tracking=float(np.clip(idx[use], -1.0, 1.0).mean()) if use.any() else math.nan,
        separated=int(use.sum()), curves=c)


@dataclass
class Tables:
    phi3: TransitionTable
    placebo: TransitionTable
    delayed: TransitionTable


def tables(results: Sequence[SeedResult], t_k: int, T: int) -> Tables:
    return Tables(transition_table([r.transition for r in results], t_k, T, [r.trivial for r in results]),
                  transition_table([r.placebo for r in results], t_k, T, [r.trivial for r in results]),
                  transition_table([r.delayed for r in results], t_k, T))


# -- verdicts ---------------------------------------------------------------------------------------

def transition_verdict(t: Tables) -> Verdict:
    n, k = t.phi3.n, t.phi3.transitioned
    lo, hi = wilson(k, n)
    nontrivial = k - t.phi3.trivial
    stat = f"{k}/{n} seeds = {k / n:.0%} [{lo:.0%}, {hi:.0%}] (Wilson; {nontrivial} non-trivial)" if n else "no seeds"
    claim = "Phi3 transitions onto Phi2 within T in (nearly) every seed (paper: 98-100% for T5, GPT2, Gemma)"
    if n == 0:
        return Verdict(claim, None, stat, "no seed finished")
    if hi < 0.95:
        return Verdict(claim, False, stat, "the interval lies below 95%")
    if nontrivial == 0:
        return Verdict(claim, None, stat, "every transition is trivial: the curves were within eps at t_k already")
    return Verdict(claim, True if lo >= 0.8 else None, stat,
                   "" if lo >= 0.8 else f"too few seeds to exclude a rate below 80% ({n} seeds)")


def placebo_test(t: Tables) -> Verdict:
    """Test (e): the same rule on Phi1 vs Phi2 must fire far less often than on Phi3 vs Phi2."""
    n = t.phi3.n
    k, kp = t.phi3.transitioned, t.placebo.transitioned
    lo, hi = wilson(k, n)
    plo, phi = wilson(kp, n)
    stat = f"Phi3 {k}/{n} [{lo:.0%}, {hi:.0%}] vs placebo Phi1 {kp}/{n} [{plo:.0%}, {phi:.0%}]"
    claim = "the switch, not chance, closes the gap: Phi3 transitions more often than the placebo Phi1 vs Phi2"
    if n and lo > phi:
        return Verdict(claim, True, stat)
    if n and (hi < plo or kp >= max(k, 1)):
        return Verdict(claim, False, stat, "the placebo fires at least as often: Phi1 is already on Phi2's curve")
    return Verdict(claim, None, stat, "the intervals overlap")


def delay_null_test(results: Sequence[SeedResult]) -> tuple[Verdict, Estimate | None]:
    """The delay null: Phi3(t) = Phi2(t - t_k). Per seed, the tracking index over the steps where Phi2 and its
    delayed copy are apart (+1: Phi3 on Phi2, -1: Phi3 on the delayed copy); its mean over seeds with an interval."""
    claim = "Phi3 contracts onto Phi2 rather than following Phi2 delayed by t_k (delay null |L3(t) - L2(t - t_k)|)"
    vals = [r.tracking for r in results if math.isfinite(r.tracking)]
    if not vals:
        return Verdict(claim, None, f"0 of {len(results)} seeds have steps where Phi2 and its delayed copy differ by "
                       f">= {SEPARATION:g} eps", "the two hypotheses predict the same curve: no test"), None
    est = paired_estimate(vals, "per-seed mean tracking index over separated steps (+1 on Phi2, -1 on Phi2 delayed)")
    stat = "tracking index " + est.text(scale=1.0, unit="")
    if est.n < 2 or not (math.isfinite(est.lo) and math.isfinite(est.hi)):
        return Verdict(claim, None, stat, "fewer than 2 seeds: no interval"), est
    if est.lo > 0:
        return Verdict(claim, True, stat, "Phi3 sits closer to Phi2 than to its delayed copy"), est
    if est.hi < 0:
        return Verdict(claim, False, stat, "Phi3 follows Phi2 delayed by t_k: a delayed copy, not a contraction"), est
    return Verdict(claim, None, stat, "the interval contains 0"), est


def slope_test(results: Sequence[SeedResult], t_k: int, eps: float, min_seeds: int = 5, n_boot: int = 2000) -> tuple[Verdict, dict]:
    """Test (b): across seeds, the slope of t_c - t_k on ln(g(t_k)/eps) should be about 1/r, i.e. slope x r ~ 1."""
    claim = "test (b): across seeds, t_c - t_k grows like ln(g(t_k)/eps) / r (slope x r ~ 1)"
    rows = np.array([(math.log(r.g0 / eps), r.transition - t_k, r.rate) for r in results
                     if r.transition is not None and not r.trivial and math.isfinite(r.rate) and r.rate > 0
                     and math.isfinite(r.g0)], dtype=np.float64).reshape(-1, 3)
    info = {"n": int(rows.shape[0])}
    if rows.shape[0] < min_seeds:
        return Verdict(claim, None, f"{rows.shape[0]} seeds with a non-trivial transition and a fitted r",
                       f"needs >= {min_seeds}"), info
    spread = float(np.ptp(rows[:, 0]))
    info["x_range"] = spread

    def stat(a: np.ndarray) -> float:
        if np.ptp(a[:, 0]) <= 0:
            return math.nan
        return float(np.polyfit(a[:, 0], a[:, 1], 1)[0] * np.median(a[:, 2]))

    est, lo, hi = bootstrap_ci(stat, rows, n_boot=n_boot)
    info.update(ratio=est, lo=lo, hi=hi)
    text = (f"slope x median r = {est:.2f} [{lo:.2f}, {hi:.2f}] (seed bootstrap, {rows.shape[0]} seeds; "
            f"ln(g(t_k)/eps) spans {spread:.2f})")
    if spread < 0.2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return Verdict(claim, None, text, "g(t_k) hardly varies across seeds: the slope is not identified"), info
    if SLOPE_BAND[0] <= lo and hi <= SLOPE_BAND[1]:
        return Verdict(claim, True, text, f"inside [{SLOPE_BAND[0]:g}, {SLOPE_BAND[1]:g}]"), info
    if hi < SLOPE_BAND[0] or lo > SLOPE_BAND[1]:
        return Verdict(claim, False, text, f"outside [{SLOPE_BAND[0]:g}, {SLOPE_BAND[1]:g}]"), info
    return Verdict(claim, None, text, f"the interval leaves [{SLOPE_BAND[0]:g}, {SLOPE_BAND[1]:g}]"), info


def halving_test(full: dict[int, float], half: dict[int, float]) -> tuple[Verdict, Estimate | None]:
    """Test (c): r at eta2/2 over r at eta2, paired by seed, should be about 1/2."""
    claim = "test (c): halving eta2 roughly halves r (Theorem 1: r ~ kappa eta2)"
    ratios = [half[s] / full[s] for s in sorted(set(full) & set(half))
              if math.isfinite(full[s]) and math.isfinite(half[s]) and full[s] > 0]
    if len(ratios) < 2:
        return Verdict(claim, None, f"{len(ratios)} seeds with r fitted at both LRs", "needs >= 2"), None
    est = paired_estimate(ratios, "per-seed r(eta2/2) / r(eta2)")
    lo_b, hi_b = HALVING_BAND
    text = "ratio " + est.text(scale=1.0, unit="") + f"; band [{lo_b:g}, {hi_b:g}]"
    if lo_b <= est.lo and est.hi <= hi_b:
        return Verdict(claim, True, text, "the interval lies inside the band"), est
    if est.hi < lo_b or est.lo > hi_b:
        return Verdict(claim, False, text, "the interval lies outside the band"), est
    return Verdict(claim, None, text, "the interval leaves the band"), est


# -- probe, pilot, scratch horizon ----------------------------------------------------------------

def probe_stable(steps: Sequence[int], means: Sequence[float], diverged: bool = False,
                 rise: float = 0.02, blocks: int = 10) -> tuple[bool, str]:
    """A constant-LR SGD run from the base (a probe, or a pilot's Phi2 over T) is stable when it did not diverge,
    every logged mean is finite, and over ``blocks`` equal blocks of its logged means (100 steps each over T =
    1000, 20 over a 200-step probe) the last block is below the first and within ``rise`` of the lowest block:
    no late blow-up. Blocks, not single 10-step means: the lowest of 100 noisy 10-step means lies several
    percent below the curve it scatters around, so a curve that is still falling would read as rising."""
    m = np.asarray(means, dtype=np.float64)
    if diverged:
        return False, "diverged"
    if m.size < 2:
        return False, "fewer than 2 logged means"
    if not np.isfinite(m).all():
        return False, "non-finite loss"
    b = np.array([part.mean() for part in np.array_split(m, min(blocks, m.size))])
    if not b[-1] < b[0]:
        return False, f"did not learn ({b[0]:.3f} -> {b[-1]:.3f}, first and last of {b.size} block means)"
    if b[-1] > (1 + rise) * b.min():
        return False, f"rose at the end ({b.min():.3f} -> {b[-1]:.3f}, lowest and last of {b.size} block means)"
    return True, f"{b[0]:.3f} -> {b[-1]:.3f}"


def largest_stable(probe: dict[float, tuple[bool, str]]) -> float | None:
    """The largest LR the probe found stable such that every smaller probed LR is stable too (None: none is)."""
    best = None
    for lr in sorted(probe):
        if not probe[lr][0]:
            break
        best = lr
    return best


@dataclass
class PilotCheck:
    go: bool
    g0: float
    rate: float
    predicted: float  # t_k + ln(g0/eps)/r, the crossing time at the pilot's contraction rate (inf: never)
    observed: int | None
    level_off: float  # share of Phi2's drop that happens in the last 20% of T (<= 10%: levelled off)
    levelled: bool
    reasons: list[str]

    def text(self, T: int) -> str:
        pred = "never (r <= 0 or not fitted)" if not math.isfinite(self.predicted) else f"step {self.predicted:.0f}"
        return (f"g(t_k) = {self.g0:.2%}, r = {self.rate:.3g}/step, predicted 1% crossing {pred} vs T = {T}, "
                f"observed {self.observed if self.observed is not None else 'none'}; Phi2 drops "
                f"{self.level_off:.0%} of its total in the last 20% of T ({'levelled off' if self.levelled else 'still falling'})")


def crossing_step(rate: float, g0: float, t_k: int, eps: float = 0.01) -> float:
    """Where a gap of ``g0`` at t_k contracting at ``rate`` per step reaches ``eps``: t_k + ln(g0/eps)/r; inf when
    it does not contract (r <= 0, or not fitted) or is already within eps."""
    if not (math.isfinite(rate) and rate > 0 and math.isfinite(g0) and g0 > eps):
        return math.inf
    return t_k + math.log(g0 / eps) / rate


def pilot_check(c: SeedCurves, t_k: int, T: int, eps: float = 0.01, tail: float = 0.2, flat: float = 0.1) -> PilotCheck:
    """Whether 20 seeds can show the transition: the crossing time t_k + ln(g0/eps)/r at the pilot's fitted
    contraction rate must fall within T (judged on the fit even when the pilot's one seed crossed earlier: the
    0.003 -> 3 pilot crossed at step 930 with a fit at step 1248, and 6 of its 20 seeds crossed within T = 1000),
    or, where no rate can be fitted, the pilot must cross within T; and the gap at t_k must exceed eps (else it is
    trivial). A refusal names the T at which the median seed would cross (:func:`scratch_T`)."""
    r = analyze_seed(c, t_k, eps)
    l2 = c.l2[np.isfinite(c.l2)]
    cut = c.steps[np.isfinite(c.l2)] <= (1 - tail) * T
    total = l2[0] - l2[-1] if l2.size else math.nan
    late = l2[cut][-1] - l2[-1] if cut.any() else math.nan
    level = late / total if total > 0 else math.inf
    predicted = crossing_step(r.rate, r.g0, t_k, eps)
    reasons = []
    if not math.isfinite(r.g0):
        reasons.append("no logged loss at t_k")
    elif r.trivial:
        reasons.append(f"g(t_k) = {r.g0:.2%} < eps = {eps:.0%}: every seed would transition trivially at t_k")
    elif math.isfinite(predicted) and predicted > T:
        longer = scratch_T(r.rate, r.g0, t_k, eps)
        seen = f" (this seed crossed at step {r.transition}; the fitted rate is what the seeds share)" if r.transition else ""
        reasons.append(f"at the pilot's contraction rate r = {r.rate:.3g}/step the gap of {r.g0:.1%} at t_k reaches "
                       f"{eps:.0%} at step {predicted:.0f} > T = {T}{seen}"
                       + (f"; T = {longer} would let it cross" if longer else ""))
    elif r.transition is None and predicted > T:
        reasons.append(f"the gap does not contract (r = {r.rate:.3g}/step): no crossing within T = {T}")
    return PilotCheck(go=not reasons, g0=r.g0, rate=r.rate, predicted=predicted, observed=r.transition,
                      level_off=level, levelled=level <= flat, reasons=reasons)


def scratch_T(rate: float, g0: float, t_k: int, eps: float = 0.01, safety: float = 1.5, round_to: int = 100,
              cap: int = 20000) -> int | None:
    """T for the from-scratch variant: t_k + safety x ln(g0/eps)/r, rounded up to ``round_to``; None when the
    measured rate cannot cross within ``cap`` steps (r <= 0, or the horizon exceeds the cap)."""
    for name, v in (("rate", rate), ("g0", g0), ("safety", safety)):
        if not math.isfinite(v):
            raise ValueError(f"scratch_T: {name} must be finite, got {v!r}")
    if rate <= 0 or g0 <= eps:
        return None
    T = t_k + safety * (crossing_step(rate, g0, t_k, eps) - t_k)
    T = int(math.ceil(T / round_to) * round_to)
    return T if T <= cap else None
