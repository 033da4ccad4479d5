"""Fitting a loss law to runs' loss curves, and the fitted law (``law.json``).

A run's curve is its per-update LRs (``lrs[i]`` for update ``i + 1``, all of them from update 1)
and the losses observed along it, each at the number of updates ``t`` behind it: metrics.jsonl's
training ``loss`` of step ``s`` is measured before update ``s`` is applied (``t = s - 1``), its
``val_loss`` after it (``t = s``). A branch's curve is its parent's up to the branch step
(lineage.json), followed by its own. The signal is validation loss on a fixed set, evaluated
often, or training loss averaged over fixed windows of ``window`` updates that end at the run's
last step (the same windows for a branch and a full run of equal length); the window and the
metric are recorded in ``law.json`` (``settings.signal``) and the law is averaged over the same
windows when it is fit or scored.

The fit minimises a Huber loss of ``log(predicted) - log(observed)`` (scipy's ``least_squares``,
bounded, from several seeded starts, the best kept), skipping the warmup and the first
``skip_fraction`` of each run, and taking at most ``max_points`` bin medians per run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .laws import LAWS, ForecastError, check_lrs, get_law, warmup_of

FORMAT = "pretrain.forecast/1"
DECAY_MIN = 0.01  # a run "decays" when its LR falls by more than this fraction of its peak after warmup
POOR_FIT = 0.01  # in-sample mean relative error above which the fit warns
LONG_DECAY = 0.2  # the fit warns unless some fit run anneals over more than this share of its budget


@dataclass
class RunCurve:
    """One run: every update's LR, and losses observed after ``steps`` updates."""

    lrs: np.ndarray
    steps: np.ndarray
    losses: np.ndarray
    name: str = "run"
    info: dict[str, Any] = field(default_factory=dict)
    window: int = 1  # each loss is the mean over the ``window`` updates ending at its step


def window_steps(steps: np.ndarray, window: int) -> np.ndarray:
    """Every update each window covers, window by window: shape (len(steps) * window,)."""
    steps = np.asarray(steps, dtype=np.int64)
    return (steps[:, None] - np.arange(window - 1, -1, -1)[None, :]).ravel()


CurveLike = RunCurve | tuple


# -- reading runs ---------------------------------------------------------------------------

METRICS_CHOICES = ("auto", "val_loss", "loss")
AUTO_MIN_EVALS = 10  # `auto` picks val_loss when every run has at least this many evaluations after warmup


def _lineage_records(path: Path, seen: frozenset = frozenset()) -> dict[int, dict[str, Any]]:
    """step -> record of the run's lineage-aware history: a branch's parent's records up to the branch step
    (lineage.json ``step``, recursively), then the branch's own. Each record notes its file under ``_file``."""
    from ..rundir import METRICS, read_metrics

    own: dict[int, dict[str, Any]] = {}
    for rec in read_metrics(path):
        s = rec.get("step")
        if isinstance(s, int) and not isinstance(s, bool) and s >= 0:
            own.setdefault(s, {"_file": str(path / METRICS)}).update(rec)  # a resumed run's repeated step: the last
    lineage_file = path / "lineage.json"
    if not lineage_file.is_file() or path.resolve() in seen:
        return own
    try:
        lineage = json.loads(lineage_file.read_text())
    except (OSError, ValueError) as e:
        raise ForecastError(f"{lineage_file}: not readable JSON ({e})") from None
    parent = lineage.get("parent_run_dir") if isinstance(lineage, dict) else None
    if not parent:
        return own  # a weights-only start (init_from): no parent curve
    b = lineage.get("step")
    trained = [s for s, r in own.items() if s >= 1 and "loss" in r]
    if not isinstance(b, int) or isinstance(b, bool) or b < 0:
        b = min(trained) - 1 if trained else 0
    for p in (Path(parent), path.parent / Path(parent).name):
        if (p / METRICS).is_file() and p.resolve() != path.resolve():
            before = _lineage_records(p, seen | {path.resolve()})
            return {**{s: r for s, r in before.items() if s <= b}, **{s: r for s, r in own.items() if s > b}}
    return own  # the parent is not there: read_run names the missing updates


def windowed(steps: np.ndarray, losses: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Means of ``losses`` over fixed windows of ``window`` consecutive updates, aligned to end at the last
    observed step (so runs of the same length, branches included, share every window); a window is kept only
    when every update in it was observed. Returns (the last update of each window, its mean), ascending."""
    if window < 1:
        raise ForecastError(f"window: expected an integer >= 1, got {window!r}")
    steps, losses = np.asarray(steps, dtype=np.int64), np.asarray(losses, dtype=np.float64)
    if window == 1 or steps.size == 0:
        return steps, losses
    by_step = dict(zip(steps.tolist(), losses.tolist(), strict=True))
    ends, means = [], []
    end = int(steps.max())
    while end - window + 1 >= 1:
        vals = [by_step.get(t) for t in range(end - window + 1, end + 1)]
        if all(v is not None for v in vals):
            ends.append(end)
            means.append(float(np.mean(vals)))
        end -= window
    return np.array(ends[::-1], dtype=np.int64), np.array(means[::-1])


def choose_metric(run_dirs: Sequence[str | Path]) -> str:
    """``val_loss`` when every run has at least AUTO_MIN_EVALS finite evaluations after its warmup, else ``loss``.

    Validation loss on a fixed set is the low-noise signal (no batch-to-batch scatter) when it is evaluated
    often; a run evaluated only at its end gives too few points, and then windowed training loss is used."""
    for d in run_dirs:
        try:
            curve = read_run(d, "val_loss")
        except ForecastError:
            return "loss"
        if int(np.sum(curve.steps > curve.info["warmup_steps"])) < AUTO_MIN_EVALS:
            return "loss"
    return "val_loss" if run_dirs else "loss"


def read_run(run_dir: str | Path, metric: str = "loss", window: int = 1) -> RunCurve:
    """A run directory's curve: LRs and ``metric`` (``loss``, ``val_loss`` or ``auto``: :func:`choose_metric`).

    A branch's curve (lineage.json) is its parent's up to the branch step, followed by its own. With
    ``window`` > 1 the (training) losses are means over fixed windows of that many updates (:func:`windowed`).
    """
    from ..rundir import METRICS

    path = Path(run_dir)
    mfile = path / METRICS
    if not mfile.is_file():
        raise ForecastError(f"{mfile} not found: {path} is not a run directory with training metrics")
    if metric == "auto":
        metric = choose_metric([path])
    if metric not in ("loss", "val_loss"):
        raise ForecastError(f"metric: expected one of {', '.join(METRICS_CHOICES)}, got {metric!r}")
    if not isinstance(window, int) or window < 1:
        raise ForecastError(f"window: expected an integer >= 1, got {window!r}")
    recs = _lineage_records(path)
    lr_by_step: dict[int, float] = {}
    for s, rec in recs.items():
        if s < 1 or "loss" not in rec:
            continue  # the step-0 record of the initial weights' validation
        if not isinstance(rec.get("lr"), (int, float)):
            raise ForecastError(f"{rec['_file']}: step {s}: no numeric 'lr' (the trainer writes one for every update)")
        lr_by_step[s] = float(rec["lr"])
    if not lr_by_step:
        raise ForecastError(f"{mfile}: no training records (one per update, with 'step', 'loss' and 'lr')")
    T = max(lr_by_step)
    missing = [s for s in range(1, T + 1) if s not in lr_by_step]
    if missing:
        raise ForecastError(f"{mfile}: no LR for steps {missing[0]}..{missing[-1]} ({len(missing)} updates; a branch "
                            "whose parent run directory, named in lineage.json, is not there?)")
    lrs = np.array([lr_by_step[s] for s in range(1, T + 1)])
    offset = 1 if metric == "loss" else 0  # the training loss is measured before its update
    obs = [(s - offset, float(r[metric])) for s, r in sorted(recs.items())
           if isinstance(r.get(metric), (int, float)) and not r.get("skipped")
           and math.isfinite(r[metric]) and r[metric] > 0 and s - offset >= 1]
    if not obs:
        raise ForecastError(f"{mfile}: no finite {metric!r} values")
    schedule = None
    if (path / "config.yaml").is_file():
        import yaml

        schedule = ((yaml.safe_load((path / "config.yaml").read_text()) or {}).get("schedule") or {}).get("name")
    steps, losses = np.array([o[0] for o in obs]), np.array([o[1] for o in obs])
    win = window if metric == "loss" else 1  # evaluations are on a fixed set already: no windows
    steps, losses = windowed(steps, losses, win)
    if steps.size == 0:
        raise ForecastError(f"{mfile}: no complete window of {win} updates of {metric!r}")
    info = {"run_dir": str(path), "metric": metric, "window": win, "max_steps": T, "peak_lr": float(lrs.max()),
            "warmup_steps": warmup_of(lrs), "schedule": schedule, "final_lr": float(lrs[-1]),
            "final_loss": float(losses[-1]), "final_step": int(steps[-1])}
    return RunCurve(lrs, steps, losses, path.name or str(path), info, win)


def _as_curve(run: CurveLike, i: int) -> RunCurve:
    if isinstance(run, RunCurve):
        c = run
    else:
        lrs, steps, losses = run
        c = RunCurve(np.asarray(lrs, float), np.asarray(steps), np.asarray(losses, float), f"run{i}")
    lrs = check_lrs(c.lrs, f"{c.name}: lrs")
    steps, losses = np.asarray(c.steps, dtype=np.int64), np.asarray(c.losses, dtype=np.float64)
    if steps.shape != losses.shape:
        raise ForecastError(f"{c.name}: steps and losses differ in length ({steps.size} vs {losses.size})")
    window = c.window
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ForecastError(f"{c.name}: window: expected an integer >= 1, got {window!r}")
    if steps.size and (steps.min() - window + 1 < 1 or steps.max() > lrs.size):
        raise ForecastError(f"{c.name}: steps must lie in {window}..{lrs.size} (the last update behind each "
                            f"{'window mean' if window > 1 else 'loss'})")
    info = {"max_steps": lrs.size, "peak_lr": float(lrs.max()), "warmup_steps": warmup_of(lrs),
            "final_lr": float(lrs[-1]), "window": int(window), "anneal_fraction": anneal_fraction(lrs), **c.info}
    return RunCurve(lrs, steps, losses, c.name, info, int(window))


def _decays(lrs: np.ndarray) -> bool:
    W = warmup_of(lrs)
    return bool(lrs[W - 1] - lrs[W - 1:].min() > DECAY_MIN * lrs.max())


def anneal_fraction(lrs: np.ndarray) -> float:
    """The share of the run's updates from its first LR decay after warmup (by more than DECAY_MIN of the
    peak) to its end: 0 for a constant run, ~0.2 for a 20% cooldown, 0.5 for a step decay at half the run."""
    lrs = np.asarray(lrs, dtype=np.float64)
    W = warmup_of(lrs)
    below = np.flatnonzero(lrs[W:] < lrs[W - 1] - DECAY_MIN * lrs.max())
    return float((lrs.size - (W + int(below[0]))) / lrs.size) if below.size else 0.0


def _fit_points(c: RunCurve, skip_fraction: float, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps past warmup and the first ``skip_fraction``, as at most ``max_points`` bin medians (window means:
    every window that starts past them, evenly thinned to ``max_points``)."""
    start = max(c.info["warmup_steps"], int(math.ceil(skip_fraction * c.lrs.size)), 1)
    keep = (c.steps - c.window + 1 >= start) & np.isfinite(c.losses) & (c.losses > 0)
    t, y = c.steps[keep], c.losses[keep]
    order = np.argsort(t, kind="stable")
    t, y = t[order], y[order]
    if c.window > 1 and t.size > max_points:
        pick = np.unique(np.linspace(0, t.size - 1, max_points).round().astype(int))
        return t[pick], y[pick]
    if t.size > max_points:  # medians of odd windows around evenly spaced points: the middle point's own step
        half = max(int(round((t.size / max_points - 1) / 2)), 0)  # windows cover every point
        centers = np.linspace(half, t.size - 1 - half, max_points).round().astype(int)
        y = np.array([float(np.median(y[c - half:c + half + 1])) for c in centers])
        t = t[centers]
    return t, y


# -- the fitted law -------------------------------------------------------------------------

@dataclass
class FittedLaw:
    """A law with its parameters (absolute-LR units), how well it fit, and what it was fit on."""

    law: str
    params: dict[str, float]
    lr_ref: float = 1.0  # the LR the law evaluates in units of (the largest peak LR it was fit on)
    options: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.diagnostics.get("warnings", []))

    def unit_params(self) -> np.ndarray:
        return get_law(self.law).to_unit(self.params, self.lr_ref)

    def predict(self, lrs, steps: Sequence[int] | None = None, warmup: int | None = None) -> np.ndarray:
        """The loss after each of ``steps`` updates (default: every update 1..T) of the LR sequence ``lrs``."""
        arr = check_lrs(lrs) / self.lr_ref
        return get_law(self.law).fn(arr, self.unit_params(), None if steps is None else np.asarray(steps),
                                    warmup, **self.options)

    def predict_curve(self, curve: RunCurve) -> np.ndarray:
        """The law at a curve's points: at each step, or the mean over each window (``curve.window`` > 1)."""
        w = int(curve.window)
        pred = self.predict(curve.lrs, window_steps(curve.steps, w))
        return pred.reshape(-1, w).mean(axis=1)

    def final(self, lrs) -> float:
        """The loss after the last update."""
        return float(self.predict(lrs, [len(lrs)])[0])

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT, **asdict(self)}, indent=1, default=float)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_json(cls, text: str | dict, source: str = "<json>", expect_law: str | None = None) -> FittedLaw:
        try:
            data = json.loads(text) if isinstance(text, str) else text
        except json.JSONDecodeError as e:
            raise ForecastError(f"{source}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise ForecastError(f"{source}: expected a JSON object written by `python -m pretrain.forecast fit`")
        name = data.get("law")
        if name not in LAWS:
            raise ForecastError(f"{source}: law: expected one of {', '.join(LAWS)}, got {name!r}")
        if expect_law is not None and name != expect_law:
            raise ForecastError(f"{source}: law: expected {expect_law!r}, got {name!r}")
        params = data.get("params")
        if not isinstance(params, dict):
            raise ForecastError(f"{source}: params: expected a mapping of {', '.join(LAWS[name].params)}")
        for p in LAWS[name].params:
            v = params.get(p)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ForecastError(f"{source}: params.{p}: expected a finite number for law {name!r}, got {v!r}")
        lr_ref = data.get("lr_ref", 1.0)
        if not isinstance(lr_ref, (int, float)) or not lr_ref > 0:
            raise ForecastError(f"{source}: lr_ref: expected an LR > 0, got {lr_ref!r}")
        options = data.get("options") or {}
        unknown = set(options) - {k for k, _ in LAWS[name].options}
        if unknown:
            raise ForecastError(f"{source}: options: {', '.join(sorted(unknown))} not an option of law {name!r}")
        return cls(name, {p: float(params[p]) for p in LAWS[name].params}, float(lr_ref),
                   {k: float(v) for k, v in options.items()}, data.get("diagnostics") or {},
                   data.get("sources") or [], data.get("settings") or {})

    @classmethod
    def load(cls, path: str | Path, expect_law: str | None = None) -> FittedLaw:
        path = Path(path)
        if not path.is_file():
            raise ForecastError(f"{path} not found (write one with `python -m pretrain.forecast fit RUN_DIR... --out {path}`)")
        return cls.from_json(path.read_text(), str(path), expect_law)


# -- fitting ----------------------------------------------------------------------------------

def _bounds(law: str, ymax: float) -> tuple[np.ndarray, np.ndarray]:
    if law == "mpl":  # L0, A, alpha, B, C, beta, gamma (units of lr_ref)
        return (np.array([0.0, 0.0, 0.01, 0.0, 1e-8, 0.01, 0.0]),
                np.array([ymax, 1e9, 3.0, 100.0 * ymax, 1e6, 5.0, 3.0]))
    return np.array([0.0, 0.0, 0.01, 0.0]), np.array([ymax, 1e9, 3.0, 10.0 * ymax])  # L0, A, alpha, C


def _starts(law: str, n: int, seed: int, S0: float, y0: float, ymin: float, s2max: float,
            lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """Seeded starts: the papers' typical values first, then random ones; A matches the earliest point."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        first = i == 0
        L0 = ymin * (0.8 if first else rng.uniform(0.3, 0.95))
        alpha = 0.5 if first else rng.uniform(0.2, 1.0)
        A = max(y0 - L0, 1e-3) * S0 ** alpha
        if law == "mpl":
            x = [L0, A, alpha, 0.5 if first else math.exp(rng.uniform(math.log(0.05), math.log(2.0))),
                 0.1 if first else math.exp(rng.uniform(math.log(1e-3), 0.0)),
                 0.6 if first else rng.uniform(0.3, 1.2), 0.6 if first else rng.uniform(0.2, 1.0)]
        else:
            c0 = 0.1 / max(s2max, 1e-9)
            x = [L0, A, alpha, c0 if first else c0 * math.exp(rng.uniform(-math.log(10), math.log(10)))]
        out.append(np.clip(np.array(x), lo + 1e-12 * (hi - lo), hi - 1e-12 * (hi - lo)))
    return out


LAM_GRID = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)  # the annealing law's momentum, chosen by the fit when lam=None


def fit_law(runs: Sequence[CurveLike], law: str = "mpl", *, skip_fraction: float = 0.1, max_points: int = 200,
            starts: int = 8, seed: int = 0, huber_delta: float = 1e-3, lam: float | None = 0.999,
            max_nfev: int = 200) -> FittedLaw:
    """Fit ``law`` to ``runs``: RunCurves, or ``(lrs, steps, losses)`` tuples (``steps``: the updates behind each loss).

    Returns the best of ``starts`` seeded fits, with in-sample errors and warnings when the fit is
    poorly determined (no LR decay in the runs, a decay too short to identify the annealing term, large
    standard errors, an ill-conditioned Jacobian, parameters at their bounds, a poor in-sample fit).
    The annealing law's momentum ``lam`` (Tissue et al. use 0.999 over tens of thousands of updates; its
    time scale, 1 / (1 - lam) updates, should be below a run's decay) is chosen from LAM_GRID by the
    lowest fit cost when ``lam`` is None.
    """
    if law == "annealing" and lam is None:
        fits = [fit_law(runs, law, skip_fraction=skip_fraction, max_points=max_points, starts=starts, seed=seed,
                        huber_delta=huber_delta, lam=v, max_nfev=max_nfev) for v in LAM_GRID]
        best_fit = min(fits, key=lambda f: f.diagnostics["cost"])
        best_fit.diagnostics["lam_costs"] = {str(v): f.diagnostics["cost"] for v, f in zip(LAM_GRID, fits, strict=True)}
        return best_fit
    if law == "annealing" and not (isinstance(lam, (int, float)) and 0.0 <= lam < 1.0):
        raise ForecastError(f"fit_law: lam: expected a momentum in [0, 1) or None (chosen by the fit), got {lam!r}")
    return _fit(runs, law, skip_fraction=skip_fraction, max_points=max_points, starts=starts, seed=seed,
                huber_delta=huber_delta, lam=float(lam if lam is not None else 0.999), max_nfev=max_nfev)


def _fit(runs: Sequence[CurveLike], law: str, *, skip_fraction: float, max_points: int, starts: int, seed: int,
         huber_delta: float, lam: float, max_nfev: int) -> FittedLaw:
    from scipy.optimize import least_squares

    spec = get_law(law)
    if not runs:
        raise ForecastError("fit_law: no runs to fit")
    if starts < 1 or max_points < 10 or not 0.0 <= skip_fraction < 1.0 or not huber_delta > 0:
        raise ForecastError(f"fit_law: expected starts >= 1 ({starts}), max_points >= 10 ({max_points}), "
                            f"skip_fraction in [0, 1) ({skip_fraction}) and huber_delta > 0 ({huber_delta})")
    curves = [_as_curve(r, i) for i, r in enumerate(runs)]
    lr_ref = max(c.info["peak_lr"] for c in curves)
    options = {"lam": lam} if law == "annealing" else {}
    data = []
    for c in curves:
        t, y = _fit_points(c, skip_fraction, max_points)
        if t.size == 0:
            raise ForecastError(f"{c.name}: no losses after warmup ({c.info['warmup_steps']} updates) and the first "
                                f"{skip_fraction:.0%} of the run to fit")
        data.append((c.lrs / lr_ref, t, y, c.info["warmup_steps"], c.window))
    y_all = np.concatenate([d[2] for d in data])
    terms = [spec.terms(lrs, window_steps(t, w), W, **options) for lrs, t, _, W, w in data]
    cache: dict[bytes, tuple] = {}

    def averaged(out, w: int, jac: bool):
        """The law over each window: the mean of its value (and Jacobian rows) at the window's updates."""
        if w == 1:
            return out
        if not jac:
            return out.reshape(-1, w).mean(axis=1)
        pred, J = out
        return pred.reshape(-1, w).mean(axis=1), J.reshape(-1, w, J.shape[1]).mean(axis=1)

    def model(u: np.ndarray, jac: bool):
        return [averaged(spec.fn(d[0], u, window_steps(d[1], d[4]), d[3], jac=jac, terms=tm, **options), d[4], jac)
                for d, tm in zip(data, terms, strict=True)]

    def evaluate(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Residuals log(pred) - log(y) and their Jacobian, computed together (least_squares asks for both)."""
        key = u.tobytes()
        if key not in cache:
            outs = model(u, True)
            pred = np.concatenate([o[0] for o in outs])
            J = np.concatenate([o[1] for o in outs])
            ok = pred > 1e-10
            J = np.nan_to_num(np.where(ok[:, None], J / np.where(ok, pred, 1.0)[:, None], 0.0), posinf=0.0, neginf=0.0)
            cache.clear()
            cache[key] = (np.log(np.maximum(pred, 1e-10)) - np.log(y_all), J)
        return cache[key]

    lo, hi = _bounds(law, float(y_all.max()))
    first = min(range(len(data)), key=lambda i: data[i][1][0])
    lrs0, t0, y0, _, _ = data[first]
    S0 = float(np.cumsum(lrs0)[t0[0] - 1])
    s2max = max(float(np.abs(tm[1]).max()) for tm in terms) if law == "annealing" else 0.0

    def run(x0: np.ndarray, nfev: int):
        return least_squares(lambda u: evaluate(u)[0], x0, jac=lambda u: evaluate(u)[1], bounds=(lo, hi),
                             loss="huber", f_scale=huber_delta, x_scale="jac", max_nfev=nfev, method="trf")

    # every start briefly, then the best one to convergence
    scout = [run(x0, 20) for x0 in _starts(law, starts, seed, S0, float(y0[0]), float(y_all.min()), s2max, lo, hi)]
    best = min((r for r in scout if np.all(np.isfinite(r.x))), key=lambda r: r.cost, default=None)
    if best is None:
        raise ForecastError("fit_law: no start reached finite parameters")
    if best.status == 0:  # stopped by the evaluation budget
        best = run(best.x, max_nfev)
    u = best.x
    diagnostics = _diagnose(spec, u, *evaluate(u), data, model, curves, best.active_mask)
    diagnostics["cost"] = float(best.cost)
    metrics = sorted({str(c.info.get("metric", "given")) for c in curves})
    settings = {"skip_fraction": skip_fraction, "max_points": max_points, "starts": starts, "seed": seed,
                "huber_delta": huber_delta, "max_nfev": max_nfev,
                "signal": {"metric": metrics[0] if len(metrics) == 1 else metrics,
                           "window": max(c.window for c in curves)}}
    sources = [{"name": c.name, **c.info, "fit_points": int(d[1].size)} for c, d in zip(curves, data, strict=True)]
    return FittedLaw(law, spec.to_raw(u, lr_ref), lr_ref, options, diagnostics, sources, settings)


def _diagnose(spec, u, r, J, data, model, curves, active_mask) -> dict[str, Any]:
    preds = model(u, False)
    per_run = []
    for c, (_, _t, y, _, _), p in zip(curves, data, preds, strict=True):
        rel = np.abs(p - y) / y
        per_run.append({"name": c.name, "points": int(y.size), "rmse": float(np.sqrt(np.mean((p - y) ** 2))),
                        "mean_rel_err": float(rel.mean()), "max_rel_err": float(rel.max())})
    y = np.concatenate([d[2] for d in data])
    p = np.concatenate(preds)
    rel = np.abs(p - y) / y
    warnings: list[str] = []
    # standard errors from the Gauss-Newton covariance with a robust residual scale
    n, k = J.shape
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r)))) if n > k else float("nan")
    cov = sigma ** 2 * np.linalg.pinv(J.T @ J)
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_se = np.where(np.abs(u) > 0, se / np.abs(u), np.inf)
    norms = np.linalg.norm(J, axis=0)
    sv = np.linalg.svd(J / np.where(norms > 0, norms, 1.0), compute_uv=False) if n else np.zeros(1)
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
    decays = any(_decays(c.lrs) for c in curves)
    undetermined = set()
    if not decays:
        undetermined = set(spec.drop_params)
        warnings.append(f"no fit run decays its LR after warmup: {', '.join(spec.drop_params)} are not determined; "
                        "forecasts of decaying schedules are guesses (fit on at least one run with a decay)")
    longest = max(curves, key=lambda c: c.info["anneal_fraction"])
    if decays and longest.info["anneal_fraction"] <= LONG_DECAY:
        warnings.append(f"no fit run anneals over more than {LONG_DECAY:.0%} of its budget (the longest: "
                        f"{longest.info['anneal_fraction']:.0%}, {longest.name}): the annealing term is not identified "
                        "and forecasts of long decays (D2Z, 10x, cosine) drift with the decay's length; fit on a "
                        "constant run, a cosine decay to 10% and a two-stage step decay (x0.3 at 50%) as the MPL "
                        "authors do")
    if rel.mean() > POOR_FIT:
        warnings.append(f"the law does not fit its own runs: in-sample mean relative error {rel.mean():.2%} "
                        f"(> {POOR_FIT:.0%}; max {rel.max():.2%}); its forecasts are not to be trusted")
    if n < 5 * k:
        warnings.append(f"only {n} fit points for {k} parameters")
    loose = [f"{name} (±{rs:.0%})" if math.isfinite(rs) else name for name, rs in zip(spec.params, rel_se, strict=True)
             if rs > 0.5 and name not in undetermined]
    if loose:
        warnings.append("poorly determined (relative standard error > 50%): " + ", ".join(loose))
    if cond > 1e8 and not undetermined:
        warnings.append(f"ill-conditioned Jacobian (condition number {cond:.2g}): parameters trade off against each other")
    at_bound = [name for name, m in zip(spec.params, active_mask, strict=True) if m != 0 and name not in undetermined]
    if at_bound:
        warnings.append(f"at a bound of the search: {', '.join(at_bound)}")
    return {"points": int(y.size), "rmse": float(np.sqrt(np.mean((p - y) ** 2))), "mean_rel_err": float(rel.mean()),
            "max_rel_err": float(rel.max()), "runs": per_run,
            "rel_se": {name: (float(v) if math.isfinite(v) else None) for name, v in zip(spec.params, rel_se, strict=True)},
            "condition": cond if math.isfinite(cond) else None, "decay_in_fit": decays,
            "anneal_fraction": {c.name: c.info["anneal_fraction"] for c in curves}, "warnings": warnings}
