"""D2Z (paper 002, Table 1, Figures 3/4): linear decay to zero against decay to 10% of the peak, over peak LR and TPP.

A muP model swept over the peak LR (eta~ * 2^k around the tuned base) for each schedule and budget (tokens per
parameter). The grid brackets every optimum: seed 0 runs each (schedule, TPP) arm over the initial ks, and the grid
extends itself (a dynamic study, rebuilt from the finished runs until nothing new appears) until the arm's best LR
has a worse neighbour on both sides (a diverged run counts as worse), up to a cap; a capped arm is reported as such
and gets no verdict. Each bracketed arm of the compared schedules then gets seeds 1..N-1 at the three LRs around its
optimum. Delta = (L_10x - L_D2Z) / L_10x per seed with L = the seed's observed minimum over those three LRs (the
named estimator; paired t-interval), the quadratic vertex through them beside it. Verdicts: D2Z beats 10x at 20 TPP,
10x is no worse than D2Z at 2 TPP (within a stated margin), the gap grows with TPP; Constant vs D2Z as a sanity row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .study import RunSpec, Study, fmt

REPO = Path(__file__).resolve().parent.parent

# name -> schedule overrides (all with the same 10% linear warmup).
SCHEDULES = {
    "Linear-D2Z": ("schedule.name=linear", "schedule.end_ratio=0.0"),
    "Linear-10x": ("schedule.name=linear", "schedule.end_ratio=0.1"),
    "Cosine-D2Z": ("schedule.name=cosine", "schedule.end_ratio=0.0"),
    "Cosine-10x": ("schedule.name=cosine", "schedule.end_ratio=0.1"),
    "Constant": ("schedule.name=constant", "schedule.end_ratio=null"),
    "InvSqrt": ("schedule.name=inverse_sqrt", "schedule.end_ratio=null"),
    "WSD": ("schedule.name=wsd", "schedule.end_ratio=0.0", "schedule.params.decay=0.2"),
    "Rational": ("schedule.name=rational", "schedule.end_ratio=null"),
}
REDUCED = ("Linear-D2Z", "Linear-10x", "Constant", "WSD")
SEEDED = ("Linear-D2Z", "Linear-10x", "Constant")  # the schedules the verdicts compare: extra seeds at their bracket

# Table 1 of the paper (617M, 20 TPP): best validation loss per schedule over the eta~ grid.
PAPER_BEST_617M_20TPP = {"Linear-D2Z": 2.571, "Cosine-D2Z": 2.574, "Linear-10x": 2.591, "Cosine-10x": 2.590,
                         "InvSqrt": 2.665, "Constant": 2.711}
PAPER_CONSTANT_GAP = (2.711 - 2.571) / 2.711  # 5.16%: (best Constant - best Linear-D2Z) / best Constant, 617M, 20 TPP
MARGIN = 0.001  # the "no worse" margin: +-0.1% relative


@dataclass(frozen=True)
class Scale:
    config: Path
    seeds: int  # seeds at each bracketed optimum (seed 0 sweeps the grid, seeds 1..N-1 run the bracket)
    tpps: tuple[float, ...]
    ks: tuple[int, ...]  # the initial grid: peak LR = base * 2^k
    schedules: tuple[str, ...]
    base_lr: float = 1.6e-2
    models: tuple[tuple[str, tuple[str, ...]], ...] = (("", ()),)  # (name, overrides) per model size
    extra: tuple[str, ...] = ()
    k_cap: tuple[int, int] = (-5, 4)  # the grid never extends beyond these ks
    extend: bool = True  # False: a fixed grid, every seed at every LR (a smoke test)
    seeded: tuple[str, ...] = SEEDED


SCALES = {
    "cpu": Scale(REPO / "configs/studies/cpu.yaml", seeds=3, tpps=(2.0, 5.0, 20.0), ks=(-1, 0, 1, 2),
                 schedules=REDUCED, k_cap=(-4, 3)),
    # --full-grid: the paper's k = -3..2 and its 8 schedules (the grid still extends where an optimum sits at an edge)
    "cpu-full-grid": Scale(REPO / "configs/studies/cpu.yaml", seeds=3, tpps=(2.0, 5.0, 20.0), ks=(-3, -2, -1, 0, 1, 2),
                           schedules=tuple(SCHEDULES), k_cap=(-5, 3)),
    "tiny": Scale(REPO / "configs/studies/cpu.yaml", seeds=2, tpps=(0.05,), ks=(0,), schedules=("Linear-D2Z", "Linear-10x"),
                  extra=("train.global_batch_size=4", "train.micro_batch_size=4"), extend=False),
    "full": Scale(
        REPO / "configs/mup_111m.yaml", seeds=1, tpps=(2.0, 20.0, 80.0, 200.0), ks=(-3, -2, -1, 0, 1, 2),
        schedules=tuple(SCHEDULES),
        models=(("111M", ("model.preset=mup-111m", "train.global_batch_size=192")),
                ("617M", ("model.preset=mup-617m", "train.global_batch_size=504"))),
        extra=("eval.max_samples=537109",),  # 1.1B validation tokens at 2048 per sequence
        k_cap=(-5, 3),
    ),
}


def scale_of(scale: str, full_grid: bool = False) -> Scale:
    return SCALES["cpu-full-grid" if full_grid and scale == "cpu" else scale]


# -- the self-extending grid ---------------------------------------------------------------------------

BRACKETED, EXTEND, CAPPED, PENDING = "bracketed", "extend", "capped", "pending"


def extend_grid(losses: Mapping[int, float], k_cap: tuple[int, int]) -> tuple[list[int], str, int | None]:
    """The next ks of one arm's grid from its finished losses (k -> final loss; NaN = diverged, which is worse than
    any finite loss). Returns ``(ks to add, state, best k)``:

    - ``bracketed``: the best k's neighbours k-1 and k+1 are both in the grid (so both are worse or equal);
    - ``extend``: a missing neighbour within ``k_cap`` is added (both, when both are missing);
    - ``capped``: a missing neighbour lies beyond the cap (the optimum may lie outside the grid): no verdict.
    Every loss diverged: the grid extends downwards from its lowest k (capped at the cap), best k None.
    """
    lo_cap, hi_cap = k_cap
    if lo_cap > hi_cap:
        raise ValueError(f"k_cap {k_cap}: the lower cap is above the upper")
    if not losses:
        raise ValueError("extend_grid needs at least one finished run")
    finite = {k: v for k, v in losses.items() if math.isfinite(v)}
    if not finite:
        k = min(losses) - 1
        return ([k], EXTEND, None) if k >= lo_cap else ([], CAPPED, None)
    best = min(sorted(finite), key=lambda k: finite[k])
    add, capped = [], False
    for k in (best - 1, best + 1):
        if k in losses:
            continue
        if lo_cap <= k <= hi_cap:
            add.append(k)
        else:
            capped = True
    if add:
        return add, EXTEND, best
    return [], CAPPED if capped else BRACKETED, best


@dataclass
class Arm:
    """One (model, TPP, schedule) arm: its grid (seed 0), state and optimum."""

    model: str
    tpp: float
    schedule: str
    ks: list[int]
    state: str
    best_k: int | None
    base_lr: float

    @property
    def bracket(self) -> list[int]:
        """The three ks around the optimum (bracketed arms), else every k of the grid."""
        if self.state == BRACKETED and self.best_k is not None:
            return [self.best_k - 1, self.best_k, self.best_k + 1]
        return sorted(self.ks)

    @property
    def best_lr(self) -> float | None:
        return None if self.best_k is None else self.base_lr * 2.0 ** self.best_k


def run_label(model: str, name: str, tpp: float, lr: float, seed: int) -> str:
    return f"{model + '/' if model else ''}{name}/tpp{fmt(tpp)}/lr{lr:.3g}/seed{seed}"


def _spec(s: Scale, model: str, model_over: tuple[str, ...], tpp: float, name: str, k: int, seed: int) -> RunSpec:
    lr = s.base_lr * 2.0 ** k
    over = (*model_over, *SCHEDULES[name], f"optimizer.lr={lr}", "train.max_steps=null",
            "train.max_tokens=null", f"train.tokens_per_param={tpp}", f"train.seed={seed}", *s.extra)
    params = {"model": model, "schedule": name, "tpp": tpp, "lr": lr, "k": k, "seed": seed}
    return RunSpec(run_label(model, name, tpp, lr, seed), over, params)


def finished_loss(study: Study, spec: RunSpec, out: Path | None) -> float | None:
    """A finished run's final validation loss from ``OUT/runs/<key>/experiment.json`` (or a sibling study's copy):
    NaN when it diverged or has no loss, None when it has not ended (or ``out`` is None)."""
    if out is None:
        return None
    from .runner import RESULT, find_run_dir

    path = find_run_dir(Path(out), study.key(spec)) / RESULT
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("status") != "done":
        return math.nan if data.get("status") == "diverged" else None
    v = data.get("final_val_loss")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.nan


def arms(s: Scale, out: Path | None, overrides: Sequence[str] = (), schedules: Sequence[str] | None = None,
         tpps: Sequence[float] | None = None) -> tuple[list[Arm], list[RunSpec]]:
    """Every arm's grid as far as the finished runs in ``out`` take it, and the seed-0 runs of those grids."""
    probe = Study("d2z", s.config, [], report=lambda *_: "")  # only for run names
    extra = tuple(overrides)
    out_arms, runs = [], []
    for model, model_over in s.models:
        for tpp in tpps or s.tpps:
            for name in schedules or s.schedules:
                ks = set(s.ks)
                while True:
                    specs = {k: _spec(s, model, model_over, tpp, name, k, 0) for k in sorted(ks)}
                    done = {k: finished_loss(probe, _with(sp, extra), out) for k, sp in specs.items()}
                    if any(v is None for v in done.values()):
                        state, best = PENDING, None
                        break
                    # a fixed grid (extend=False) never grows: its own ends are the cap
                    add, state, best = extend_grid(done, s.k_cap if s.extend else (min(ks), max(ks)))  # type: ignore[arg-type]
                    if not add or not s.extend:
                        break
                    ks |= set(add)
                out_arms.append(Arm(model, tpp, name, sorted(ks), state, best, s.base_lr))
                runs += specs.values()
    return out_arms, runs


def _with(spec: RunSpec, extra: tuple[str, ...]) -> RunSpec:
    """The spec with the study-wide overrides appended (as build_study appends them), for its run name."""
    if not extra:
        return spec
    import dataclasses

    return dataclasses.replace(spec, overrides=tuple(spec.overrides) + extra)


def build(scale: str, seeds: int | None = None, out: Path | None = None, full_grid: bool = False,
          overrides: Sequence[str] = ()) -> Study:
    s = scale_of(scale, full_grid)
    n_seeds = seeds or s.seeds
    grid_arms, runs = arms(s, out, overrides)
    by_model = dict(s.models)
    projected_expected: list[RunSpec] = []
    projected_worst: list[RunSpec] = []
    for arm in grid_arms:
        mo = by_model[arm.model]
        if not s.extend:  # a fixed grid: every seed at every LR
            runs += [_spec(s, arm.model, mo, arm.tpp, arm.schedule, k, seed) for k in arm.ks for seed in range(1, n_seeds)]
            continue
        seeded = arm.schedule in s.seeded and n_seeds > 1
        if arm.state == BRACKETED and seeded:
            runs += [_spec(s, arm.model, mo, arm.tpp, arm.schedule, k, seed)
                     for seed in range(1, n_seeds) for k in arm.bracket]
        elif arm.state == PENDING:
            # What the dry run prices beyond the runs known now: the bracket's seeds around the initial grid's
            # middle (expected), and every k up to the caps plus those seeds (worst case).
            mid = sorted(arm.ks)[len(arm.ks) // 2]
            more = [_spec(s, arm.model, mo, arm.tpp, arm.schedule, k, seed)
                    for seed in range(1, n_seeds) for k in (mid - 1, mid, mid + 1)] if seeded else []
            projected_expected += more
            projected_worst += more + [_spec(s, arm.model, mo, arm.tpp, arm.schedule, k, 0)
                                       for k in range(s.k_cap[0], s.k_cap[1] + 1) if k not in arm.ks]
    notes = []
    if scale != "full":
        notes.append("a ~0.10M-parameter muP model (width = base width 48) on package documentation; the paper used "
                     "111M-1.7B on SlimPajama, so absolute losses are not comparable, only the ordering of schedules")
        notes.append("not detectable at this scale (protocols.md section 4): the 80-vs-200 TPP claim (too little "
                     "text) and the downstream-accuracy gains")
    if s.extend:
        notes.append(f"the LR grid extends itself: seed 0 runs k = {min(s.ks)}..{max(s.ks)} (peak LR {fmt(s.base_lr)} "
                     f"x 2^k) per arm, then k +-1 until the best LR has a worse neighbour on both sides, within k = "
                     f"{s.k_cap[0]}..{s.k_cap[1]} (an arm at the cap gets no verdict); then seeds 1..{n_seeds - 1} at "
                     f"the three LRs around each optimum of {', '.join(x for x in s.schedules if x in s.seeded)}. "
                     f"Arms now: " + ", ".join(f"{sum(a.state == st for a in grid_arms)} {st}"
                                               for st in (BRACKETED, PENDING, CAPPED) if any(a.state == st for a in grid_arms)))
    projected = {"expected": [_with(r, tuple(overrides)) for r in projected_expected],
                 "worst case": [_with(r, tuple(overrides)) for r in projected_worst]} if projected_worst else {}
    study = Study("d2z", s.config, runs,
                  report=lambda results, out_dir: report(results, out_dir, s, grid_arms_of(s, results.out, overrides)),
                  notes=notes, dynamic=s.extend, projected=projected)
    return study


def grid_arms_of(s: Scale, out: Path | None, overrides: Sequence[str] = ()) -> list[Arm]:
    return arms(s, out, overrides)[0]


def best_lrs(scale: str, out: Path, schedules: Sequence[str], tpps: Sequence[float],
             overrides: Sequence[str] = (), model: str = "") -> dict[tuple[str, float], float]:
    """(schedule, TPP) -> the bracketed best peak LR of seed 0's grid in the d2z study at ``out``, for the arms
    whose optimum is bracketed there (others are left out). Reads only finished runs; trains nothing."""
    s = scale_of(scale)
    tpps = [t for t in tpps if t in s.tpps]
    names = [n for n in schedules if n in SCHEDULES]
    if not tpps or not names or not Path(out).is_dir():
        return {}
    found, _ = arms(s, Path(out), overrides, schedules=names, tpps=tpps)
    return {(a.schedule, a.tpp): a.best_lr for a in found if a.state == BRACKETED and a.model == (model or s.models[0][0])}


# -- report -------------------------------------------------------------------------------------------

ESTIMATOR = "per-seed observed minimum over the three LRs around the optimum"
VERTEX = "per-seed quadratic vertex in log2 LR through those three LRs"


def _loss(results, model: str, tpp: float, schedule: str, k: int, seed: int) -> float:
    for r in results.select(model=model, tpp=tpp, schedule=schedule, k=k, seed=seed):
        if r.status == "done":
            return float(r.final_val_loss)
        if r.status == "diverged":
            return math.inf  # worse than any loss: never an optimum
    return math.nan


def per_seed_best(results, arm: Arm, seeds: Sequence[int], vertex: bool = False) -> np.ndarray:
    """Each seed's best loss over the arm's bracket (NaN for a seed that did not run all of it, or diverged at
    its minimum): the observed minimum, or with ``vertex`` the quadratic vertex through the three LRs."""
    from . import stats

    out = np.full(len(seeds), np.nan)
    ks = arm.bracket
    lrs = [arm.base_lr * 2.0 ** k for k in ks]
    for i, seed in enumerate(seeds):
        y = np.array([_loss(results, arm.model, arm.tpp, arm.schedule, k, seed) for k in ks])
        if np.isnan(y).any() or not np.isfinite(y).any():
            continue
        if vertex:
            out[i] = stats.vertex_of_three(y, lrs) if len(ks) == 3 and np.isfinite(y).all() else math.nan
        else:
            out[i] = float(np.min(y))
    return out


def gap_estimate(results, a: Arm, b: Arm, seeds: Sequence[int], vertex: bool = False):
    """Δ = (L_a − L_b) / L_a per seed (paired), with the paired t-interval (:func:`experiments.stats.paired_estimate`)."""
    from . import stats

    la, lb = per_seed_best(results, a, seeds, vertex), per_seed_best(results, b, seeds, vertex)
    return stats.paired_estimate((la - lb) / la, VERTEX if vertex else ESTIMATOR)


def _no_verdict(arms_: Sequence[Arm]) -> str:
    """Why a verdict on these arms cannot be given (an arm capped or unfinished), or ''."""
    bad = [f"{a.schedule} at {fmt(a.tpp)} TPP is {a.state}" + (f" (best LR {a.best_lr:.3g} at the grid's cap)"
                                                               if a.state == CAPPED and a.best_lr else "")
           for a in arms_ if a.state != BRACKETED]
    return "; ".join(bad)


def report(results, out: Path, s: Scale, grid_arms: list[Arm]) -> str:
    from . import stats
    from .plots import save_figure
    from .report import fmt_loss

    ks = sorted(results.values("k"))
    seeds = sorted(results.values("seed"))
    by = {(a.model, a.tpp, a.schedule): a for a in grid_arms}
    lines: list[str] = [
        f"Estimator of every Delta: {ESTIMATOR} (a bracketed arm; otherwise over the arm's whole grid), the paired "
        f"per-seed relative gap, its mean with a 95% paired t-interval (<= {stats.T_MAX_SEEDS} seeds). The quadratic "
        f"vertex estimator is shown beside it, never mixed. No-worse verdicts use a margin of ±{MARGIN:.1%}.", ""]
    deltas: dict[tuple[str, float], object] = {}
    const: dict[tuple[str, float], object] = {}
    panels = []
    for model, _ in s.models:
        for tpp in s.tpps:
            title = f"{model + ', ' if model else ''}{fmt(tpp)} TPP"
            names = [n for n in s.schedules if (model, tpp, n) in by]
            lines += [f"### {title}: validation loss (mean ± sd over the seeds that ran each LR; n in brackets)", "",
                      "| peak LR | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            means = {}
            for k in ks:
                cells = []
                for name in names:
                    v = np.array([_loss(results, model, tpp, name, k, seed) for seed in seeds])
                    fin = v[np.isfinite(v)]
                    if np.isinf(v).any():
                        cells.append("diverged")
                    elif fin.size == 0:
                        cells.append("")
                    else:
                        star = "**" if by[(model, tpp, name)].best_k == k else ""
                        cells.append(f"{star}{fmt_loss(float(fin.mean()))}{star}"
                                     + (f" ±{fin.std(ddof=1):.4f}" if fin.size > 1 else "") + f" ({fin.size})")
                    means.setdefault(name, []).append(float(fin.mean()) if fin.size else math.nan)
                lines.append(f"| {s.base_lr * 2.0 ** k:.3g} | " + " | ".join(cells) + " |")
            lines += ["", "Optimum (seed 0's grid; bold above): " + "; ".join(
                f"{n} {by[(model, tpp, n)].state}" + (f" at {by[(model, tpp, n)].best_lr:.3g}"
                                                     if by[(model, tpp, n)].best_lr else "") for n in names), ""]
            def arm(n: str, model: str = model, tpp: float = tpp) -> Arm | None:
                return by.get((model, tpp, n))
            if arm("Linear-D2Z") and arm("Linear-10x"):
                est = gap_estimate(results, arm("Linear-10x"), arm("Linear-D2Z"), seeds)
                vert = gap_estimate(results, arm("Linear-10x"), arm("Linear-D2Z"), seeds, vertex=True)
                deltas[(model, tpp)] = est
                why = _no_verdict([arm("Linear-10x"), arm("Linear-D2Z")])
                lines += [f"Delta = (L Linear-10x - L Linear-D2Z) / L Linear-10x (> 0: D2Z better) = {est.text()}; "
                          f"per seed {', '.join(f'{d:+.2%}' for d in est.per_seed)}. Beside it, the quadratic vertex: "
                          f"{vert.text()}." + (f" No verdict: {why}." if why else ""), ""]
            if arm("Constant") and arm("Linear-D2Z"):
                est = gap_estimate(results, arm("Constant"), arm("Linear-D2Z"), seeds)
                const[(model, tpp)] = est
                lines += [f"Sanity row, Constant vs D2Z: (L Constant - L Linear-D2Z) / L Constant = {est.text()} "
                          f"(paper, 617M at 20 TPP: {PAPER_CONSTANT_GAP:+.2%})", ""]
            panels.append((title, [s.base_lr * 2.0 ** k for k in ks], {n: np.array(m) for n, m in means.items()}))
    lines += ["Paper (617M, 20 TPP, Table 1): best " + ", ".join(f"{k} {v}" for k, v in PAPER_BEST_617M_20TPP.items())
              + "; Delta(Linear) = +0.77%; Constant vs D2Z +5.16%; at 2 TPP 10x wins (111M: D2Z worse at every LR).", ""]
    lines += ["### Verdicts", ""] + [v.markdown() for v in _verdicts(results, s, by, seeds, deltas, const)]
    save_figure(out / "d2z_loss_vs_lr.png", _plot, panels, size=(4.2 * max(1, len(panels)), 3.8))
    lines += ["", "![loss vs peak LR](d2z_loss_vs_lr.png)"]
    return "\n".join(lines) + "\n"


def _gated(v, why: str):
    """A verdict made INCONCLUSIVE when an arm it rests on is capped or unfinished."""
    if why:
        v.reproduced, v.why = None, f"no verdict: {why}"
    return v


def _verdicts(results, s: Scale, by: dict, seeds, deltas, const):
    from . import stats

    out = []
    for model, _ in s.models:
        d = {tpp: deltas[(model, tpp)] for tpp in s.tpps if (model, tpp) in deltas}
        prefix = f"{model}: " if model else ""

        def why(*tpps, model: str = model):
            return _no_verdict([by[(model, t, n)] for t in tpps for n in ("Linear-D2Z", "Linear-10x")])

        hi_tpp = max((t for t in d if t >= 10), default=None)
        lo_tpp = min((t for t in d if t <= 5), default=None)
        if hi_tpp is not None:
            out.append(_gated(stats.verdict(f"{prefix}D2Z beats 10x at {fmt(hi_tpp)} TPP", d[hi_tpp], ">0"), why(hi_tpp)))
        if lo_tpp is not None:
            out.append(_gated(stats.verdict(f"{prefix}10x is no worse than D2Z at {fmt(lo_tpp)} TPP", d[lo_tpp], "<=0",
                                            margin=MARGIN), why(lo_tpp)))
        if hi_tpp is not None and lo_tpp is not None and len(seeds) >= 2:
            a, b = d[hi_tpp].per_seed, d[lo_tpp].per_seed
            growth = stats.paired_estimate(
                np.array(_paired_values(results, by, model, hi_tpp, seeds)) - np.array(_paired_values(results, by, model, lo_tpp, seeds)),
                f"per-seed Delta at {fmt(hi_tpp)} minus Delta at {fmt(lo_tpp)} TPP ({ESTIMATOR})") if a and b else None
            if growth is not None:
                out.append(_gated(stats.verdict(f"{prefix}the D2Z-over-10x gap grows with TPP", growth, ">0"),
                                  why(hi_tpp, lo_tpp)))
        top = max(s.tpps)
        if (model, top) in const:
            out.append(_gated(stats.verdict(f"{prefix}D2Z beats Constant at {fmt(top)} TPP (sanity; paper "
                                            f"{PAPER_CONSTANT_GAP:+.2%} at 617M)", const[(model, top)], ">0"),
                              _no_verdict([by[(model, top, "Constant")], by[(model, top, "Linear-D2Z")]])))
    return out


def _paired_values(results, by, model, tpp, seeds) -> list[float]:
    """Per-seed Delta at one budget, NaN where a seed is missing (aligned on ``seeds``, for differences)."""
    a, b = by[(model, tpp, "Linear-10x")], by[(model, tpp, "Linear-D2Z")]
    la, lb = per_seed_best(results, a, seeds), per_seed_best(results, b, seeds)
    return list((la - lb) / la)


def _plot(fig, panels):
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (title, lrs, means) in zip(axes, panels, strict=False):
        for name, m in means.items():
            ax.plot(lrs, m, marker="o", ms=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peak LR (muP base)")
        ax.set_title(title)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("validation loss")
