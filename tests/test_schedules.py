"""LR schedules at exact steps, and per-group base LRs surviving them."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.config import ConfigError, from_dict
from pretrain.optim import OptimizerConfig
from pretrain.schedules import SCHEDULES, ScheduleConfig, register_schedule, set_lr


def mults(name: str, total: int, warmup: int, **kw) -> list[float]:
    cfg = ScheduleConfig(name=name, warmup_steps=warmup, **kw)
    return cfg.build(total).multipliers()


def test_linear_d2z_exact():
    # T=10 updates, W=2: warmup 1/2, 1; then decay over updates 3..10 to 0 at the last one.
    m = mults("linear", 10, 2, end_ratio=0.0)
    assert m[:2] == [0.5, 1.0]
    assert m[2:] == pytest.approx([1 - k / 8 for k in range(1, 9)], abs=1e-15)
    assert m[-1] == 0.0
    assert all(a >= b for a, b in zip(m[1:], m[2:]))


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
        assert cfg.build(4).multipliers() == [1.0, 0.25, 0.25, 0.25]
    finally:
        SCHEDULES.pop("test_half")


def test_bad_schedule_config_is_named():
    with pytest.raises(ConfigError) as e:
        from_dict(ScheduleConfig, {"name": "linaer", "params": {"nope": 1}}, "x.yaml", prefix="schedule")
    assert "x.yaml: schedule.name = 'linaer': expected a registered schedule" in str(e.value)
    with pytest.raises(ConfigError) as e:
        from_dict(ScheduleConfig, {"name": "constant", "end_ratio": 0.1}, "x.yaml", prefix="schedule")
    assert "schedule.end_ratio = 0.1: expected null" in str(e.value)
