"""SkipLR (paper 000, section 5, Table 2): does a run switched from eta1 to eta2 at t_k contract onto the eta2 run?

Default variant ``pretrained`` (as the paper ran it: fine-tuning a pretrained model on new data): a cpu-s base
pretrained with AdamW Linear-D2Z at ~20 TPP on the corpus's docstrings, then per seed Phi1 (eta1), Phi2 (eta2) and
Phi3 (eta1 until t_k, then eta2) from its weights on the prose docs; eta2 from a probe, a 1-seed pilot and its gate
first (:mod:`experiments.skiplr_plan`). Variant ``scratch``: issue 13's from-scratch study with T long enough for its
measured contraction rate to cross. Plain SGD (no momentum, no weight decay, clip 1.0, no warmup), 10-step mean
training losses, transition = first logged step >= t_k with |L3 - L2| / L2 < eps, a seed that never transitions
counts as T. Statistics, nulls and tests (a)-(e): :mod:`experiments.skiplr_analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .skiplr_plan import SCRATCH_MEASURED, Variant, stages, variant
from .study import RunSpec, Study, fmt

# Table 2 of the paper (protocols.md section 1): Trans.%, <=25/50/75%, median, min, max.
PAPER = [
    ("T5 base / News Commentary", 1000, "98", "1", "41", "93", "525", "250", "1000"),
    ("RoBERTa Large / XGLUE NER", 1000, "80", "7", "67", "77", "410", "210", "1000"),
    ("GPT2 / Wikitext", 1000, "100", "100", "100", "100", "200", "200", "200"),
    ("GPT2 1e-4->1e-3 / Wikitext", 1000, "100", "100", "100", "100", "200", "200", "210"),
    ("Gemma 2B / Wikitext", 1000, "100", "0", "4", "43", "780", "420", "950"),
]
DEFAULT_VARIANT = "pretrained"


def build(scale: str, seeds: int | None = None, out: Path | None = None, full_grid: bool = False,
          overrides: Sequence[str] = (), variant_name: str | None = None) -> Study:
    v = variant(variant_name or DEFAULT_VARIANT, scale)
    lookup = _lookup(v, Path(out)) if out is not None else (lambda spec, runs: None)
    plan = stages(v, lookup, seeds=seeds, overrides=overrides)
    notes = [f"variant {v.name}: SGD at constant LR, t_k = {v.t_k}, T = {v.T}, batch {v.batch}, eps = {v.eps:.0%} on "
             f"{v.window}-step mean training losses"]
    if v.pretrained:
        notes.append(f"base: cpu-s, AdamW Linear-D2Z, {v.base_tpp:g} TPP on source {plan.runs[0].overrides[0]}; "
                     f"fine-tuning on the other source from its weights (checkpoint.init_from), dropout {v.dropout}")
        notes.append("the study corpus must be tokenized per source (data_prep tokenize --per-source) for data.mix")
    else:
        notes.append(f"T = {v.T}: t_k + 1.5 x ln(g(t_k)/eps)/r at the r = {SCRATCH_MEASURED['rate']} and g(t_k) = "
                     f"{SCRATCH_MEASURED['g0']:.1%} measured by {SCRATCH_MEASURED['source']}")
    notes += plan.notes
    study = Study("skiplr", v.config, plan.runs, report=lambda results, out_dir: report(results, out_dir, v),
                  notes=notes, dynamic=True,
                  projected={"expected": [_priced(r, v) for r in plan.projected]} if plan.projected else {})
    return study


def _priced(spec: RunSpec, v: Variant) -> RunSpec:
    """A projected run as the dry run prices it: a branch (whose parent is projected too) as a root run of the
    steps it trains itself."""
    import dataclasses

    if spec.parent is None:
        return spec
    steps = [o for o in spec.overrides if o.startswith("train.max_steps=")]
    return dataclasses.replace(spec, label=spec.label + " (priced)", parent=None, branch_step=None,
                               overrides=tuple(o for o in spec.overrides if o not in steps)
                               + (f"train.max_steps={v.T - spec.branch_step}",))


def _lookup(v: Variant, out: Path):
    """Outcome of a run from OUT: (diverged, logged steps, 10-step means) once finished, else None."""
    from .runner import RunRecord, find_run_dir
    from .stats import window_means

    keys: dict[str, str] = {}

    def get(spec: RunSpec, runs: list) -> tuple | None:
        st = Study("skiplr", v.config, [r for r in runs if r.label != spec.label] + [spec], report=lambda *a: "")
        st._keys.update(keys)
        key = st.key(spec)
        keys.update(st._keys)
        rec = RunRecord(spec, key, find_run_dir(out, key)).load()
        if not rec.finished:
            return None
        steps, means = window_means(*rec.series("loss"), window=v.window) if rec.series("loss")[0] else ([], [])
        return rec.status == "diverged", list(steps), list(means)

    return get


# -- report -------------------------------------------------------------------------------------------

def _outcome(rec, v: Variant):
    from .stats import window_means

    if rec is None or rec.status not in ("done", "diverged"):
        return None
    s, x = rec.series("loss")
    steps, means = window_means(s, x, window=v.window) if s else ([], [])
    return rec.status == "diverged", list(steps), list(means)


def seed_results(results, v: Variant, pair: str, seeds: Sequence[int], prefix: str = ""):
    """Analysed seeds of a pair (only seeds whose three runs are done)."""
    from .skiplr_analysis import analyze_seed
    from .skiplr_plan import _seed_curves

    out = []
    for s in seeds:
        labels = [f"{pair}/{prefix}seed{s}/phi{i}" for i in (1, 2, 3)]
        if prefix:
            labels[0] = f"{pair}/seed{s}/phi1"
        got = [_outcome(results.records.get(label), v) for label in labels]
        if any(g is None or g[0] for g in got):
            continue
        out.append(analyze_seed(_seed_curves(s, got, v), v.t_k, v.eps))
    return out


def report(results, out: Path, v: Variant) -> str:
    from . import skiplr_analysis as sa
    from .plots import save_figure
    from .stats import bootstrap_ci

    lines: list[str] = []
    if v.pretrained:
        base = results.records.get("base")
        lines += [f"Base: `base` {base.status if base else 'missing'}, final training loss "
                  f"{getattr(base, 'final_train_loss', float('nan')):.4f} (cpu-s, AdamW Linear-D2Z, {v.base_tpp:g} TPP).", ""]
        probe = sorted((r for r in results.records.values() if r.spec.params.get("role") == "probe"),
                       key=lambda r: r.spec.params["lr"])
        lines += [f"Probe ({v.probe_steps} SGD steps from the base on the fine-tuning source):", "",
                  "| LR | stable | 10-step mean loss |", "|---|---|---|"]
        for rec in probe:
            got = _outcome(rec, v)
            ok, why = sa.probe_stable(got[1], got[2], got[0]) if got else (False, rec.status)
            lines.append(f"| {fmt(rec.spec.params['lr'])} | {'yes' if ok else 'no'} | {why} |")
        lines.append("")
    pairs = [p for p in results.values("pair") if p]
    for pair in pairs:
        lines += [f"## Pair {pair}", ""]
        seeds = sorted({r.spec.params["seed"] for r in results.select(pair=pair, role="phi1")})
        res = seed_results(results, v, pair, seeds)
        pilot = next((r for r in res if r.seed == 0), None)
        if pilot is not None:
            check = sa.pilot_check(pilot.curves, v.t_k, v.T, v.eps)
            lines += [f"Pilot (seed 0): {check.text(v.T)}. Gate: " + ("passed." if check.go else
                      "**refused** the further seeds: " + "; ".join(check.reasons) + "."), ""]
            fig = f"skiplr_pilot_{pair.replace('->', '_to_')}.png"
            save_figure(out / fig, _plot_curves, [pilot], v)
            lines += [f"![pilot]({fig})", ""]
        if len(res) < 2:
            lines += [f"{len(res)} seed(s) analysed: no table.", ""]
            continue
        t = sa.tables(res, v.t_k, v.T)
        cols = list(t.phi3.as_row())
        lines += [f"Transition = first logged step >= t_k = {v.t_k} with |L3 - L2| / L2 < {v.eps:.0%}; none counts as "
                  f"T = {v.T}; percentages of all seeds with 95% Wilson intervals.", "",
                  "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, row in (("**ours: Phi3 vs Phi2**", t.phi3), ("placebo: Phi1 vs Phi2", t.placebo),
                          ("delay null: Phi2(t - t_k) vs Phi2", t.delayed)):
            lines.append(f"| {name} | " + " | ".join(str(x) for x in row.as_row().values()) + " |")
        for m, _T, *vals in PAPER:
            lines.append(f"| paper: {m} | 100 | " + " | ".join(vals) + " | |")
        rates = np.array([r.rate for r in res if np.isfinite(r.rate)])
        nulls = np.array([r.rate_null for r in res if np.isfinite(r.rate_null)])
        if rates.size >= 2:
            est, lo, hi = bootstrap_ci(lambda x: float(np.median(x)), rates, n_boot=2000)
            rate_text = f"median r = {est:.3g} [{lo:.3g}, {hi:.3g}] per step (seed bootstrap, {rates.size} seeds)"
        else:
            rate_text = f"r fitted in {rates.size} seed(s)"
        g0 = float(np.nanmedian([r.g0 for r in res]))
        lines += ["", f"- Gap at t_k: median g(t_k) = {g0:.2%}; trivial seeds {t.phi3.trivial} of {t.phi3.n}.",
                  f"- Test (a): {rate_text}; the delayed copy's gap closes at median r = "
                  f"{np.median(nulls) if nulls.size else float('nan'):.3g}."]
        cross = sa.crossing_step(float(np.median(rates)), g0, v.t_k, v.eps) if rates.size else math.inf
        if math.isfinite(cross):
            lines.append(f"- Where the median seed crosses: t_k + ln(g(t_k)/eps) / r = {v.t_k} + ln({g0:.2%} / "
                         f"{v.eps:.0%}) / {np.median(rates):.3g} = step {cross:.0f}, "
                         + (f"after T = {v.T}: most seeds cannot transition within T at this rate."
                            if cross > v.T else f"within T = {v.T}."))
        lines.append("")
        verdicts = [sa.transition_verdict(t), sa.placebo_test(t), sa.delay_null_test(res)[0],
                    sa.slope_test(res, v.t_k, v.eps)[0]]
        half_seeds = sorted({r.spec.params["seed"] for r in results.select(pair=pair, stage="halving")})
        if half_seeds:
            half = seed_results(results, v, pair, half_seeds, prefix="half/")
            full = {r.seed: r.rate for r in res}
            verdicts.append(sa.halving_test(full, {r.seed: r.rate for r in half})[0])
        lines += ["### Verdicts", ""] + [x.markdown() for x in verdicts] + [""]
        fig = f"skiplr_curves_{pair.replace('->', '_to_')}.png"
        save_figure(out / fig, _plot_curves, res[:4], v)
        lines += [f"![curves]({fig})", ""]
    if v.pretrained:
        lines += [f"From-scratch variant beside it: `python -m experiments skiplr --variant scratch` "
                  f"(committed: experiments/results/skiplr-scratch-cpu, r = {SCRATCH_MEASURED['rate']}, g(t_k) = "
                  f"{SCRATCH_MEASURED['g0']:.1%}: no crossing within T = 1000).", ""]
    return "\n".join(lines) + "\n"


def _plot_curves(fig, per_seed, v: Variant):
    axes = fig.subplots(1, max(1, len(per_seed)), squeeze=False)[0]
    for ax, p in zip(axes, per_seed, strict=True):
        c = p.curves
        ax.plot(c.steps, c.l1, label="Phi1 (eta1)", lw=1)
        ax.plot(c.steps, c.l2, label="Phi2 (eta2)", lw=1)
        ax.plot(c.steps, c.l3, label="Phi3 (switch)", lw=1, ls="--")
        ax.plot(c.steps, c.delayed_l2(v.t_k), label="Phi2 delayed by t_k", lw=0.8, ls=":")
        ax.axvline(v.t_k, color="grey", lw=0.5)
        if p.transition is not None:
            ax.axvline(p.transition, color="k", lw=0.8, ls=":")
        ax.set_title(f"seed {p.seed}")
        ax.set_xlabel("step")
    axes[0].set_ylabel(f"{v.window}-step mean training loss")
    axes[0].legend(fontsize=7)
