"""SkipLR study (issue 21 part 1): statistics on synthetic curves with known answers, and the plan's stages."""

import math

import numpy as np
import pytest

from experiments import skiplr_analysis as sa
from experiments import skiplr_plan as sp

T, TK, EPS = 1000, 200, 0.01
STEPS = np.arange(10, T + 1, 10)


def _phi2(steps, scale=1.0):
    return 3.0 + 2.0 * np.exp(-steps / (60.0 * scale))  # levels off well before T


def _seed(seed, contraction_rate, noise=0.0):
    rng = np.random.default_rng(seed)
    l2 = _phi2(STEPS) + noise * rng.standard_normal(STEPS.size)
    l1 = np.full(STEPS.size, 5.0)  # eta1 moves nothing: a 40% gap at t_k
    g0 = (5.0 - l2[STEPS == TK][0])
    l3 = np.where(STEPS <= TK, l1, l2 + g0 * np.exp(-contraction_rate * (STEPS - TK)))
    return sa.SeedCurves(seed, STEPS, l1, l2, l3)


def test_known_transition_gives_known_table():
    # gap 1.93 at t_k, r = 0.02/step: |L3-L2|/L2 < 1% once 1.93 exp(-0.02 d) < 0.03 -> d > 208 -> logged step 410
    res = [sa.analyze_seed(_seed(s, 0.02), TK, EPS) for s in range(20)]
    t = sa.tables(res, TK, T)
    assert t.phi3.transitioned == 20 and t.phi3.median == 410 and t.phi3.min == 410 and t.phi3.max == 410
    assert t.phi3.by_25 == 0 and t.phi3.by_50 == 100 and t.phi3.trivial == 0
    assert t.placebo.transitioned == 0
    assert all(abs(r.rate - 0.02) < 1e-3 for r in res)  # test (a) recovers the rate
    assert sa.transition_verdict(t).reproduced is True
    assert sa.placebo_test(t).reproduced is True


def test_delayed_copy_is_no_transition_and_fails_the_delay_null():
    # Phi3 IS Phi2 delayed by t_k and Phi2 keeps falling: no transition, and the delay null catches it
    l2 = 5.0 - 1.5 * STEPS / T
    res = []
    for s in range(6):
        c = sa.SeedCurves(s, STEPS, np.full(STEPS.size, 5.0), l2, np.where(STEPS <= TK, 5.0, 5.0 - 1.5 * (STEPS - TK) / T))
        res.append(sa.analyze_seed(c, TK, EPS))
    t = sa.tables(res, TK, T)
    assert t.phi3.transitioned == 0 and t.phi3.median == T
    assert sa.transition_verdict(t).reproduced is False
    verdict, est = sa.delay_null_test(res)
    assert verdict.reproduced is False and est.value == pytest.approx(-1.0)


def test_contraction_passes_the_delay_null():
    res = [sa.analyze_seed(_seed(s, 0.05, noise=1e-3), TK, EPS) for s in range(6)]
    verdict, est = sa.delay_null_test(res)
    assert est is not None and verdict.reproduced is True


def test_placebo_can_fail():
    # Phi1 already on Phi2's curve: the placebo fires as often as Phi3
    res = []
    for s in range(5):
        l2 = _phi2(STEPS)
        res.append(sa.analyze_seed(sa.SeedCurves(s, STEPS, l2 * 1.001, l2, l2 * 1.001), TK, EPS))
    t = sa.tables(res, TK, T)
    assert t.placebo.transitioned == 5 and t.phi3.trivial == 5
    assert sa.placebo_test(t).reproduced is False


def test_halving_and_slope_tests():
    full = {s: 0.02 for s in range(10)}
    ok, _ = sa.halving_test(full, {s: 0.01 * (1 + 0.01 * s) for s in range(10)})
    bad, _ = sa.halving_test(full, {s: 0.02 * (1 + 0.01 * s) for s in range(10)})
    assert ok.reproduced is True and bad.reproduced is False
    # same r, g(t_k) hardly varies across seeds: slope not identified -> inconclusive
    res = [sa.analyze_seed(_seed(s, 0.02), TK, EPS) for s in range(6)]
    assert sa.slope_test(res, TK, EPS)[0].reproduced is None


def test_pilot_gate_refuses_when_the_crossing_is_after_T():
    slow = sa.pilot_check(_seed(0, 0.002), TK, T, EPS)  # 200 + ln(40)/0.002 ~ 2100 > T
    fast = sa.pilot_check(_seed(0, 0.02), TK, T, EPS)
    assert not slow.go and slow.predicted > T and "> T = 1000" in slow.reasons[0]
    assert fast.go and fast.observed == 410 and fast.levelled
    # one seed that crosses early by a dip while its fitted rate crosses after T: refused, naming a T that would do
    lucky = _seed(0, 0.002)
    dip = np.flatnonzero(STEPS == 900)[0]
    lucky.l3[dip] = lucky.l2[dip] * 1.001
    check = sa.pilot_check(lucky, TK, T, EPS)
    assert check.observed == 900 and check.predicted > T and not check.go
    assert "this seed crossed at step 900" in check.reasons[0] and "T = 3400 would let it cross" in check.reasons[0]  # 200 + 1.5 ln(62.8)/0.00199


def test_stability_reads_block_means_not_the_noisiest_window():
    # A curve that levels off at ~3.6 with 10-step means scattered +-3% (the pilots' Phi2 at eta2 = 3 looked so):
    # its lowest single mean is far below the level, so "last mean within 2% of the lowest" called it unstable.
    rng = np.random.default_rng(0)
    level = 3.6 + 0.6 * np.exp(-STEPS / 300.0)
    noisy = level * (1 + 0.03 * rng.standard_normal(STEPS.size))
    noisy[-1] = level[-1] * 1.03  # an unlucky last window
    assert noisy[-1] > 1.02 * noisy.min()
    assert sa.probe_stable(STEPS, noisy)[0]
    blown = noisy.copy()
    blown[-10:] += 0.3  # a late blow-up over the last 100 steps (still below the start)
    ok, why = sa.probe_stable(STEPS, blown)
    assert not ok and "rose at the end" in why
    flat = np.full(STEPS.size, 4.7)
    assert not sa.probe_stable(STEPS, flat)[0]  # did not learn
    assert not sa.probe_stable(STEPS, noisy, diverged=True)[0]


def test_scratch_T_is_derived_from_r():
    # the committed from-scratch study: r = 0.00348, g(t_k) = 51.6% -> crossing near 1333; x1.5 -> 1900
    assert sa.scratch_T(0.00348, 0.5157, 200) == 1900
    assert sp.variant("scratch", "cpu").T == 1900
    assert sa.scratch_T(-0.001, 0.5, 200) is None
    with pytest.raises(ValueError):
        sa.scratch_T(math.nan, 0.5, 200)


def test_default_plan_has_base_probe_pilot_and_seeds_from_init():
    v = sp.variant("pretrained", "cpu")
    before = sp.stages(v, lambda spec, runs: None)
    assert [r.label for r in before.runs][:1] == ["base"] and before.eta2 is None
    assert {r.params["role"] for r in before.runs} == {"base", "probe"}
    assert before.projected  # the pilot and seeds are priced by the dry run

    def finished(spec, runs):  # every probe LR up to 3 learns, 10 blows up; pilots contract within T
        role, lr = spec.params["role"], spec.params.get("lr")
        if role == "probe":
            return (lr > 5, list(STEPS[:20]), list(np.linspace(5, 4, 20)))
        c = _seed(spec.params["seed"], 0.02)
        if role == "phi3":
            return False, list(STEPS[STEPS > TK]), list(c.l3[STEPS > TK])
        return False, list(c.steps), list(c.l1 if role == "phi1" else c.l2)

    plan = sp.stages(v, finished)
    assert plan.eta2 == 3.0 and plan.probe[10.0][0] is False
    pair = sp.pair_name(3e-3, 3.0)
    seeds = {r.params["seed"] for r in plan.runs if r.params.get("pair") == pair and r.params["role"] == "phi1"}
    assert seeds == set(range(20))
    for r in plan.runs:
        if r.params["role"] in ("phi1", "phi2", "probe", "phi2-half"):
            assert r.init_from == "base" and r.init_step == plan.runs[0].keep[0] and r.parent is None
        if r.params["role"] in ("phi3", "phi3-half"):
            assert r.parent.endswith("/phi1") and r.branch_step == TK
    assert sum(r.params["role"] == "phi2-half" for r in plan.runs) == 10
    assert any(r.params.get("pair") == sp.pair_name(*sp.PAPER_PAIR) for r in plan.runs)  # the paper's pair's pilot
