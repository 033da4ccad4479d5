"""SkipLR (paper 000, section 5, Table 2): does a run switched from eta1 to eta2 at t_k contract onto the eta2 run?

Each seed has three runs from one initialization and data order: Phi1 at a constant eta1, Phi2 at a constant eta2,
and Phi3 = Phi1 up to t_k, then eta2 (a branch of Phi1's checkpoint at t_k: nothing is recomputed). Plain SGD
(no momentum, no weight decay, clip 1.0, no warmup), losses are 10-step mean training losses (HF logging).
Transition = the first logged step >= t_k where |L3 - L2| / L2 < eps; a seed that never transitions counts as T.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .study import RunSpec, Study, fmt

REPO = Path(__file__).resolve().parent.parent

# Table 2 of the paper (protocols.md section 1): transitioned %, median / min / max step, T = 1000.
PAPER = [
    ("GPT2 / Wikitext", "100", "200", "200", "200"),
    ("Gemma 2B / Wikitext", "100", "780", "420", "950"),
    ("RoBERTa Large / XGLUE NER", "80", "410", "210", "1000"),
    ("T5 base / News Commentary", "98", "525", "250", "1000"),
]


@dataclass(frozen=True)
class Scale:
    config: Path
    seeds: int
    T: int
    t_k: int
    eta1: float
    eta2: float
    batch: int
    window: int = 10
    eps: float = 0.01
    extra: tuple[str, ...] = ()


SCALES = {
    # 2 CPU cores: the cpu-s model from scratch, eta_hi/1000 -> eta_hi (protocols.md section 4).
    # eta_hi = 3 is the largest SGD LR tried that trains stably (300 updates: 3.0 -> 4.40, 1.0 -> 4.59, 0.3 -> 5.38).
    "cpu": Scale(REPO / "configs/studies/cpu.yaml", seeds=20, T=1000, t_k=200, eta1=3e-3, eta2=3.0, batch=8),
    "tiny": Scale(REPO / "configs/studies/cpu.yaml", seeds=1, T=20, t_k=10, eta1=1e-3, eta2=1.0, batch=4),
    # The paper's pretraining row: Phi-3-mini from scratch with SGD on UltraTextbooks, 1e-6 -> 1e-3.
    "full": Scale(REPO / "configs/phi3_mini.yaml", seeds=5, T=10000, t_k=2500, eta1=1e-6, eta2=1e-3, batch=8,
                  extra=("model.activation_checkpointing=true",)),
}


def _common(s: Scale, seed: int, lr: float) -> tuple[str, ...]:
    return (
        "optimizer.name=sgd", "optimizer.momentum=0.0", "optimizer.weight_decay=0.0", "optimizer.grad_clip=1.0",
        f"optimizer.lr={lr}", "schedule.name=constant", "schedule.warmup_steps=0", "schedule.end_ratio=null",
        "train.tokens_per_param=null", "train.max_tokens=null", f"train.max_steps={s.T}",
        f"train.global_batch_size={s.batch}", f"train.micro_batch_size={s.batch}", "train.global_batch_tokens=null",
        f"train.seed={seed}", "logging.interval=10", *s.extra,
    )


def build(scale: str, seeds: Optional[int] = None, out: Optional[Path] = None, full_grid: bool = False,
          overrides: Sequence[str] = ()) -> Study:
    s = SCALES[scale]
    runs = []
    for seed in range(seeds or s.seeds):
        p1, p2, p3 = (f"seed{seed}/phi{i}" for i in (1, 2, 3))
        runs += [
            RunSpec(p1, _common(s, seed, s.eta1), {"role": "phi1", "seed": seed, "lr": s.eta1}),
            RunSpec(p2, _common(s, seed, s.eta2), {"role": "phi2", "seed": seed, "lr": s.eta2}),
            RunSpec(p3, _common(s, seed, s.eta2), {"role": "phi3", "seed": seed, "lr": s.eta2}, parent=p1,
                    branch_step=s.t_k),
        ]
    notes = [f"SGD at constant LR; eta1 = {fmt(s.eta1)} until t_k = {s.t_k}, then eta2 = {fmt(s.eta2)}; T = {s.T}; "
             f"eps = {s.eps:.0%} on {s.window}-step mean training losses"]
    if scale != "full":
        notes.append("a ~0.10M-parameter model trained from scratch on package documentation: the paper fine-tuned "
                     "pretrained models (GPT2, Gemma, ...), so transition steps are not comparable one to one")
    study = Study("skiplr", s.config, runs, report=lambda results, out_dir: report(results, out_dir, s), notes=notes)
    return study


# -- report -------------------------------------------------------------------------------------------

def _curves(results, seed: int, s: Scale):
    """Logged steps and the 10-step mean losses of Phi1, Phi2 and Phi3 (Phi1's up to t_k) for one seed."""
    from .stats import window_means

    recs = {r.spec.params["role"]: r for r in results.select(seed=seed)}
    if any(recs[k].status != "done" for k in ("phi1", "phi2", "phi3")):
        return None
    w = {k: window_means(*recs[k].series("loss"), window=s.window) for k in recs}
    steps, l2 = w["phi2"]
    l1 = np.interp(steps, *w["phi1"], left=np.nan, right=np.nan)
    s3, v3 = w["phi3"]
    l3 = np.where(steps <= s.t_k, l1, np.interp(steps, s3, v3, left=np.nan, right=np.nan))
    return steps, l1, l2, l3


def report(results, out: Path, s: Scale) -> str:
    from . import stats
    from .plots import save_figure

    seeds = sorted(results.values("seed"))
    per_seed = []
    for seed in seeds:
        c = _curves(results, seed, s)
        if c is None:
            continue
        steps, l1, l2, l3 = c
        at_tk = steps == s.t_k
        g0 = float(stats.gap(l1[at_tk], l2[at_tk])[0]) if at_tk.any() else float("nan")
        per_seed.append(dict(
            seed=seed, curves=c, transition=stats.transition_step(steps, l3, l2, s.t_k, s.eps),
            placebo=stats.transition_step(steps, l1, l2, s.t_k, s.eps), g0=g0, trivial=bool(g0 < s.eps),
            rate=stats.contraction_rate(steps, l3, l2, s.t_k)))
    n = len(per_seed)
    if n == 0:
        return "No seed has all three runs finished.\n"
    table = stats.transition_table([p["transition"] for p in per_seed], s.t_k, s.T, [p["trivial"] for p in per_seed])
    placebo = stats.transition_table([p["placebo"] for p in per_seed], s.t_k, s.T)
    rates = np.array([p["rate"][0] for p in per_seed])
    r2 = np.array([p["rate"][1] for p in per_seed])
    lines = [f"Seeds with all three runs finished: {n}. Transition = first logged step >= t_k = {s.t_k} with "
             f"|L3 - L2| / L2 < {s.eps:.0%}; no transition counts as T = {s.T}. Percentages of all seeds, "
             "with 95% Wilson intervals.", ""]
    cols = list(table.as_row())
    lines += ["| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines.append("| **ours: Phi3 vs Phi2** | " + " | ".join(str(v) for v in table.as_row().values()) + " |")
    lines.append("| placebo: Phi1 vs Phi2 | " + " | ".join(str(v) for v in placebo.as_row().values()) + " |")
    lines += ["", "Paper (Table 2, T = 1000):", "", "| model / data | Trans.% | Median | Min | Max |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {a} | {b} | {c} | {d} |" for m, a, b, c, d in PAPER]
    finite = rates[np.isfinite(rates)]
    rate_text = (f"median {np.median(finite):.3g} per step (range {finite.min():.3g} .. {finite.max():.3g}), "
                 f"median R^2 {np.nanmedian(r2):.2f}, over {finite.size} seeds" if finite.size else "not fitted (too few points)")
    lines += ["", f"- Trivial transitions (already within {s.eps:.0%} at t_k, which say nothing about contraction): "
              f"{table.trivial} of {n}.",
              f"- Gap at t_k, |L1 - L2| / L2: median {np.nanmedian([p['g0'] for p in per_seed]):.2%}.",
              f"- Contraction rate r of ln|L3 - L2| = a - r (t - t_k) after t_k: {rate_text}."]
    verdicts = _verdicts(table, placebo, finite, n)
    lines += ["", "### Verdicts", ""] + [v.markdown() for v in verdicts]
    save_figure(out / "skiplr_curves.png", _plot_curves, per_seed[:4], s)
    save_figure(out / "skiplr_transitions.png", _plot_hist, per_seed, s)
    lines += ["", "![curves](skiplr_curves.png) ![transitions](skiplr_transitions.png)"]
    return "\n".join(lines) + "\n"


def _verdicts(table, placebo, rates: np.ndarray, n: int):
    from .stats import Verdict, wilson

    k = table.transitioned
    lo, hi = wilson(k, n)
    nontrivial = k - table.trivial
    stat = f"{k}/{n} seeds = {k / n:.0%} [{lo:.0%}, {hi:.0%}] ({nontrivial} non-trivial)"
    if hi < 0.95:
        v1 = Verdict("Phi3 transitions onto Phi2 in (nearly) every seed (paper: 98-100% for T5, GPT2, Gemma)", False,
                     stat, "the interval lies below 95%")
    elif nontrivial == 0:
        v1 = Verdict("Phi3 transitions onto Phi2 in (nearly) every seed", None, stat,
                     "every transition is trivial: the curves were within eps at t_k already")
    else:
        v1 = Verdict("Phi3 transitions onto Phi2 in (nearly) every seed", lo >= 0.8 or None, stat,
                     "" if lo >= 0.8 else f"too few seeds to exclude a rate below 80% ({n} seeds)")
    plo, phi = wilson(placebo.transitioned, n)
    v2 = Verdict("the switch, not chance, closes the gap: Phi3 transitions more often than the placebo Phi1-vs-Phi2",
                 (lo > phi) if (lo > phi or hi < plo) else None,
                 f"Phi3 {k / n:.0%} [{lo:.0%}, {hi:.0%}] vs placebo {placebo.transitioned / n:.0%} [{plo:.0%}, {phi:.0%}]",
                 "" if (lo > phi or hi < plo) else "the intervals overlap")
    if rates.size >= 2:
        from .stats import bootstrap_ci

        est, rlo, rhi = bootstrap_ci(lambda x: float(np.median(x)), rates, n_boot=2000)
        v3 = Verdict("the gap contracts exponentially after t_k (r > 0, Theorem 1)", True if rlo > 0 else (False if rhi < 0 else None),
                     f"median r = {est:.3g} [{rlo:.3g}, {rhi:.3g}] per step, {rates.size} seeds")
    else:
        v3 = Verdict("the gap contracts exponentially after t_k (r > 0, Theorem 1)", None, f"{rates.size} fitted seed(s)",
                     "too few seeds with a fit")
    return [v1, v2, v3]


def _plot_curves(fig, per_seed, s: Scale):
    axes = fig.subplots(1, max(1, len(per_seed)), squeeze=False)[0]
    for ax, p in zip(axes, per_seed):
        steps, l1, l2, l3 = p["curves"]
        ax.plot(steps, l1, label=f"Phi1 (eta {fmt(s.eta1)})", lw=1)
        ax.plot(steps, l2, label=f"Phi2 (eta {fmt(s.eta2)})", lw=1)
        ax.plot(steps, l3, label="Phi3 (switch)", lw=1, ls="--")
        ax.axvline(s.t_k, color="grey", lw=0.5)
        if p["transition"] is not None:
            ax.axvline(p["transition"], color="k", lw=0.8, ls=":")
        ax.set_title(f"seed {p['seed']}")
        ax.set_xlabel("step")
    axes[0].set_ylabel(f"{s.window}-step mean training loss")
    axes[0].legend(fontsize=7)


def _plot_hist(fig, per_seed, s: Scale):
    ax = fig.subplots()
    steps = [p["transition"] if p["transition"] is not None else s.T for p in per_seed]
    ax.hist(steps, bins=np.arange(s.t_k, s.T + 2 * s.window, max(s.window, (s.T - s.t_k) // 40)))
    ax.set_xlabel(f"transition step (no transition = {s.T})")
    ax.set_ylabel("seeds")
