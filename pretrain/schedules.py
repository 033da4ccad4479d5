"""Learning-rate schedules: pure, registered functions of the global step.

A schedule returns a *multiplier* of each parameter group's own base LR, so
per-group multipliers (muP's ``lr_mult``) survive any schedule. The trainer
sets every group's LR from its own global step counter before each update, so
a skipped step or a resume cannot shift the schedule.

Step convention: ``t`` is the 1-based number of the optimizer update about to
be applied (``t = global_step + 1``) and ``T`` the total number of updates.
Linear warmup over ``W`` updates gives ``t / W`` (so the first update is not
wasted at LR 0 and update ``W`` runs at the peak); after warmup the registered
decay function takes over and must return 1 at ``t = W``.

Adding a schedule::

    from pretrain.schedules import register_schedule

    @register_schedule("my_decay")
    def my_decay(t: int, T: int, W: int, *, end_ratio: float = 0.0) -> float:
        ...

and name it in the run YAML (``schedule: {name: my_decay}``); keyword
parameters go under ``schedule.params``.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

DecayFn = Callable[..., float]
SCHEDULES: dict[str, DecayFn] = {}


def register_schedule(name: str) -> Callable[[DecayFn], DecayFn]:
    """Register ``fn(t, T, W, **params) -> multiplier`` under ``name``."""

    def deco(fn: DecayFn) -> DecayFn:
        if name in SCHEDULES and SCHEDULES[name] is not fn:
            raise ValueError(f"schedule {name!r} is already registered ({SCHEDULES[name].__module__})")
        SCHEDULES[name] = fn
        return fn

    return deco


def _progress(t: int, T: int, W: int) -> float:
    """Fraction of the post-warmup phase done after update t: 0 at t=W, 1 at t=T."""
    if T <= W:
        return 1.0
    return min(1.0, max(0.0, (t - W) / (T - W)))


@register_schedule("constant")
def constant(t: int, T: int, W: int) -> float:
    """eta_t = eta_peak for every update after warmup."""
    return 1.0


@register_schedule("linear")
def linear(t: int, T: int, W: int, *, end_ratio: float = 0.0) -> float:
    """Linear decay from the peak to ``end_ratio * peak`` at the last update.

    eta_t = eta_peak * (1 - (1 - end_ratio) * p), p = (t - W) / (T - W).
    ``end_ratio: 0`` is linear decay-to-zero (D2Z; D2Z paper, section 3 and
    Table 1); ``end_ratio: 0.1`` is the "10x" decay.
    """
    return 1.0 - (1.0 - end_ratio) * _progress(t, T, W)


@register_schedule("cosine")
def cosine(t: int, T: int, W: int, *, end_ratio: float = 0.1) -> float:
    """Cosine decay from the peak to ``end_ratio * peak`` at the last update.

    eta_t = eta_peak * (end_ratio + (1 - end_ratio) * (1 + cos(pi * p)) / 2),
    p = (t - W) / (T - W). The "10x" cosine of the D2Z paper (Table 1) is
    ``end_ratio: 0.1``.
    """
    return end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + math.cos(math.pi * _progress(t, T, W)))


@dataclass
class ScheduleConfig:
    """Which registered schedule, its warmup, and its parameters."""

    name: str = "linear"
    warmup_steps: Optional[int] = None  # absolute number of warmup updates; overrides warmup_fraction
    warmup_fraction: float = 0.1  # of the run's updates (10% as in the D2Z study)
    end_ratio: Optional[float] = None  # final LR / peak LR; None keeps the schedule's default
    params: dict[str, Any] = field(default_factory=dict)  # extra keyword parameters of the schedule

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.name not in SCHEDULES:
            problems.append(("name", "a registered schedule: " + ", ".join(sorted(SCHEDULES))))
        if self.warmup_steps is not None and self.warmup_steps < 0:
            problems.append(("warmup_steps", "an integer >= 0"))
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(("warmup_fraction", "a fraction in [0, 1)"))
        if self.end_ratio is not None and not 0.0 <= self.end_ratio <= 1.0:
            problems.append(("end_ratio", "a ratio in [0, 1]"))
        if self.name in SCHEDULES:
            accepted = inspect.signature(SCHEDULES[self.name]).parameters
            for key in self.params:
                if key not in accepted or key in ("t", "T", "W"):
                    problems.append((f"params", f"parameters of schedule {self.name!r}; {key!r} is not one"))
            if self.end_ratio is not None and "end_ratio" not in accepted:
                problems.append(("end_ratio", f"null: schedule {self.name!r} takes no end_ratio"))
        return problems

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_fraction * total_steps))

    def build(self, total_steps: int) -> "Schedule":
        kwargs = dict(self.params)
        if self.end_ratio is not None:
            kwargs["end_ratio"] = self.end_ratio
        return Schedule(SCHEDULES[self.name], total_steps, self.warmup_for(total_steps), kwargs)


@dataclass(frozen=True)
class Schedule:
    """A schedule bound to a run length: ``schedule(global_step) -> LR multiplier``."""

    fn: DecayFn
    total_steps: int
    warmup_steps: int
    kwargs: dict[str, Any]

    def __call__(self, global_step: int) -> float:
        t = global_step + 1
        if t <= self.warmup_steps:
            return t / self.warmup_steps
        return self.fn(t, self.total_steps, self.warmup_steps, **self.kwargs)

    def multipliers(self) -> list[float]:
        """The multiplier of every update of the run, in order."""
        return [self(s) for s in range(self.total_steps)]


def set_lr(optimizer: Any, multiplier: float) -> None:
    """Set every param group's LR to its own ``base_lr`` times ``multiplier``."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * multiplier
