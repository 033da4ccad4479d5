"""LR schedules at exact steps, and per-group base LRs surviving them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pretrain.config_loader import ConfigError, from_dict
from pretrain.optim import OptimizerConfig, set_lr
from pretrain.schedules import SCHEDULES, ScheduleConfig, register_schedule


def mults(name: str, total: int, warmup: int, **kw) -> list[float]:
    cfg = ScheduleConfig(name=name, warmup_steps=warmup, **kw)
    return cfg.build(total).multipliers()


def test_linear_d2z_exact():
    # T=10 updates, W=2: warmup 1/2, 1; then decay over updates 3..10 to 0 at the last one.
    m = mults("linear", 10, 2, end_ratio=0.0)
    assert m[:2] == [0.5, 1.0]
    assert m[2:] == pytest.approx([1 - k / 8 for k in range(1, 9)], abs=1e-15)
    assert m[-1] == 0.0
    assert all(a >= b for a, b in zip(m[1:], m[2:], strict=False))


def test_linear_10x_ends_at_tenth():
    m = mults("linear", 20, 4, end_ratio=0.1)
    assert m[3] == 1.0 and m[-1] == pytest.approx(0.1, abs=1e-15)
    assert m[11] == pytest.approx(1 - 0.9 * 8 / 16)  # update 12: p = (12 - 4) / 16


def test_cosine_exact():
    m = mults("cosine", 11, 1, end_ratio=0.1)
    assert m[0] == 1.0
    for step in range(1, 11):
        p = (step + 1 - 1) / 10
        assert m[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)), abs=1e-15)
    assert m[-1] == pytest.approx(0.1)
    assert m[5] == pytest.approx(0.55)  # half-way is the mean of peak and floor


def test_constant_and_no_warmup():
    assert mults("constant", 5, 0) == [1.0] * 5
    assert mults("constant", 5, 5) == [0.2, 0.4, 0.6, 0.8, 1.0]


def test_warmup_fraction_default_is_ten_percent():
    cfg = ScheduleConfig(name="linear")
    assert cfg.warmup_for(1000) == 100
    assert cfg.build(1000)(99) == 1.0 and cfg.build(1000)(98) == pytest.approx(0.99)


def test_pure_function_of_step():
    sched = ScheduleConfig(name="cosine", warmup_steps=3).build(50)
    assert [sched(s) for s in (40, 7, 40, 0)] == [sched(40), sched(7), sched(40), sched(0)]


def test_group_base_lrs_survive(tmp_path):
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    groups = [{"params": [a], "lr_mult": 1.0, "name": "x"}, {"params": [b], "lr_mult": 0.25, "name": "y"}]
    opt = OptimizerConfig(lr=0.02).build(groups)
    set_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.0025]


def test_user_registered_schedule():
    @register_schedule("test_half")
    def half(t, T, W, *, level: float = 0.5):
        return level

    try:
        cfg = from_dict(ScheduleConfig, {"name": "test_half", "warmup_steps": 1, "params": {"level": 0.25}}, "x.yaml")
        assert cfg.build(4).multipliers() == [0.25] * 4  # warmup ramps to the schedule's value at W
    finally:
        SCHEDULES.pop("test_half")


def test_bad_schedule_config_is_named():
    with pytest.raises(ConfigError) as e:
        from_dict(ScheduleConfig, {"name": "linaer", "params": {"nope": 1}}, "x.yaml", prefix="schedule")
    assert "x.yaml: schedule.name = 'linaer': expected a registered schedule" in str(e.value)
    with pytest.raises(ConfigError) as e:
        from_dict(ScheduleConfig, {"name": "constant", "end_ratio": 0.1}, "x.yaml", prefix="schedule")
    assert "schedule.end_ratio = 0.1: expected null" in str(e.value)


# -- every schedule at its key steps -----------------------------------------------------------
# Updates are 1-based: multipliers()[t - 1] is the multiplier of update t.


def at(cfg: ScheduleConfig, T: int, *ts: int, **ctx) -> list[float]:
    m = cfg.build(T, **ctx).multipliers()
    return [m[t - 1] for t in ts]


def test_step_decay_exact():
    cfg = ScheduleConfig(name="step", warmup_steps=2, params={"milestones": [5, 8], "factor": 0.1})
    # first update, end of warmup, before/at each milestone, last
    assert at(cfg, 10, 1, 2, 3, 4, 5, 7, 8, 10) == pytest.approx([0.5, 1, 1, 1, 0.1, 0.1, 0.01, 0.01], abs=1e-15)


def test_inverse_sqrt_exact():
    cfg = ScheduleConfig(name="inverse_sqrt", warmup_steps=4)
    assert at(cfg, 100, 1, 4, 5, 16, 100) == pytest.approx([0.25, 1.0, math.sqrt(4 / 5), 0.5, 0.2])
    m = cfg.build(100).multipliers()
    assert all(a >= b for a, b in zip(m[3:], m[4:], strict=False))


def test_cyclic_exact():
    cfg = ScheduleConfig(name="cyclic", warmup_steps=0, end_ratio=0.2, params={"period": 10})
    # peak at t = W + k*period, floor half-way
    assert at(cfg, 40, 10, 5, 15, 20, 40) == pytest.approx([1.0, 0.2, 0.2, 1.0, 1.0])


def test_rational_closed_form_matches_recursion():
    alpha = 0.01
    cfg = ScheduleConfig(name="rational", warmup_steps=5)
    m = cfg.build(200, alpha=alpha).multipliers()
    assert m[4] == 1.0 and m[0] == 0.2
    eta = 1.0  # Eq. 7 in multiplier units: eta_{i+1} = eta_i / (1 + eta_i * alpha)
    for t in range(6, 201):
        eta = eta / (1 + eta * alpha)
        assert m[t - 1] == pytest.approx(eta, rel=1e-12)


@pytest.mark.parametrize("shape,mid", [("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5))])
def test_wsd_exact(shape, mid):
    # T=100, W=10, cooldown over the last 20: stable through update 80, mid-cooldown at 90, 0 at 100.
    cfg = ScheduleConfig(name="wsd", warmup_steps=10, params={"decay": 0.2, "shape": shape})
    assert at(cfg, 100, 1, 10, 11, 80, 81, 90, 100) == pytest.approx(
        [0.1, 1.0, 1.0, 1.0, at(cfg, 100, 81)[0], mid, 0.0], abs=1e-12
    )
    assert at(cfg, 100, 81)[0] < 1.0
    m = cfg.build(100).multipliers()
    assert all(a >= b for a, b in zip(m[9:], m[10:], strict=False))
    # decay given in steps, ending at 10x
    steps = ScheduleConfig(name="wsd", warmup_steps=0, end_ratio=0.1, params={"decay_steps": 20, "shape": shape})
    assert at(steps, 100, 80, 100) == pytest.approx([1.0, 0.1])


def test_skiplr_absolute_switches():
    # SkipLR Algorithm 2: eta_before until k_s, eta_after from k_s on; absolute LRs over lr=0.1.
    cfg = ScheduleConfig(name="skiplr", warmup_steps=0, params={"eta_before": 0.05, "eta_after": 0.01, "k_s": 30,
                                                                "switches": [[60, 0.002]]})
    vals = at(cfg, 100, 1, 29, 30, 59, 60, 100, lr=0.1)
    assert vals == pytest.approx([0.5, 0.5, 0.1, 0.1, 0.02, 0.02])
    rel = ScheduleConfig(name="skiplr", warmup_steps=4, params={"eta_before": 0.5, "eta_after": 1.0, "k_s": 10, "absolute": False})
    assert at(rel, 20, 1, 4, 9, 10) == pytest.approx([0.125, 0.5, 0.5, 1.0])  # warmup ramps to eta_before


def test_every_schedule_is_a_pure_function_of_the_step():
    """The value at a step does not depend on what was evaluated before (as after a resume)."""
    import random

    from pretrain.schedules import SCHEDULES

    params = {"step": {"milestones": [50]}, "skiplr": {"eta_before": 1.0, "eta_after": 0.5, "k_s": 40, "absolute": False},
              "cooldown": {"start_step": 30, "start_lr": 0.5, "decay_steps": 50}}
    for name in SCHEDULES:
        cfg = ScheduleConfig(name=name, warmup_steps=10, params=params.get(name, {}))
        straight = cfg.build(100, alpha=0.01).multipliers()
        fresh = cfg.build(100, alpha=0.01)  # a new process after a resume builds it again
        order = list(range(100))
        random.Random(0).shuffle(order)
        assert [fresh(s) for s in order] == [straight[s] for s in order], name


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"name": "wsd", "warmup_fraction": 0.3, "params": {"decay": 0.8}}, "schedule.params.decay = 0.8: expected a cooldown that fits"),
        ({"name": "skiplr", "params": {"eta_before": 0.1, "eta_after": 0.01, "k_s": 500}}, "schedule.params.k_s = 500: expected switch steps within the run (1..100)"),
        ({"name": "step", "params": {"milestones": [50, 200]}}, "schedule.params.milestones = [50, 200]: expected update numbers after warmup and within the run"),
        ({"name": "linear", "end_ratio": 1.5}, "schedule.end_ratio = 1.5: expected a ratio in [0, 1]"),
        ({"name": "cyclic", "params": {"period": "ten"}}, "schedule.params.period = 'ten': expected an integer"),
        ({"name": "skiplr", "params": {"eta_after": 0.1, "k_s": 5}}, "schedule.params.eta_before = None: expected a value: schedule 'skiplr' requires it"),
        ({"name": "wsd", "params": {"shape": "square"}}, "schedule.params.shape = 'square': expected one of 'linear', 'cosine', '1-sqrt'"),
    ],
)
def test_bad_schedule_values_are_named(data, needle):
    def check():
        cfg = from_dict(ScheduleConfig, data, "run.yaml", prefix="schedule")
        problems = cfg.check_run(100)
        if problems:
            from pretrain.config_loader import Problems, Sources
            from pretrain.run_config import _schedule_value

            p = Problems(Sources("run.yaml"))
            for key, expected in problems:
                p.add(f"schedule.{key}", _schedule_value(cfg, key), expected)
            p.raise_if_any()

    with pytest.raises(ConfigError) as e:
        check()
    assert needle in str(e.value)


def test_unknown_schedule_lists_registered():
    with pytest.raises(ConfigError) as e:
        from_dict(ScheduleConfig, {"name": "onecycle"}, "run.yaml", prefix="schedule")
    for name in ("constant", "cosine", "cyclic", "inverse_sqrt", "linear", "rational", "skiplr", "step", "wsd"):
        assert name in str(e.value)


def test_user_module_is_imported_for_its_schedules(tmp_path, monkeypatch):
    (tmp_path / "my_scheds.py").write_text(
        "from pretrain.schedules import register_schedule\n"
        "@register_schedule('test_third')\n"
        "def third(t, T, W):\n    return 1 / 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        cfg = from_dict(ScheduleConfig, {"name": "test_third", "modules": ["my_scheds"], "warmup_steps": 0}, "x.yaml")
        assert cfg.build(3).multipliers() == [1 / 3] * 3
    finally:
        SCHEDULES.pop("test_third", None)
    with pytest.raises(ConfigError, match="schedule.modules = \\['nope_mod'\\]: expected importable Python modules"):
        from_dict(ScheduleConfig, {"name": "linear", "modules": ["nope_mod"]}, "x.yaml", prefix="schedule")


# -- the dual view ----------------------------------------------------------------------------
from pretrain.schedules.dual import coefficients, smoothing, summarize  # noqa: E402

# The D2Z paper's Figure 2 setting: 111M muP model, base LR 1.6e-2, rho 1/3, lambda 0.1.
FIG2_ALPHA = 1.6e-2 / 3 * 0.1


@pytest.mark.parametrize("name,params", [("linear", {}), ("cosine", {}), ("wsd", {}), ("constant", {}), ("step", {"milestones": [600, 900]})])
def test_coefficients_sum_to_one_at_every_step(name, params):
    alpha = smoothing(ScheduleConfig(name=name, params=params).build(1000).multipliers(), 0.05)
    for t in (1, 2, 10, 99, 100, 500, 999, 1000):
        c0, c = coefficients(alpha, t)
        assert len(c) == t and (c >= 0).all()
        assert c0 + c.sum() == pytest.approx(1.0, abs=1e-12)


def test_rational_gives_equal_coefficients():
    T, W = 2000, 200
    cfg = ScheduleConfig(name="rational", warmup_steps=W)
    alpha = smoothing(cfg.build(T, alpha=FIG2_ALPHA).multipliers(), FIG2_ALPHA)
    for t in (W + 1, 1000, T):
        _, c = coefficients(alpha, t)
        after = c[W - 1 :]  # updates W..t (update W runs at the peak)
        assert after.max() / after.min() == pytest.approx(1.0, abs=1e-9)
    # ...while linear decay does not
    _, c = coefficients(smoothing(ScheduleConfig(name="linear", warmup_steps=W).build(T).multipliers(), FIG2_ALPHA))
    assert c[W:-1].max() / c[W:-1].min() > 2  # (the last update has LR 0)


def test_abrupt_drops_emphasise_earlier_updates():
    """Figure 2: at the same peak LR, step decay weights early updates more than cosine, cosine more than linear."""
    T = 55680
    early = {}
    for name, params in [("linear", {}), ("cosine", {}), ("step", {"milestones": [T // 2, 3 * T // 4]})]:
        alpha = smoothing(ScheduleConfig(name=name, params=params).build(T).multipliers(), FIG2_ALPHA)
        _, c = coefficients(alpha)
        early[name] = c[: T // 2].sum()
    assert early["step"] > early["cosine"] > early["linear"]


def test_window_counts_recent_updates():
    c = np.array([0.1, 0.1, 0.2, 0.6])  # most recent last
    from pretrain.schedules.dual import window

    assert window(c, 0.5) == 1 and window(c, 0.8) == 2 and window(c, 0.9) == 3 and window(c, 1.0) == 4
    s = summarize(smoothing([1.0] * 100, 0.1))
    assert s.c0 == pytest.approx(0.9**100) and s.window50 == 7  # constant alpha: an EMA of timescale 1/alpha


def test_alpha_of_one_or_more_is_refused():
    with pytest.raises(ValueError, match="alpha_t"):
        smoothing([1.0, 1.0], 1.0)


def test_schedules_cli_prints_and_plots(tmp_path):
    import sys

    from tests.conftest import ROOT, run_cli

    out = tmp_path / "s.png"
    res = run_cli([sys.executable, "-m", "pretrain.schedules", "--config", str(ROOT / "configs/demo_cpu.yaml"),
                   "--compare", "linear:end_ratio=0.1", "step:milestones=[100,150]", "rational", "--out", str(out),
                   "train.max_steps=200"])
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(l.startswith("linear(end_ratio=0.0) [run]") for l in lines)
    assert any(l.startswith("step(milestones=[100, 150])") for l in lines)
    assert out.stat().st_size > 10_000
    bad = run_cli([sys.executable, "-m", "pretrain.schedules", "--config", str(ROOT / "configs/demo_cpu.yaml"),
                   "--compare", "skiplr:eta_before=0.1,eta_after=0.01,k_s=900", "--out", str(out)])
    assert bad.returncode == 2 and "switch steps within the run (1..200)" in bad.stderr
