"""Forecast (issue 14): fit a schedule-aware loss law on two runs, predict the other schedules, train the optimum.

1. Fit the Multi-Power Law (``pretrain.forecast``) on a constant-LR run (the d2z study's Constant arm) and one
   cooldown branch (the wsd study's linear cooldown), both at the tuned peak LR and seed 0.
2. Predict the held-out schedules of the d2z and wsd studies at the same peak LR and seed: the final training loss
   (mean over the last 5% of updates), against what the runs measured.
3. Report the error of each, the median absolute error, and whether the ranking of D2Z, 10x, WSD and Constant
   is preserved (Spearman).
4. Search the registered schedule families for the lowest predicted final loss at the 20-TPP budget, train it,
   and compare it with Linear-D2Z.

Runs the d2z or wsd study already finished (``runs/studies/*/runs/<hash>``) are reused, not retrained.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from . import d2z, wsd
from .study import RunSpec, Study

TAIL = 0.05  # the final loss: mean training loss over the last 5% of updates


def _borrow(study: Study, prefix: str, labels: Sequence[str]) -> list[RunSpec]:
    """Runs of another study (and the runs they branch from), relabelled ``prefix:label``: same overrides, same names."""
    out, seen = [], set()

    def add(label: str) -> None:
        if label in seen:
            return
        spec = study.spec(label)
        if spec.parent is not None:
            add(spec.parent)
        seen.add(label)
        out.append(dataclasses.replace(spec, label=f"{prefix}:{label}",
                                       parent=f"{prefix}:{spec.parent}" if spec.parent else None,
                                       params={**spec.params, "source": prefix}))

    for label in labels:
        add(label)
    return out


def build(scale: str, seeds: Optional[int] = None, out: Optional[Path] = None, full_grid: bool = False,
          overrides: Sequence[str] = ()) -> Study:
    if scale == "full":
        raise ValueError("the forecast study has no full scale: fit a law on your own runs with python -m pretrain.forecast")
    dz = d2z.build(scale, seeds=1, overrides=overrides)
    ws = wsd.build(scale, seeds=1, overrides=overrides)
    lr = d2z.SCALES[scale].base_lr
    tpp = max(d2z.SCALES[scale].tpps)
    d_labels = [r.label for r in dz.runs if r.params["lr"] == lr and r.params["tpp"] == tpp and r.params["seed"] == 0]
    w_labels = [r.label for r in ws.runs if r.params["role"] != "main" and r.params["tpp"] != "wsm"]
    runs = _borrow(dz, "d2z", d_labels) + _borrow(ws, "wsd", w_labels)
    fit_labels = (f"d2z:Constant/tpp{tpp:g}/lr{lr:.3g}/seed0", f"wsd:seed0/cooldown-linear/tpp{tpp:g}")
    study = Study("forecast", dz.config, runs, report=lambda results, out_dir: report(results, out_dir, fit_labels),
                  notes=[f"the law is fit on {fit_labels[0]} and {fit_labels[1]} only; every other run is held out"],
                  dynamic=True)
    law = _fit_if_ready(study, out, fit_labels) if out is not None else None
    if law is not None:
        from pretrain.forecast import FAMILIES, optimize_schedule, schedule_override

        base = study.spec(f"d2z:Linear-D2Z/tpp{tpp:g}/lr{lr:.3g}/seed0")
        cfg, steps, warmup = _budget(study, base)
        sched, predicted = min((optimize_schedule(law, lr, steps, warmup, family=f, alpha=cfg.dual_alpha())
                                for f in FAMILIES), key=lambda x: x[1])
        over = tuple(o for o in base.overrides if not o.startswith("schedule.")) + (schedule_override(sched),)
        runs.append(RunSpec("optimized", over, {"schedule": "optimized", "source": "forecast", "tpp": tpp, "lr": lr,
                                                "seed": 0, "predicted": predicted}))
        study = dataclasses.replace(study, runs=runs)
    return study


def _budget(study: Study, spec: RunSpec):
    from .estimate import offline_config

    cfg, _ = offline_config(study.config, spec.overrides)
    return cfg, cfg.train.max_steps, cfg.schedule.warmup_for(cfg.train.max_steps)


def _fit_if_ready(study: Study, out: Path, fit_labels):
    """The law fit on the two runs, once both have finished (cached in OUT/law.json)."""
    from pretrain.forecast import FittedLaw, fit_law, read_run

    from .runner import RESULT, find_run_dir

    dirs = [find_run_dir(Path(out), study.key(study.spec(label))) for label in fit_labels]
    if not all((d / RESULT).is_file() for d in dirs):
        return None
    path = Path(out) / "law.json"
    if path.is_file():
        return FittedLaw.load(path)
    law = fit_law([read_run(d) for d in dirs], "mpl")
    Path(out).mkdir(parents=True, exist_ok=True)
    law.save(path)
    return law


def _tail_mean(values: np.ndarray) -> float:
    n = max(1, int(round(TAIL * len(values))))
    return float(np.mean(values[-n:]))


def report(results, out: Path, fit_labels) -> str:
    from pretrain.forecast import FittedLaw, read_run

    from . import stats
    from .plots import save_figure

    path = out / "law.json"
    if not path.is_file():
        return "The two fit runs have not finished: no law yet.\n"
    law = FittedLaw.load(path)
    lines = [f"Multi-Power Law fit on `{fit_labels[0]}` and `{fit_labels[1]}` (`law.json`):", "",
             "    " + ", ".join(f"{k} = {v:.4g}" for k, v in law.params.items()), ""]
    if law.warnings:
        lines += [f"- fit warning: {w}" for w in law.warnings] + [""]
    rows, curves = [], []
    for rec in results.records.values():
        if rec.status != "done" or rec.spec.label in fit_labels or rec.spec.params.get("role") == "main":
            continue
        curve = read_run(rec.run_dir)
        pred = law.predict(curve.lrs, curve.steps)
        actual, predicted = _tail_mean(curve.losses), _tail_mean(pred)
        rows.append((rec.spec.label, rec.spec.params, actual, predicted))
        curves.append((rec.spec.label, curve, pred))
    if not rows:
        return "\n".join(lines + ["No held-out run has finished."]) + "\n"
    held = [r for r in rows if r[0] != "optimized"]
    errors = np.array([(p - a) / a for _, _, a, p in held])
    lines += ["| held-out run | actual final loss | predicted | error |", "|---|---|---|---|"]
    lines += [f"| {label} | {a:.4f} | {p:.4f} | {(p - a) / a:+.2%} |" for label, _, a, p in rows]
    med = float(np.median(np.abs(errors)))
    lines += ["", f"Median absolute error over {len(held)} held-out runs: {med:.2%} (target <= 0.5%): "
              + ("met." if med <= 0.005 else "**not met**."), ""]
    ranked = [r for r in held if r[0].startswith("d2z:")]
    verdicts = [stats.Verdict("the law forecasts held-out final losses within 0.5% (median absolute error)",
                              med <= 0.005, f"{med:.2%} over {len(held)} runs, one seed")]
    if len(ranked) >= 3:
        rho = stats.spearman([a for *_, a, _ in ranked], [p for *_, p in ranked])
        order = lambda i: " < ".join(r[1]["schedule"] for r in sorted(ranked, key=lambda r: r[i]))
        lines += [f"Ranking at the fit's budget and peak LR: actual {order(2)}; predicted {order(3)}; "
                  f"Spearman {rho:.2f} (target >= 0.8).", ""]
        verdicts.append(stats.Verdict("the predicted ranking of the schedules matches the actual one", rho >= 0.8,
                                      f"Spearman {rho:.2f} over {len(ranked)} schedules, one seed"))
    opt = next((r for r in rows if r[0] == "optimized"), None)
    d2z_row = next((r for r in ranked if r[1]["schedule"] == "Linear-D2Z"), None)
    if opt is not None and d2z_row is not None:
        gain = (d2z_row[2] - opt[2]) / d2z_row[2]
        sched = results["optimized"].spec.overrides[-1]
        lines += [f"Optimized schedule `{sched}`: predicted {opt[3]:.4f}, actual {opt[2]:.4f}, against Linear-D2Z "
                  f"{d2z_row[2]:.4f} actual: {'better' if gain > 0 else 'worse'} by {abs(gain):.2%} (one seed).", ""]
        verdicts.append(stats.Verdict("the optimized schedule beats Linear-D2Z in training", gain > 0,
                                      f"{gain:+.2%} final training loss, one seed",
                                      "" if gain > 0 else "the law's optimum did not hold up when trained"))
    elif opt is None:
        lines += ["The optimized schedule has not been trained yet (rerun the study).", ""]
    lines += ["### Verdicts", ""] + [v.markdown() for v in verdicts]
    save_figure(out / "forecast_curves.png", _plot, curves[:8])
    lines += ["", "![actual and predicted training loss](forecast_curves.png)"]
    (out / "forecast.json").write_text(json.dumps([{"run": l, "actual": a, "predicted": p} for l, _, a, p in rows], indent=1))
    return "\n".join(lines) + "\n"


def _plot(fig, curves):
    from .stats import window_means

    ax = fig.subplots()
    for label, curve, pred in curves:
        steps, loss = window_means(np.asarray(curve.steps) + 1, curve.losses, window=max(1, len(curve.losses) // 100))
        line, = ax.plot(steps, loss, lw=0.8, label=label)
        ax.plot(np.asarray(curve.steps) + 1, pred, lw=1, ls="--", color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (solid) and forecast (dashed)")
    ax.legend(fontsize=5)
    if not math.isfinite(ax.get_ylim()[0]):
        ax.set_ylim(auto=True)
