"""D2Z (paper 002, Table 1, Figures 3/4): linear decay to zero against decay to 10% of the peak, over peak LR and TPP.

A muP model swept over the peak LR (eta~ * 2^k around the tuned base) for each schedule and budget (tokens per
parameter), every arm with the same seeds (same initialization and data order). The report gives a Table-1-style
grid, each schedule's best loss, and Delta = (best 10x - best D2Z) / best 10x per budget with a paired bootstrap
interval over seeds; the verdicts are the paper's: D2Z beats 10x at 20 TPP, 10x is not worse at 2 TPP, and the
gap grows with TPP.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

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

# Table 1 of the paper (617M, 20 TPP): best validation loss per schedule over the eta~ grid.
PAPER_BEST_617M_20TPP = {"Linear-D2Z": 2.571, "Cosine-D2Z": 2.574, "Linear-10x": 2.591, "Cosine-10x": 2.590,
                         "InvSqrt": 2.665, "Constant": 2.711}


@dataclass(frozen=True)
class Scale:
    config: Path
    seeds: int
    tpps: tuple[float, ...]
    ks: tuple[int, ...]  # peak LR = base * 2^k
    schedules: tuple[str, ...]
    base_lr: float = 1.6e-2
    models: tuple[tuple[str, tuple[str, ...]], ...] = (("", ()),)  # (name, overrides) per model size
    extra: tuple[str, ...] = ()


SCALES = {
    "cpu": Scale(REPO / "configs/studies/cpu.yaml", seeds=3, tpps=(2.0, 20.0), ks=(-2, -1, 0, 1), schedules=REDUCED),
    "cpu-full-grid": Scale(REPO / "configs/studies/cpu.yaml", seeds=3, tpps=(2.0, 5.0, 20.0), ks=(-3, -2, -1, 0, 1, 2),
                           schedules=tuple(SCHEDULES)),
    "tiny": Scale(REPO / "configs/studies/cpu.yaml", seeds=2, tpps=(0.05,), ks=(0,), schedules=("Linear-D2Z", "Linear-10x"),
                  extra=("train.global_batch_size=4", "train.micro_batch_size=4")),
    "full": Scale(
        REPO / "configs/mup_111m.yaml", seeds=1, tpps=(2.0, 20.0, 80.0, 200.0), ks=(-3, -2, -1, 0, 1, 2),
        schedules=tuple(SCHEDULES),
        models=(("111M", ("model.preset=mup-111m", "train.global_batch_size=192")),
                ("617M", ("model.preset=mup-617m", "train.global_batch_size=504"))),
        extra=("eval.max_samples=537109",),  # 1.1B validation tokens at 2048 per sequence
    ),
}


def build(scale: str, seeds: Optional[int] = None, out: Optional[Path] = None, full_grid: bool = False,
          overrides: Sequence[str] = ()) -> Study:
    s = SCALES["cpu-full-grid" if full_grid and scale == "cpu" else scale]
    runs = []
    for model, model_over in s.models:
        for tpp in s.tpps:
            for name in s.schedules:
                for k in s.ks:
                    lr = s.base_lr * 2.0 ** k
                    for seed in range(seeds or s.seeds):
                        label = f"{model + '/' if model else ''}{name}/tpp{fmt(tpp)}/lr{lr:.3g}/seed{seed}"
                        over = (*model_over, *SCHEDULES[name], f"optimizer.lr={lr}", "train.max_steps=null",
                                "train.max_tokens=null", f"train.tokens_per_param={tpp}", f"train.seed={seed}", *s.extra)
                        params = {"model": model, "schedule": name, "tpp": tpp, "lr": lr, "k": k, "seed": seed}
                        runs.append(RunSpec(label, over, params))
    notes = []
    if scale != "full":
        notes.append("a ~0.10M-parameter muP model (width = base width 48) on package documentation; the paper used "
                     "111M-1.7B on SlimPajama, so absolute losses are not comparable, only the ordering of schedules")
        notes.append("not detectable at this scale (protocols.md section 4): the 80-vs-200 TPP claim (too little "
                     "text) and the downstream-accuracy gains")
    return Study("d2z", s.config, runs, report=lambda results, out_dir: report(results, out_dir, s), notes=notes)


# -- report -------------------------------------------------------------------------------------------

def _grid(results, model: str, tpp: float, schedule: str, lrs: list[float], seeds: list[int]) -> np.ndarray:
    """Final validation losses, shape (seeds, lrs); NaN where diverged or missing."""
    out = np.full((len(seeds), len(lrs)), np.nan)
    for r in results.select(model=model, tpp=tpp, schedule=schedule):
        if r.status == "done":
            out[seeds.index(r.spec.params["seed"]), lrs.index(r.spec.params["lr"])] = r.final_val_loss
    return out


def _c_T0(results, model: str, tpp: float, schedule: str) -> float:
    """The dual coefficient c_{T,0} of the schedule at the base LR, from a finished run's config."""
    from pretrain.rundir import RunDir
    from pretrain.schedules.dual import smoothing, summarize

    for r in results.select(model=model, tpp=tpp, schedule=schedule, k=0):
        if (r.run_dir / "config.yaml").is_file():
            cfg = RunDir(r.run_dir).config
            try:
                return summarize(smoothing(np.asarray(cfg.build_schedule().multipliers()), cfg.dual_alpha())).c0
            except ValueError:
                return float("nan")
    return float("nan")


def report(results, out: Path, s: Scale) -> str:
    from . import stats
    from .plots import save_figure
    from .report import fmt_loss

    lrs = sorted(results.values("lr"))
    seeds = sorted(results.values("seed"))
    lines: list[str] = []
    deltas: dict[tuple[str, float], tuple[float, float, float]] = {}
    panels = []
    for model, _ in s.models:
        for tpp in s.tpps:
            grids = {name: _grid(results, model, tpp, name, lrs, seeds) for name in s.schedules}
            means = {name: np.nanmean(g, axis=0) if np.isfinite(g).any() else np.full(len(lrs), np.nan)
                     for name, g in grids.items()}
            title = f"{model + ', ' if model else ''}{fmt(tpp)} TPP"
            lines += [f"### {title}: validation loss (mean over {len(seeds)} seeds)", "",
                      "| peak LR | " + " | ".join(s.schedules) + " |", "|---" * (len(s.schedules) + 1) + "|"]
            for j, lr in enumerate(lrs):
                cells = []
                for name in s.schedules:
                    g = grids[name][:, j]
                    sd = np.nanstd(g, ddof=1) if np.isfinite(g).sum() > 1 else float("nan")
                    cells.append(fmt_loss(float(np.nanmean(g)) if np.isfinite(g).any() else float("nan"))
                                 + (f" ±{sd:.4f}" if np.isfinite(sd) else ""))
                lines.append(f"| {lr:.3g} | " + " | ".join(cells) + " |")
            best = {name: stats.best_over_lr(means[name], lrs) for name in s.schedules}
            c0 = {name: _c_T0(results, model, tpp, name) for name in s.schedules}
            edge = [name for name in s.schedules if np.isfinite(means[name]).any()
                    and int(np.nanargmin(means[name])) in (0, len(lrs) - 1)]
            lines += ["", "Best over the LR grid (quadratic fit in log2 LR around the minimum): " + ", ".join(
                f"{name} {fmt_loss(best[name])}" for name in s.schedules)
                + (f". At the edge of the grid (the optimum may lie outside it; `--full-grid` widens it): "
                   f"{', '.join(edge)}" if edge else ""), ""]
            if "Linear-D2Z" in grids and "Linear-10x" in grids:
                a, b = grids["Linear-10x"], grids["Linear-D2Z"]
                ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
                if ok.sum() >= 1:
                    est, blo, bhi = stats.delta_ci(a[ok], b[ok], lrs)
                    per_seed = np.array([stats.relative_gap_of_best(a[i:i + 1], b[i:i + 1], lrs) for i in np.flatnonzero(ok)])
                    lo, hi = _t_interval(per_seed)
                    deltas[(model, tpp)] = (est, lo, hi, int(ok.sum()))
                    lines += [f"Delta = (best Linear-10x - best Linear-D2Z) / best Linear-10x = {est:+.2%} (> 0: D2Z better); "
                              f"per seed {', '.join(f'{d:+.2%}' for d in per_seed)}; 95% t-interval over the "
                              f"{int(ok.sum())} seeds [{lo:+.2%}, {hi:+.2%}] (the seed bootstrap gives [{blo:+.2%}, "
                              f"{bhi:+.2%}], too narrow with this few seeds; the verdicts use the t-interval)", ""]
            panels.append((title, lrs, means, c0))
    lines += ["Paper (617M, 20 TPP, Table 1): best " + ", ".join(f"{k} {v}" for k, v in PAPER_BEST_617M_20TPP.items())
              + "; Delta(Linear) = +0.77%; at 2 TPP 10x wins (111M: D2Z worse at every LR).", ""]
    lines += ["### Verdicts", ""] + [v.markdown() for v in _verdicts(results, s, lrs, seeds, deltas)]
    save_figure(out / "d2z_loss_vs_lr.png", _plot, panels, size=(4.2 * max(1, len(panels)), 3.8))
    lines += ["", "![loss vs peak LR](d2z_loss_vs_lr.png)"]
    return "\n".join(lines) + "\n"


def _t_interval(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``x`` (NaN with fewer than 2 values)."""
    x = np.asarray(x, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    from scipy.stats import t

    half = t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def _verdicts(results, s: Scale, lrs, seeds, deltas):
    from . import stats

    out = []
    for model, _ in s.models:
        d = {tpp: deltas[(model, tpp)] for tpp in s.tpps if (model, tpp) in deltas}
        prefix = f"{model}: " if model else ""
        hi_tpp = max((t for t in d if t >= 10), default=None)
        lo_tpp = min((t for t in d if t <= 5), default=None)
        if hi_tpp is not None:
            out.append(stats.verdict_ci(f"{prefix}D2Z beats 10x at {fmt(hi_tpp)} TPP", *d[hi_tpp], ">0"))
        if lo_tpp is not None:
            out.append(stats.verdict_ci(f"{prefix}10x is not worse than D2Z at {fmt(lo_tpp)} TPP", *d[lo_tpp], "<=0"))
        if len(d) >= 2 and len(seeds) >= 2:
            out.append(_gap_grows(results, model, sorted(d), lrs, seeds, prefix))
    return out


def _gap_grows(results, model, tpps, lrs, seeds, prefix):
    """Delta at the largest budget minus Delta at the smallest, bootstrapped over seeds (paired across budgets)."""
    from . import stats

    a = np.concatenate([_grid(results, model, t, "Linear-10x", lrs, seeds) for t in (tpps[0], tpps[-1])], axis=1)
    b = np.concatenate([_grid(results, model, t, "Linear-D2Z", lrs, seeds) for t in (tpps[0], tpps[-1])], axis=1)
    ok = np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
    n_lr = len(lrs)
    data = np.concatenate([a[ok], b[ok]], axis=1)

    def growth(rows: np.ndarray) -> float:
        a_, b_ = rows[:, :2 * n_lr], rows[:, 2 * n_lr:]
        lo = stats.relative_gap_of_best(a_[:, :n_lr], b_[:, :n_lr], lrs)
        hi = stats.relative_gap_of_best(a_[:, n_lr:], b_[:, n_lr:], lrs)
        return hi - lo

    est, _, _ = stats.bootstrap_ci(growth, data, n_boot=2000)
    lo, hi = _t_interval(np.array([growth(data[i:i + 1]) for i in range(len(data))]))
    return stats.verdict_ci(f"{prefix}the D2Z-over-10x gap grows with TPP (Delta at {fmt(tpps[-1])} minus Delta at "
                            f"{fmt(tpps[0])} TPP)", est, lo, hi, int(ok.sum()), ">0")


def _plot(fig, panels):
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (title, lrs, means, c0) in zip(axes, panels):
        for name, m in means.items():
            label = f"{name} (c_T0 {c0[name]:.2g})" if np.isfinite(c0[name]) else name
            ax.plot(lrs, m, marker="o", ms=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("peak LR (muP base)")
        ax.set_title(title)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("validation loss")
