"""Per-update LRs of registered schedules, and a search for the schedule a law predicts best.

The LRs come from the schedule registry itself (``ScheduleConfig.build(...).multipliers()``, what
the trainer multiplies the optimizer's LR by), so a forecast sees exactly the LRs a run would use.

The search keeps the budget (``max_steps``), the peak LR and the warmup, and searches the
registered families only (there is no registered piecewise-linear schedule):

- ``wsd``: the cooldown's length ``decay`` in [0.05, 0.6] of the run (at most what follows the
  warmup) and ``end_ratio`` in [0, 0.1], for each ``shape`` (linear, cosine, 1-sqrt);
- ``linear`` and ``cosine``: ``end_ratio`` in [0, 0.1];
- ``steps``: a piecewise-constant decay with ``levels`` drops (the registered ``skiplr`` with
  ``absolute: false``), the drop steps and the multiplier after each drop free.

Each family is searched with scipy's differential evolution (seeded, so deterministic), and the
winner's parameters are rounded to what a YAML file states before it is evaluated once more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from ..schedules import ScheduleConfig
from .fit import FittedLaw, ForecastError

FAMILIES = ("wsd", "linear", "cosine", "steps")
END_RATIO_MAX = 0.1
WSD_DECAY = (0.05, 0.6)


def check_schedule(cfg: ScheduleConfig, max_steps: int, where: str = "schedule") -> None:
    """Raise ForecastError naming every problem of ``cfg`` (registry and parameters) for a run of max_steps."""
    problems = cfg.validate()
    if not problems:
        problems = cfg.check_run(max_steps)
    if problems:
        raise ForecastError("; ".join(f"{where}.{k}: expected {e}" for k, e in problems))


def lrs_for_schedule(schedule_cfg: ScheduleConfig, peak_lr: float, max_steps: int, alpha: float = 0.0) -> np.ndarray:
    """Every update's LR (1..max_steps): ``peak_lr`` times the registered schedule's multiplier.

    ``alpha`` (peak LR x weight decay of the hidden matrices) is the context the ``rational``
    schedule needs; :func:`lrs_for_config` fills it in from a run config.
    """
    if not max_steps or max_steps < 1:
        raise ForecastError(f"max_steps: expected an integer >= 1, got {max_steps!r}")
    check_schedule(schedule_cfg, max_steps)
    mults = schedule_cfg.build(max_steps, lr=peak_lr, alpha=alpha).multipliers()
    return peak_lr * np.asarray(mults, dtype=np.float64)


def lrs_for_config(cfg, schedule: ScheduleConfig | None = None) -> np.ndarray:
    """The LRs a run config trains with (``cfg.build_schedule()``, as the trainer), or with ``schedule`` instead."""
    if cfg.train.max_steps is None:
        raise ForecastError("train.max_steps: expected the run's number of updates (the config gives its budget in "
                            "tokens only; pass train.max_steps=N)")
    run = dataclasses.replace(cfg, schedule=schedule) if schedule is not None else cfg
    check_schedule(run.schedule, cfg.train.max_steps)
    return cfg.optimizer.lr * np.asarray(run.build_schedule().multipliers(), dtype=np.float64)


def schedule_yaml(cfg: ScheduleConfig, comment: str = "") -> str:
    """The ``schedule:`` section of a run YAML for ``cfg`` (replace the run's section with it)."""
    import yaml

    body = {"name": cfg.name, "warmup_steps": cfg.warmup_steps}
    if cfg.warmup_steps is None:
        body["warmup_fraction"] = cfg.warmup_fraction
    if cfg.end_ratio is not None:
        body["end_ratio"] = cfg.end_ratio
    if cfg.params:
        body["params"] = dict(cfg.params)
        if "switches" in body["params"]:  # [[step, value], ...]: the type hints made the steps floats
            body["params"]["switches"] = [[int(k), v] for k, v in body["params"]["switches"]]
    text = yaml.safe_dump({"schedule": body}, sort_keys=False, default_flow_style=None)
    return "".join(f"# {line}\n" for line in comment.splitlines()) + text


def schedule_override(cfg: ScheduleConfig) -> str:
    """The same section as one command-line override: ``schedule={...}`` replaces the whole section."""
    import yaml

    section = yaml.safe_load(schedule_yaml(cfg))["schedule"]
    return "schedule=" + yaml.safe_dump(section, default_flow_style=True, width=10_000, sort_keys=False).strip()


# -- the families --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Family:
    """A family of registered schedules: ``make(x) -> ScheduleConfig`` over a box of ``bounds``."""

    name: str
    bounds: list[tuple[float, float]]
    make: Callable[[np.ndarray], ScheduleConfig]
    names: list[str]  # of the coordinates
    edges: list[tuple[bool, bool]]  # which ends of each range are the search's choice, not the schedule's

    def at_edge(self, x: np.ndarray) -> list[str]:
        """The coordinates of ``x`` at an end of their range that the search chose (the optimum may lie beyond)."""
        out = []
        for name, v, (lo, hi), (soft_lo, soft_hi) in zip(self.names, x, self.bounds, self.edges, strict=True):
            tol = 0.01 * (hi - lo)
            if (soft_lo and v <= lo + tol) or (soft_hi and v >= hi - tol):
                out.append(f"{name} in [{lo:g}, {hi:g}]")
        return sorted(set(out))


def families(name: str, max_steps: int, warmup_steps: int, levels: int = 3) -> list[Family]:
    """The searchable families called ``name`` (``wsd`` is one per cooldown shape)."""
    T, W = max_steps, warmup_steps
    base = {"warmup_steps": W}
    if name == "wsd":
        hi = min(WSD_DECAY[1], (T - W) / T)
        if hi <= 0:
            raise ForecastError(f"wsd: no room for a cooldown after a warmup of {W} of {T} updates")
        lo = min(WSD_DECAY[0], hi)
        return [Family(f"wsd/{shape}", [(lo, hi), (0.0, END_RATIO_MAX)],
                       lambda x, shape=shape: ScheduleConfig("wsd", end_ratio=round(float(x[1]), 4), **base,
                                                             params={"decay": round(float(x[0]), 4), "shape": shape}),
                       ["decay", "end_ratio"], [(True, hi == WSD_DECAY[1]), (False, True)])
                for shape in ("linear", "cosine", "1-sqrt")]
    if name in ("linear", "cosine"):
        return [Family(name, [(0.0, END_RATIO_MAX)],
                       lambda x, name=name: ScheduleConfig(name, end_ratio=round(float(x[0]), 4), **base),
                       ["end_ratio"], [(False, True)])]
    if name == "steps":
        if T - W < levels + 1:
            raise ForecastError(f"steps: {T - W} updates after warmup leave no room for {levels} drops")

        def make(x: np.ndarray) -> ScheduleConfig:
            # x[:levels]: drop positions in (0, 1) of the post-warmup phase; x[levels:]: the factor of each drop
            pos = np.sort(x[:levels])
            steps = sorted({int(min(max(W + 1 + round(p * (T - W - 1)), W + 1), T)) for p in pos})
            level, switches = 1.0, []
            # drops that round to the same step are one drop (fewer steps than factors): the extra factors go unused
            for s, f in zip(steps, x[levels:], strict=False):
                level *= float(f)
                switches.append([s, round(level, 4)])
            return ScheduleConfig("skiplr", **base, params={"eta_before": 1.0, "switches": switches, "absolute": False})

        return [Family("steps", [(0.0, 1.0)] * levels + [(0.05, 1.0)] * levels, make,
                       ["a drop's position"] * levels + ["a drop's factor"] * levels,
                       [(False, True)] * levels + [(True, False)] * levels)]
    raise ForecastError(f"family: expected one of {', '.join(FAMILIES)}, got {name!r}")


def optimize_schedule(law: FittedLaw, peak_lr: float, max_steps: int, warmup_steps: int, family: str = "wsd", *,
                      alpha: float = 0.0, seed: int = 0, maxiter: int = 40, levels: int = 3,
                      report: list | None = None) -> tuple[ScheduleConfig, float]:
    """The schedule of ``family`` with the lowest predicted loss after ``max_steps`` updates, and that loss.

    Peak LR, budget and warmup stay fixed. ``report``, if given, receives a
    ``(family member, ScheduleConfig, predicted final loss, [parameters at an end of the searched range])``
    row per family member searched.
    """
    from scipy.optimize import differential_evolution

    if max_steps < 2:
        raise ForecastError(f"max_steps: expected at least 2 updates, got {max_steps}")
    if not 0 <= warmup_steps < max_steps:
        raise ForecastError(f"warmup_steps: expected 0..{max_steps - 1}, got {warmup_steps}")
    best: tuple[ScheduleConfig, float] | None = None
    for fam in families(family, max_steps, warmup_steps, levels):
        memo: dict[str, float] = {}

        def loss(x: np.ndarray, fam=fam, memo=memo) -> float:
            cfg = fam.make(x)
            key = repr((cfg.end_ratio, cfg.params))
            if key not in memo:  # rounding makes many candidates the same schedule
                memo[key] = law.final(lrs_for_schedule(cfg, peak_lr, max_steps, alpha))
            return memo[key]

        res = differential_evolution(loss, fam.bounds, seed=seed, maxiter=maxiter, popsize=8, tol=1e-8,
                                     polish=False, init="sobol")
        cfg = fam.make(res.x)
        final = law.final(lrs_for_schedule(cfg, peak_lr, max_steps, alpha))
        if report is not None:
            report.append((fam.name, cfg, final, fam.at_edge(res.x)))
        if best is None or final < best[1]:
            best = (cfg, final)
    assert best is not None
    return best


__all__ = ["FAMILIES", "lrs_for_schedule", "lrs_for_config", "optimize_schedule", "schedule_yaml",
                      "schedule_override", "families", "check_schedule"]
