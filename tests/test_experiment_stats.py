"""experiments.stats: synthetic curves and known values for every statistic the harness reports."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from experiments import stats as S

T, T_K = 1000, 200
STEPS = np.arange(1, T + 1)


# ---------------------------------------------------------------- window means
def test_window_means_hf_logging():
    steps, means = S.window_means(STEPS, STEPS.astype(float), window=10)
    assert steps.tolist() == list(range(10, 1001, 10))
    assert means[0] == pytest.approx(5.5) and means[-1] == pytest.approx(995.5)  # mean of 1..10, 991..1000


def test_window_means_drops_partial_tail_and_ignores_nonfinite():
    losses = np.ones(25)
    losses[3], losses[4] = 5.0, np.nan  # window 1: nine finite values, eight 1s and one 5
    losses[10:20] = np.inf  # window 2: nothing finite -> NaN, but kept for alignment
    steps, means = S.window_means(np.arange(1, 26), losses, window=10)
    assert steps.tolist() == [10, 20]  # 21..25 is a partial window
    assert means[0] == pytest.approx(13 / 9)
    assert math.isnan(means[1])


def test_window_means_rejects_bad_input():
    with pytest.raises(ValueError):
        S.window_means([0, 1], [1.0, 1.0])
    with pytest.raises(ValueError):
        S.window_means([1, 2], [1.0])


# ---------------------------------------------------------------- transitions
def _phi(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Φ1 (never meets Φ2), Φ2 (constant 2.0), Φ3 = Φ1 before t_k, then Φ2·(1 + 0.2 e^{-(t-t_k)/50})."""
    l1 = np.full(t.shape, 2.5)
    l2 = np.full(t.shape, 2.0)
    l3 = np.where(t < T_K, l1, l2 * (1 + 0.2 * np.exp(-(t - T_K) / 50)))
    return l1, l2, l3


def test_transition_step_matches_analytic_window_mean():
    l1, l2, l3 = _phi(STEPS)
    s, m2 = S.window_means(STEPS, l2)
    _, m3 = S.window_means(STEPS, l3)
    # window ending at s: mean of e^{-(t-200)/50} over t = s-9..s is e^{-(s-200)/50}·M, M = mean_k e^{k/50}
    m = np.mean(np.exp(np.arange(10) / 50))
    s_star = T_K + 50 * math.log(0.2 * m / 0.01)  # gap 0.2·M·e^{-(s-200)/50} < 0.01  <=>  s > s_star
    expected = int(math.ceil(s_star / 10) * 10)
    assert expected == 360  # the pointwise (unsmoothed) rule would give 350
    assert S.transition_step(s, m3, m2, T_K) == expected
    assert S.transition_step(s, m3, m2, T_K, eps=0.2 * m * math.exp(-(400 - T_K) / 50) * 1.0001) == 400


def test_transition_trivial_seed_fires_at_first_logged_step_at_or_after_tk():
    l2 = np.full(T, 2.0)
    l3 = l2 * 1.005  # already within 1% everywhere
    s, m2 = S.window_means(STEPS, l2)
    _, m3 = S.window_means(STEPS, l3)
    assert S.transition_step(s, m3, m2, T_K) == 200
    assert S.transition_step(s, m3, m2, 205) == 210
    assert S.gap(m3, m2)[s == T_K][0] == pytest.approx(0.005)  # g(t_k), the trivial flag's input


def test_transition_placebo_never_and_nan_never():
    l1, l2, _ = _phi(STEPS)
    s, m1 = S.window_means(STEPS, l1)
    _, m2 = S.window_means(STEPS, l2)
    assert S.transition_step(s, m1, m2, T_K) is None
    assert S.transition_step(s, np.full(s.shape, np.nan), m2, T_K) is None
    # unsorted input is handled: the first crossing in step order
    rev = slice(None, None, -1)
    assert S.transition_step(s[rev], m2[rev] * 1.001, m2[rev], T_K) == 200


# ---------------------------------------------------------------- Wilson and Table 2
def test_wilson_known_values():
    lo, hi = S.wilson(20, 20)
    assert lo == pytest.approx(0.8389, abs=1e-4) and hi == 1.0
    lo, hi = S.wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = S.wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    assert S.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        S.wilson(11, 10)


def test_transition_table_columns():
    trans = [200, 250, 300, 500, 760, None, None, 210, 240, 600]
    trivial = [True] + [False] * 9
    tab = S.transition_table(trans, T_K, T, trivial)
    assert (tab.n, tab.transitioned, tab.trivial) == (10, 8, 1)
    assert tab.pct == 80.0
    assert (tab.by_25, tab.by_50, tab.by_75) == (40.0, 60.0, 70.0)  # 760 is not <= 750; failures never count
    assert (tab.median, tab.min, tab.max) == (400.0, 200, 1000)  # failures count as T
    assert tab.pct_ci == pytest.approx(tuple(100 * v for v in S.wilson(8, 10)))
    assert tab.by_25_ci == pytest.approx(tuple(100 * v for v in S.wilson(4, 10)))
    assert tab.by_75_ci == pytest.approx(tuple(100 * v for v in S.wilson(7, 10)))
    row = tab.as_row()
    assert row["Trans.%"].startswith("80 [") and row["≤50%"].startswith("60 [")
    assert (row["Median"], row["Min"], row["Max"], row["Trivial"]) == ("400", "200", "1000", 1)
    assert dataclasses.asdict(tab)["by_50"] == 60.0


def test_transition_table_placebo_all_failures_and_t10000():
    tab = S.transition_table([None] * 5, T_K, T)
    assert (tab.pct, tab.by_75, tab.median, tab.min, tab.max, tab.trivial) == (0.0, 0.0, 1000.0, 1000, 1000, 0)
    tab = S.transition_table([2500, 2501, 5000], 200, 10_000)  # thresholds scale with T: 2500/5000/7500
    assert (tab.by_25, tab.by_50) == (pytest.approx(100 / 3), 100.0)
    with pytest.raises(ValueError):
        S.transition_table([150], T_K, T)  # before t_k: not a transition
    with pytest.raises(ValueError):
        S.transition_table([300], T_K, T, trivial=[True, False])
    empty = S.transition_table([], T_K, T)
    assert math.isnan(empty.pct) and empty.min is None and empty.as_row()["Median"] == "n/a"


# ---------------------------------------------------------------- contraction rate
def test_contraction_rate_recovers_r():
    rng = np.random.default_rng(1)
    s = np.arange(10, 1001, 10)
    d = 0.3 * np.exp(-0.02 * (s - T_K)) * np.exp(rng.normal(0, 0.02, s.size))
    l2 = np.full(s.shape, 2.5)
    d[s < T_K] = 5.0  # before t_k: ignored
    r, r2, n = S.contraction_rate(s, l2 + d, l2, T_K)
    assert r == pytest.approx(0.02, rel=0.03) and r2 > 0.99 and n == 81


def test_contraction_rate_floor_stops_at_first_fall():
    s = np.arange(200, 1001, 10)
    d = np.maximum(0.3 * np.exp(-0.02 * (s - T_K)), 1e-4)  # exact decay, then a noise plateau at 1e-4
    d[s == 700] = 0.5  # a later spike above the floor must not be used
    l2 = np.full(s.shape, 2.5)
    r, r2, n = S.contraction_rate(s, l2 + d, l2, T_K, floor=1e-3)
    assert n == int(np.sum(0.3 * np.exp(-0.02 * (s[s < 700] - T_K)) > 1e-3)) == 29
    assert r == pytest.approx(0.02, rel=1e-6) and r2 == pytest.approx(1.0)
    r0, _, n0 = S.contraction_rate(s, l2 + d, l2, T_K)  # no floor: the plateau flattens the fit
    assert n0 == s.size and r0 < 0.015
    assert S.contraction_rate(s[:2], (l2 + d)[:2], l2[:2], T_K)[2] == 2
    assert math.isnan(S.contraction_rate(s[:2], (l2 + d)[:2], l2[:2], T_K)[0])


# ---------------------------------------------------------------- bootstrap
def test_bootstrap_ci_contains_truth_and_is_deterministic():
    data = np.random.default_rng(0).normal(1.0, 0.1, size=50)
    est, lo, hi = S.bootstrap_ci(np.mean, data, n_boot=4000)
    assert est == pytest.approx(data.mean())
    assert lo < 1.0 < hi and lo < est < hi
    assert 0.035 < hi - lo < 0.08  # ≈ 2·1.96·0.1/√50 = 0.055
    assert S.bootstrap_ci(np.mean, data, n_boot=4000) == (est, lo, hi)
    assert S.bootstrap_ci(np.mean, data, n_boot=4000, seed=1) != (est, lo, hi)
    _, lo90, hi90 = S.bootstrap_ci(np.mean, data, n_boot=4000, level=0.9)
    assert lo < lo90 < hi90 < hi


def test_bootstrap_ci_degenerate_and_paired_rows():
    assert S.bootstrap_ci(np.mean, np.full(7, 3.25), n_boot=500) == (3.25, 3.25, 3.25)
    x = np.random.default_rng(2).normal(size=20)
    paired = np.stack([x, x + 1.0], axis=1)  # rows resampled whole: the difference is always exactly 1
    assert S.bootstrap_ci(lambda d: float(np.mean(d[:, 1] - d[:, 0])), paired, n_boot=500) == \
        pytest.approx((1.0, 1.0, 1.0))


# ---------------------------------------------------------------- best over LR, Δ
LRS = 1.6e-2 * 2.0 ** np.arange(-3, 3)


def _parabola(x0: float, best: float, k: float = 0.05) -> np.ndarray:
    return best + k * (np.log2(LRS) - x0) ** 2


def test_best_over_lr_recovers_vertex():
    x0 = math.log2(1.6e-2) + 0.3
    y = _parabola(x0, 2.5)
    assert S.best_over_lr(y, LRS) == pytest.approx(2.5, abs=1e-12)
    assert S.best_over_lr(y, LRS, fit=False) == pytest.approx(2.5 + 0.05 * 0.09)
    perm = np.array([3, 0, 5, 1, 4, 2])
    assert S.best_over_lr(y[perm], LRS[perm]) == pytest.approx(2.5, abs=1e-12)  # unsorted grid
    y_nan = y.copy()
    y_nan[-1] = np.nan  # the top LR diverged: the bracket (k = -1, 0, 1) is still finite
    assert S.best_over_lr(y_nan, LRS) == pytest.approx(2.5, abs=1e-12)
    y_nan[-2] = np.nan  # now the argmin is the highest stable LR and the vertex lies beyond it: no extrapolation
    assert S.best_over_lr(y_nan, LRS) == pytest.approx(2.5 + 0.05 * 0.09)
    edge = _parabola(math.log2(LRS[0]) + 0.4, 2.5)  # argmin at the grid's end, vertex inside the first bracket
    assert S.best_over_lr(edge, LRS) == pytest.approx(2.5, abs=1e-12)


def test_best_over_lr_clips_to_observed():
    falling = np.array([3.0, 2.9, 2.8, 2.7, 2.65, 2.6])  # argmin at the edge, concave: no extrapolation
    assert S.best_over_lr(falling, LRS) == 2.6
    outside = _parabola(math.log2(LRS[-1]) + 2.0, 2.5)  # vertex beyond the grid
    assert S.best_over_lr(outside, LRS) == pytest.approx(outside.min())
    assert math.isnan(S.best_over_lr(np.full(6, np.nan), LRS))


def test_relative_gap_of_best_known_delta():
    x0 = math.log2(1.6e-2)
    offsets = np.array([[-0.01], [0.0], [0.01]])  # per-seed noise that cancels in the seed mean
    a = _parabola(x0 + 0.2, 2.60) + offsets
    b = _parabola(x0 - 0.4, 2.58, k=0.08) + offsets
    assert S.relative_gap_of_best(a, b, LRS) == pytest.approx((2.60 - 2.58) / 2.60, abs=1e-12)
    assert S.relative_gap_of_best(a[1], b[1], LRS) == pytest.approx((2.60 - 2.58) / 2.60, abs=1e-12)
    assert S.relative_gap_of_best(a, b, LRS, fit=False) != pytest.approx((2.60 - 2.58) / 2.60, abs=1e-4)


def test_delta_ci_is_paired():
    rng = np.random.default_rng(3)
    a = _parabola(math.log2(1.6e-2) + 0.1, 2.6) + rng.normal(0, 0.05, size=(5, 1))  # large seed-to-seed spread
    b = a * (1 - 0.01)
    est, lo, hi = S.delta_ci(a, b, LRS, n_boot=500)
    assert (est, lo, hi) == pytest.approx((0.01, 0.01, 0.01), abs=1e-12)
    # the same data resampled independently per arm would give a wide interval: pairing is what makes it zero
    _, ulo, uhi = S.bootstrap_ci(lambda d: S.relative_gap_of_best(d, b, LRS), a, n_boot=500)
    assert uhi - ulo > 1e-3
    with pytest.raises(ValueError):
        S.delta_ci(a, b[:4], LRS)


# ---------------------------------------------------------------- Spearman
def test_spearman():
    assert S.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))  # with a tie
    assert S.spearman([2, 5, 20, np.nan], [0.1, 0.2, 0.9, 5.0]) == pytest.approx(1.0)  # NaN pair dropped
    assert S.spearman([2, 5, 20], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(S.spearman([1, 2, 3], [1, 1, 1]))
    assert math.isnan(S.spearman([1, np.nan], [1, 2]))


# ---------------------------------------------------------------- verdicts
@pytest.mark.parametrize(
    "expect, lo, hi, reproduced, why",
    [
        (">0", 0.001, 0.007, True, ""),
        (">0", -0.002, 0.007, None, "the interval contains 0"),
        (">0", -0.007, -0.001, False, "the opposite sign is significant"),
        ("<0", -0.007, -0.001, True, ""),
        ("<0", -0.002, 0.007, None, "the interval contains 0"),
        ("<0", 0.001, 0.007, False, "the opposite sign is significant"),
        # margin verdicts (default margin 0.1%): the interval must lie inside the margin, else INCONCLUSIVE
        ("<=0", -0.007, -0.001, True, "the interval lies inside the margin (significantly below 0)"),
        ("<=0", -0.002, 0.0005, True, "the interval lies inside the margin"),
        ("<=0", -0.002, 0.003, None, "the interval leaves the margin"),  # contains 0, but also effects > margin
        ("<=0", 0.002, 0.007, False, "significantly above 0 by more than the margin"),
        (">=0", 0.001, 0.007, True, "the interval lies inside the margin (significantly above 0)"),
        (">=0", -0.0005, 0.003, True, "the interval lies inside the margin"),
        (">=0", -0.002, 0.003, None, "the interval leaves the margin"),
        (">=0", -0.007, -0.002, False, "significantly below 0 by more than the margin"),
        ("==0", -0.0005, 0.0008, True, "the interval lies inside the margin"),
        ("==0", -0.002, 0.0005, None, "the interval leaves the margin"),
        ("==0", 0.002, 0.004, False, "the interval lies outside the margin"),
    ],
)
def test_verdict_ci(expect, lo, hi, reproduced, why):
    v = S.verdict_ci("claim", (lo + hi) / 2, lo, hi, 3, expect)
    assert v.reproduced is reproduced and v.why == why


def test_verdict_format_and_guards():
    v = S.verdict_ci("D2Z beats 10x at 20 TPP", 0.0041, 0.0012, 0.0070, 3, ">0")
    assert v.statistic == "Δ = +0.41% [+0.12, +0.70], 3 seeds"
    assert v.markdown() == "- **REPRODUCED** D2Z beats 10x at 20 TPP: Δ = +0.41% [+0.12, +0.70], 3 seeds"
    one = S.verdict_ci("c", 0.004, 0.004, 0.004, 1, ">0")
    assert one.reproduced is None and "1 seed" in one.statistic
    assert S.verdict_ci("c", math.nan, math.nan, math.nan, 5, "<=0").reproduced is None
    rho = S.verdict_ci("gap grows with TPP", 0.8, 0.2, 1.0, 5, ">0", unit="", scale=1.0, name="ρ")
    assert rho.statistic == "ρ = +0.80 [+0.20, +1.00], 5 seeds"
    assert "INCONCLUSIVE" in S.Verdict("c", None, "s", "w").markdown()
    assert "NOT REPRODUCED" in S.Verdict("c", False, "s").markdown()
    with pytest.raises(ValueError):
        S.verdict_ci("c", 0.0, 0.0, 0.0, 3, ">")


def test_margin_is_a_parameter_and_stated():
    wide = S.verdict_ci("no worse", 0.0, -0.002, 0.003, 3, ">=0", margin=0.005)
    assert wide.reproduced is True and "margin ±0.50%" in wide.statistic
    assert S.verdict_ci("no worse", 0.0, -0.002, 0.003, 3, ">=0").reproduced is None  # default ±0.1%
    with pytest.raises(ValueError):
        S.verdict_ci("c", 0.0, -0.1, 0.1, 3, ">=0", margin=math.nan)
    with pytest.raises(ValueError):
        S.verdict_ci("c", 0.0, -0.1, 0.1, 3, ">=0", margin=-0.01)


# ---------------------------------------------------------------- t-intervals and named estimators
def test_t_interval_known_values():
    mean, lo, hi = S.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert mean == 2.0 and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    assert math.isnan(S.t_interval([1.0])[1]) and S.t_interval([1.0])[0] == 1.0
    assert S.t_interval([5.0, 5.0, 5.0])[1:] == (5.0, 5.0)
    assert S.t_interval([1.0, 2.0, np.nan, 3.0]) == S.t_interval([1.0, 2.0, 3.0])


def test_paired_estimate_t_for_ten_seeds_or_fewer_bootstrap_above():
    three = S.paired_estimate([0.0028, 0.0027, 0.0029], "per-seed observed minimum")
    assert three.method == "paired t" and three.n == 3
    assert (three.lo, three.hi) == pytest.approx(S.t_interval([0.0028, 0.0027, 0.0029])[1:])
    # the bootstrap over 3 seeds is about the min-max of the per-seed values: narrower than the t-interval
    _, blo, bhi = S.bootstrap_ci(lambda d: float(np.mean(d)), np.array([0.0028, 0.0027, 0.0029]))
    assert three.lo < blo and bhi < three.hi
    rng = np.random.default_rng(0)
    many = S.paired_estimate(rng.normal(0.01, 0.002, 20), "x")
    assert many.method == "paired bootstrap" and many.n == 20 and many.lo < 0.01 < many.hi
    assert S.paired_estimate([0.1, np.nan, 0.3], "x").n == 2  # a missing seed is not counted
    text = three.text()
    assert text.startswith("+0.28% [") and "paired t over 3 seeds; per-seed observed minimum" in text
    v = S.verdict("D2Z beats 10x", three, ">0")
    assert v.reproduced is True and "paired t, per-seed observed minimum" in v.statistic


def test_t_interval_verdict_inconclusive_when_interval_leaves_margin():
    # wsd's old headline: per-seed gaps whose bootstrap (min-max) interval excluded 0 but whose t-interval does not
    per_seed = [-0.0050, -0.0002, -0.0003]
    est = S.paired_estimate(per_seed, "final validation loss")
    assert est.lo < 0 < est.hi
    assert S.verdict("1-sqrt beats D2Z", est, "<0").reproduced is None
    assert S.verdict("1-sqrt is no worse than D2Z", est, "<=0").reproduced is None  # hi beyond +0.1%
    tight = S.paired_estimate([-0.0002, 0.0001, 0.0000, 0.0001], "x")
    assert S.verdict("equivalent", tight, "==0").reproduced is True


def test_vertex_of_three():
    lrs = [0.008, 0.016, 0.032]
    x = np.log2(lrs)
    y = 3.0 + 0.1 * (x - (np.log2(0.016) + 0.3)) ** 2
    assert S.vertex_of_three(y, lrs) == pytest.approx(3.0)
    assert S.vertex_of_three([3.0, 2.0, 1.0], lrs) == 1.0  # monotone: no vertex inside, the observed minimum
    assert math.isnan(S.vertex_of_three([3.0, np.nan, 1.0], lrs))
    with pytest.raises(ValueError):
        S.vertex_of_three([1.0, 2.0], lrs[:2])
