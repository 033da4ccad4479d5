"""Learning-rate schedules: pure, registered functions of the global step.

A schedule returns a *multiplier* of each parameter group's own base LR, so
per-group multipliers (muP's ``lr_mult``) survive any schedule. The trainer
sets every group's LR from its own global step counter before each update, so
a skipped step or a resume cannot shift the schedule. Checkpoints store the
step, never the schedule: a branch (e.g. a WSD cooldown) may change it.

Step convention: ``t`` is the 1-based number of the optimizer update about to
be applied (``t = global_step + 1``), ``T`` the total number of updates and
``W`` the warmup updates. Warmup is linear from 0 to the schedule's own value
at ``W``: ``m(t) = t / W * f(W)`` for ``t <= W``; after it ``m(t) = f(t)``.
So the first update is not wasted at LR 0, update ``W`` runs at ``f(W)``, and
a decay function ``f`` starts at 1 at ``t = W``.

Adding a schedule (see README)::

    from pretrain.schedules import register_schedule

    @register_schedule("my_decay")
    def my_decay(t: int, T: int, W: int, *, end_ratio: float = 0.0) -> float:
        ...

then name it in the run YAML, with the module to import for it::

    schedule: {name: my_decay, modules: [my_pkg.my_schedules], params: {...}}

Keyword parameters come from ``schedule.params`` (checked against the
function's type hints) and ``schedule.end_ratio``; a function may also ask for
the run's context by naming it: ``lr`` (the optimizer's peak LR, for absolute
LRs) or ``alpha`` (peak LR x weight decay of the weight-decayed matrices, the
smoothing factor of the dual view). A ``check`` function given to the
decorator validates parameters against the run length.
"""

from __future__ import annotations

import importlib
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

DecayFn = Callable[..., float]
CheckFn = Callable[..., list]
CONTEXT_KEYS = ("lr", "alpha")


@dataclass(frozen=True)
class Registered:
    fn: DecayFn
    check: CheckFn | None = None  # check(T, W, **params) -> [(param, expected), ...]
    branch_points: Callable[..., list] | None = None  # (T, W, **params) -> steps worth keeping to branch from


SCHEDULES: dict[str, Registered] = {}


def register_schedule(
    name: str, check: CheckFn | None = None, branch_points: Callable[..., list] | None = None
) -> Callable[[DecayFn], DecayFn]:
    """Register ``fn(t, T, W, **params) -> multiplier`` under ``name``.

    ``check(T, W, **params)`` returns ``[(param, expected), ...]`` problems with the
    parameters for a run of T updates; ``branch_points(T, W, **params)`` returns the
    steps whose checkpoints are kept permanently to branch from.
    """

    def deco(fn: DecayFn) -> DecayFn:
        if name in SCHEDULES and SCHEDULES[name].fn is not fn:
            raise ValueError(f"schedule {name!r} is already registered ({SCHEDULES[name].fn.__module__})")
        SCHEDULES[name] = Registered(fn, check, branch_points)
        return fn

    return deco


def _progress(t: int, T: int, W: int) -> float:
    """Fraction of the post-warmup phase done after update t: 0 at t=W, 1 at t=T."""
    if T <= W:
        return 1.0
    return min(1.0, max(0.0, (t - W) / (T - W)))


DecayShape = Literal["linear", "cosine", "1-sqrt"]
DECAY_SHAPES: tuple[str, ...] = typing.get_args(DecayShape)  # every decay's shapes: wsd, cooldown, merge weights


def decay_ratio(end_ratio: float, p: float, shape: str) -> float:
    """Decay from 1 (p=0) to end_ratio (p=1) with the given shape (one of :data:`DECAY_SHAPES`)."""
    if shape == "linear":
        return 1.0 - (1.0 - end_ratio) * p
    if shape == "cosine":
        return end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "1-sqrt":
        return end_ratio + (1.0 - end_ratio) * (1.0 - math.sqrt(p))
    raise ValueError(f"unknown decay shape {shape!r}")


@register_schedule("constant")
def constant(t: int, T: int, W: int) -> float:
    """eta_t = eta_peak after warmup (the D2Z paper's *Constant*, Table 1)."""
    return 1.0


@register_schedule("linear")
def linear(t: int, T: int, W: int, *, end_ratio: float = 0.0) -> float:
    """Linear decay from the peak to ``end_ratio * peak`` at the last update.

    eta_t = eta_peak * (1 - (1 - end_ratio) * p), p = (t - W) / (T - W).
    ``end_ratio: 0`` is linear decay-to-zero (*Linear-D2Z*, D2Z paper sections 1
    and 4, Table 1); ``end_ratio: 0.1`` is the "10x" decay (*Linear-10x*).
    """
    return decay_ratio(end_ratio, _progress(t, T, W), "linear")


@register_schedule("cosine")
def cosine(t: int, T: int, W: int, *, end_ratio: float = 0.0) -> float:
    """Cosine decay from the peak to ``end_ratio * peak`` at the last update.

    eta_t = eta_peak * (end_ratio + (1 - end_ratio) * (1 + cos(pi * p)) / 2),
    p = (t - W) / (T - W). *Cosine-10x* of the D2Z paper (Table 1) is
    ``end_ratio: 0.1``, *Cosine-D2Z* is ``end_ratio: 0``.
    """
    return decay_ratio(end_ratio, _progress(t, T, W), "cosine")


def _check_step(T: int, W: int, *, milestones: list = (), factor: float = 0.1) -> list:
    problems = []
    if not milestones:
        problems.append(("params.milestones", "a non-empty list of update numbers"))
    for m in milestones:
        if not W < m <= T:
            problems.append(("params.milestones", f"update numbers after warmup and within the run ({W} < m <= {T}); {m} is not"))
    if list(milestones) != sorted(milestones):
        problems.append(("params.milestones", "increasing update numbers"))
    if not 0.0 <= factor <= 1.0:
        problems.append(("params.factor", "a factor in [0, 1]"))
    return problems


@register_schedule("step", check=_check_step, branch_points=lambda T, W, milestones=(), **_: [m - 1 for m in milestones])
def step(t: int, T: int, W: int, *, milestones: list[int] = (), factor: float = 0.1) -> float:
    """Step decay: multiply by ``factor`` at each milestone.

    eta_t = eta_peak * factor ** |{m in milestones : m <= t}| (D2Z paper,
    Figure 2 and appendix Figure 18, *Step*; He et al. 2016).
    """
    return factor ** sum(1 for m in milestones if m <= t)


@register_schedule("inverse_sqrt")
def inverse_sqrt(t: int, T: int, W: int, *, timescale: int | None = None) -> float:
    """Inverse square-root decay (Vaswani et al. 2017; the D2Z paper's *InvSqrt*).

    eta_t = eta_peak * sqrt(tau / max(t, tau)), tau = ``timescale`` (default: the
    warmup length W, or 1 without warmup), so the LR is the peak at the end of
    warmup and falls as 1/sqrt(t) after it.
    """
    tau = timescale if timescale is not None else max(W, 1)
    return math.sqrt(tau / max(t, tau))


def _check_cyclic(T: int, W: int, *, period: int = 1000, end_ratio: float = 0.0) -> list:
    return [("params.period", "an integer >= 2 (updates per cycle)")] if period < 2 else []


@register_schedule("cyclic", check=_check_cyclic)
def cyclic(t: int, T: int, W: int, *, period: int = 1000, end_ratio: float = 0.0) -> float:
    """Cosine cycles between the peak and a floor (Smith 2017; D2Z paper section 4, Figure 7, *Cyclic*).

    eta_t = eta_peak * (r + (1 - r) * (1 + cos(2 pi (t - W) / period)) / 2),
    r = ``end_ratio``: the peak at the end of warmup, the floor half a period
    later, back at the peak after a whole period.
    """
    return end_ratio + (1.0 - end_ratio) * 0.5 * (1.0 + math.cos(2.0 * math.pi * (t - W) / period))


@register_schedule("rational")
def rational(t: int, T: int, W: int, *, alpha: float) -> float:
    """The *Rational* schedule (D2Z paper, section 3.3, Eq. 7), from the end of warmup.

    eta_{i+1} = eta_i / (1 + eta_i * lambda) has the closed form
    eta_{W+k} = eta_peak / (1 + k * eta_peak * lambda), i.e. the multiplier
    1 / (1 + k * alpha) with alpha = eta_peak * lambda (the peak LR of the
    weight-decayed matrices times their weight decay, supplied by the run).
    Every update after warmup then carries the same dual coefficient.
    """
    return 1.0 / (1.0 + max(t - W, 0) * alpha)


def _decay_steps(T: int, decay: float, decay_steps: int | None) -> int:
    return decay_steps if decay_steps is not None else int(round(decay * T))


def _check_wsd(T: int, W: int, *, decay: float = 0.2, decay_steps: int | None = None, shape: str = "linear", end_ratio: float = 0.0) -> list:
    problems = []
    if not 0.0 <= decay <= 1.0:  # nan fails it too
        problems.append(("params.decay", "a fraction of the run in [0, 1]"))
        return problems
    D = _decay_steps(T, decay, decay_steps)
    if D < 0 or W + D > T:
        key = "params.decay_steps" if decay_steps is not None else "params.decay"
        problems.append((key, f"a cooldown that fits after the warmup: warmup {W} + cooldown {D} updates > the run's {T}"))
    return problems


def _wsd_branch_points(T: int, W: int, *, decay: float = 0.2, decay_steps: int | None = None, **_) -> list:
    return [T - _decay_steps(T, decay, decay_steps)]  # the end of the stable phase


@register_schedule("wsd", check=_check_wsd, branch_points=_wsd_branch_points)
def wsd(
    t: int,
    T: int,
    W: int,
    *,
    decay: float = 0.2,
    decay_steps: int | None = None,
    shape: DecayShape = "linear",
    end_ratio: float = 0.0,
) -> float:
    """Warmup-Stable-Decay (Hu et al. 2024; Hägele et al. 2024; D2Z paper section 2.1 and Figure 7).

    Stable at the peak, then a cooldown over the last D updates (``decay_steps``,
    or ``decay`` x T) to ``end_ratio``: with p = (t - (T - D)) / D,
    linear 1 - (1 - r) p, cosine r + (1 - r)(1 + cos(pi p)) / 2, or
    1-sqrt r + (1 - r)(1 - sqrt(p)). A cooldown branched from a stable-phase
    checkpoint at step s is the same schedule with T = s + D.
    """
    D = _decay_steps(T, decay, decay_steps)
    start = T - D
    if t <= start or D == 0:
        return 1.0
    return decay_ratio(end_ratio, (t - start) / D, shape)


def _check_cooldown(T: int, W: int, *, start_step: int | None = None, start_lr: float | None = None,
                    decay_steps: int | None = None, shape: str = "linear", end_ratio: float = 0.0) -> list:
    problems = []
    if start_step is None or start_lr is None:
        problems.append(("params.start_step", "the branch point and the parent's LR there (filled in from "
                         "checkpoint.branch_from when null)"))
        return problems
    if not 0 <= start_step < T:
        problems.append(("params.start_step", f"a step before train.max_steps = {T}"))
    if not (math.isfinite(start_lr) and start_lr > 0):
        problems.append(("params.start_lr", "a finite LR > 0"))
    D = decay_steps if decay_steps is not None else T - start_step
    if not 1 <= D <= T - start_step:
        problems.append(("params.decay_steps", f"1 to train.max_steps - start_step = {T - start_step} updates"))
    if shape not in ("linear", "cosine", "1-sqrt"):
        problems.append(("params.shape", "one of 'linear', 'cosine', '1-sqrt'"))
    return problems


@register_schedule("cooldown", check=_check_cooldown)
def cooldown(
    t: int,
    T: int,
    W: int,
    *,
    start_step: int | None = None,
    start_lr: float | None = None,
    decay_steps: int | None = None,
    shape: DecayShape = "linear",
    end_ratio: float = 0.0,
    lr: float = 1.0,
) -> float:
    """A cooldown branched from any run: from the LR the parent ran its update ``start_step`` with
    (``start_lr``, absolute), decay over D updates (``decay_steps``, default T - start_step) to
    ``end_ratio`` x that LR: LR(t) = start_lr * ratio((t - start_step) / D) for t > start_step, with
    the shapes of ``wsd``; constant at end_ratio x start_lr after D updates.

    With ``checkpoint.branch_from`` set, null ``start_step`` and ``start_lr`` are filled in from the
    checkpoint: its step, and the parent's own schedule at that step times the parent's peak LR,
    whatever that schedule was (constant, cosine, linear, WSD stable phase, SkipLR). Use
    ``warmup_steps: 0``.
    """
    if start_step is None or start_lr is None:
        raise ValueError("cooldown needs start_step and start_lr (resolve fills them from checkpoint.branch_from)")
    D = decay_steps if decay_steps is not None else T - start_step
    p = min(max((t - start_step) / D, 0.0), 1.0)
    return start_lr * decay_ratio(end_ratio, p, shape) / lr


def _skip_switches(eta_after: float | None, k_s: int | None, switches: list) -> list[tuple[int, float]]:
    out = [(k_s, eta_after)] if k_s is not None else []
    return out + [(int(k), float(v)) for k, v in switches]


def _check_skiplr(T: int, W: int, *, eta_before: float, eta_after: float | None = None, k_s: int | None = None,
                  switches: list = (), absolute: bool = True) -> list:
    problems = []
    if (eta_after is None) != (k_s is None):
        problems.append(("params.k_s", "eta_after and k_s given together (or neither, with a switches list)"))
    if any(not isinstance(s, (list, tuple)) or len(s) != 2 for s in switches):
        problems.append(("params.switches", "a list of [step, lr] pairs"))
        return problems
    sw = _skip_switches(eta_after, k_s, switches)
    if not sw:
        problems.append(("params", "at least one switch: k_s and eta_after, or switches: [[step, lr], ...]"))
    for k, _ in sw:
        if not 1 <= k <= T:
            problems.append(("params.k_s" if k == k_s else "params.switches", f"switch steps within the run (1..{T}); {k} is not"))
    steps = [k for k, _ in sw]
    if steps != sorted(set(steps)):
        problems.append(("params.switches", "strictly increasing switch steps (after k_s)"))
    if not all(math.isfinite(v) and v >= 0 for v in [eta_before, *(v for _, v in sw)]):
        problems.append(("params", "finite learning rates >= 0"))
    return problems


def _skiplr_branch_points(T: int, W: int, *, eta_after=None, k_s=None, switches=(), **_) -> list:
    return [k - 1 for k, _ in _skip_switches(eta_after, k_s, switches)]  # the step before each switch


@register_schedule("skiplr", check=_check_skiplr, branch_points=_skiplr_branch_points)
def skiplr(
    t: int,
    T: int,
    W: int,
    *,
    eta_before: float,
    eta_after: float | None = None,
    k_s: int | None = None,
    switches: list[list[float]] = (),
    absolute: bool = True,
    lr: float = 1.0,
) -> float:
    """SkipLR: a piecewise-constant LR switched at given updates (SkipLR paper, Algorithm 2).

    eta_t = eta_before for t < k_s and eta_after from t = k_s on; further
    switches ``[[step, lr], ...]`` follow in order. With ``absolute: true`` the
    values are LRs (divided by the optimizer's ``lr`` to give the multiplier),
    else multipliers of it. The SkipLR experiments (paper section 5, Table 2)
    run eta1, eta2 and eta1 -> eta2 at k_s from one seed.
    """
    value = eta_before
    for k, v in _skip_switches(eta_after, k_s, switches):
        if t >= k:
            value = v
    return value / lr if absolute else value


@dataclass
class ScheduleConfig:
    """Which registered schedule, its warmup, and its parameters."""

    name: str = "linear"
    warmup_steps: int | None = None  # absolute number of warmup updates; overrides warmup_fraction
    warmup_fraction: float = 0.1  # of the run's updates (10% as in the D2Z study)
    end_ratio: float | None = None  # final LR / peak LR; None keeps the schedule's default
    params: dict[str, Any] = field(default_factory=dict)  # further keyword parameters of the schedule
    modules: list[str] = field(default_factory=list)  # Python modules to import first (they register schedules)

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        for mod in self.modules:
            try:
                importlib.import_module(mod)
            except ImportError as e:
                problems.append(("modules", f"importable Python modules ({mod!r}: {e})"))
        if self.name not in SCHEDULES:
            problems.append(("name", "a registered schedule: " + ", ".join(sorted(SCHEDULES))))
            return problems
        if self.warmup_steps is not None and self.warmup_steps < 0:
            problems.append(("warmup_steps", "an integer >= 0"))
        if not 0.0 <= self.warmup_fraction < 1.0:
            problems.append(("warmup_fraction", "a fraction in [0, 1)"))
        if self.end_ratio is not None and not 0.0 <= self.end_ratio <= 1.0:
            problems.append(("end_ratio", "a ratio in [0, 1]"))
        signature = inspect.signature(SCHEDULES[self.name].fn)
        accepted = {n for n, p in signature.parameters.items() if p.kind == p.KEYWORD_ONLY and n not in CONTEXT_KEYS}
        for key in self.params:
            if key not in accepted:
                problems.append(("params", f"parameters of schedule {self.name!r} ({', '.join(sorted(accepted)) or 'none'}); {key!r} is not one"))
        if self.end_ratio is not None and "end_ratio" not in accepted:
            problems.append(("end_ratio", f"null: schedule {self.name!r} takes no end_ratio"))
        missing = [n for n in accepted if signature.parameters[n].default is inspect.Parameter.empty and n not in self.params]
        for n in missing:
            problems.append((f"params.{n}", f"a value: schedule {self.name!r} requires it"))
        problems += self._typecheck_params()
        return problems

    def _typecheck_params(self) -> list[tuple[str, str]]:
        """Convert params by the schedule function's type hints (ints, floats, lists, ...)."""
        from ..config_loader import convert

        hints = typing.get_type_hints(SCHEDULES[self.name].fn)
        problems = []
        for key, value in list(self.params.items()):
            if key in hints:
                out, expected = convert(value, hints[key], key)
                if expected is not None:
                    problems.append((f"params.{key}", expected))
                else:
                    self.params[key] = out
        return problems

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return int(round(self.warmup_fraction * total_steps))

    def kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.params)
        if self.end_ratio is not None:
            kwargs["end_ratio"] = self.end_ratio
        return kwargs

    def check_run(self, total_steps: int) -> list[tuple[str, str]]:
        """Problems of the parameters against the run length (steps beyond the run, ...)."""
        problems = []
        warmup = self.warmup_for(total_steps)
        if warmup > total_steps:
            problems.append(("warmup_steps" if self.warmup_steps is not None else "warmup_fraction",
                             f"at most train.max_steps = {total_steps} warmup updates ({warmup})"))
        check = SCHEDULES[self.name].check
        if check is not None:
            problems += check(total_steps, warmup, **self.kwargs())
        return problems

    def branch_points(self, total_steps: int) -> list[int]:
        """Steps worth keeping to branch from: the end of warmup and the schedule's own points."""
        W = self.warmup_for(total_steps)
        points = [W] if W > 0 else []
        fn = SCHEDULES[self.name].branch_points
        if fn is not None:
            points += fn(total_steps, W, **self.kwargs())
        return sorted(p for p in set(points) if 1 <= p < total_steps)

    def build(self, total_steps: int, lr: float = 1.0, alpha: float = 0.0) -> Schedule:
        """Bind to a run: its length, its peak ``lr`` and ``alpha`` = peak LR x weight decay of decayed matrices."""
        reg = SCHEDULES[self.name]
        kwargs = self.kwargs()
        wanted = inspect.signature(reg.fn).parameters
        context = {"lr": lr, "alpha": alpha}
        kwargs.update({k: v for k, v in context.items() if k in wanted})
        return Schedule(reg.fn, total_steps, self.warmup_for(total_steps), kwargs)


@dataclass(frozen=True)
class Schedule:
    """A schedule bound to a run: ``schedule(global_step) -> LR multiplier``."""

    fn: DecayFn
    total_steps: int
    warmup_steps: int
    kwargs: dict[str, Any]

    def __call__(self, global_step: int) -> float:
        t = global_step + 1
        W = self.warmup_steps
        if t < W:
            return t / W * self.fn(W, self.total_steps, W, **self.kwargs)
        return self.fn(t, self.total_steps, W, **self.kwargs)

    def multipliers(self) -> list[float]:
        """The multiplier of every update of the run, in order."""
        return [self(s) for s in range(self.total_steps)]
