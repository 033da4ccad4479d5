"""Forecast (issues 14, 22): fit the loss laws as their authors do, score them on whole held-out curves.

1. Fit set, per seed, at one peak LR and budget T (the MPL authors' set, thu-yao-01-luo/MultiPowerLaw
   src/config.py): a constant run, a cosine decay to 10% and a two-stage step decay (x0.3 at 50%).
2. Held out, per seed: Linear-D2Z, Linear-10x, Cosine-D2Z (planned runs of T updates), the cooldown branches of the
   constant fit run (linear and 1-sqrt over the last 20% of T and of T/2: their curves are the constant run's up
   to the branch step, then their own) and a cosine decay to 10% over 2T (twice the fit horizon).
3. Signal: validation loss on the fixed validation set, evaluated every ``eval_interval`` (<= 25) updates in every
   run, the same absolute steps in a branch and its parent (``fit --metric auto`` picks it).
4. Both laws, the Multi-Power Law and the LR-annealing law (Tissue et al.), fit on each seed's fit runs
   (``OUT/laws/{law}-seed{N}.json``), and a trivial baseline (the constant run's curve shifted by the fit runs'
   mean annealing gain) scored the same way: PredE, WorstE, the final-loss error and R² per held-out run, their
   medians, Spearman over the schedules of budget T with a bootstrap interval over the 2 seeds.
5. The optimized schedule: the MPL of seed 0 searched over the registered families at T and the same peak LR,
   trained on both seeds, judged on final validation loss against Linear-D2Z.

The bars (issue 22): median PredE <= 0.3%, median |final-loss error| <= 0.5%, Spearman >= 0.8 over >= 5 held-out
schedules, and the law beats the baseline on PredE. The report says which are met and, when not, where the law errs.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .study import RunSpec, Study, fmt

REPO = Path(__file__).resolve().parent.parent
LAW_NAMES = ("mpl", "annealing")
BARS = {"prede": 0.003, "final": 0.005, "spearman": 0.8}


@dataclass(frozen=True)
class Scale:
    config: Path
    seeds: int
    tpp: float  # the fit runs' budget T, in tokens per parameter
    lr: float = 1.6e-2  # the d2z study's tuned muP base LR
    warmup_fraction: float = 0.1  # of T, the same warmup steps in every run (the 2T run too)
    eval_interval: int = 25
    extra: tuple[str, ...] = ()


SCALES = {
    "cpu": Scale(REPO / "configs/studies/cpu.yaml", seeds=2, tpp=20.0),
    "tiny": Scale(REPO / "configs/studies/cpu.yaml", seeds=2, tpp=0.2, eval_interval=5,
                  extra=("train.global_batch_size=4", "train.micro_batch_size=4")),
}

FIT = ("Constant", "Cosine-10x", "Step-x0.3@50%")
# Five distinct LR sequences of T updates to rank (with the two cooldowns at T): a planned WSD-20% would repeat
# cooldown-linear@T step for step (the same LR sequence, the same loss bit for bit), a tie that ranks nothing.
PLANNED = ("Linear-D2Z", "Linear-10x", "Cosine-D2Z")
SHAPES = ("linear", "1-sqrt")
COOLDOWN = 0.2


def _schedule(name: str, T: int) -> tuple[str, ...]:
    return {
        "Constant": ("schedule.name=constant", "schedule.end_ratio=null"),
        "Cosine-10x": ("schedule.name=cosine", "schedule.end_ratio=0.1"),
        "Step-x0.3@50%": ("schedule.name=step", "schedule.end_ratio=null", f"schedule.params.milestones=[{round(T / 2)}]",
                          "schedule.params.factor=0.3"),
        "Linear-D2Z": ("schedule.name=linear", "schedule.end_ratio=0.0"),
        "Linear-10x": ("schedule.name=linear", "schedule.end_ratio=0.1"),
        "Cosine-D2Z": ("schedule.name=cosine", "schedule.end_ratio=0.0"),
    }[name]


def budget(s: Scale, overrides: Sequence[str] = ()) -> int:
    """T: the updates of the fit runs' budget, from the model's size and the global batch (as the wsd study)."""
    from .estimate import offline_config

    cfg, _ = offline_config(s.config, [*s.extra, "train.max_steps=null", "train.max_tokens=null",
                                       f"train.tokens_per_param={s.tpp}", *overrides])
    return int(cfg.train.max_steps)


def _rank_note(actual: np.ndarray) -> str:
    """Why ranking is hard here: the spread of the actual final losses, and schedules that are the same curve."""
    means = np.nanmean(actual, axis=0)
    if means.size < 2 or not np.isfinite(means).any():
        return ""
    spread = (np.nanmax(means) - np.nanmin(means)) / np.nanmin(means)
    ties = sum(1 for i in range(means.size) for j in range(i + 1, means.size) if means[i] == means[j])
    note = f"the actual final losses span {spread:.2%}"
    if ties:
        note += f"; {ties} pair(s) of schedules end at the same loss bit for bit (the same LR sequence)"
    return note


def fit_label(name: str, seed: int) -> str:
    return f"fit:{name}/seed{seed}"


def build(scale: str, seeds: int | None = None, out: Path | None = None, full_grid: bool = False,
          overrides: Sequence[str] = ()) -> Study:
    if scale not in SCALES:
        raise ValueError(f"the forecast study has scales {', '.join(SCALES)}; at full scale fit the laws on your own "
                         "three runs with python -m pretrain.forecast fit (README)")
    s = SCALES[scale]
    T = budget(s, overrides)
    W = max(1, round(s.warmup_fraction * T))
    if T < 20 or T // 2 <= W + 2:
        raise ValueError(f"forecast: a budget of {T} updates leaves no room for the schedules after a warmup of {W}")
    runs: list[RunSpec] = []
    n_seeds = seeds or s.seeds

    def common(seed: int, steps: int) -> tuple[str, ...]:
        return (*s.extra, f"optimizer.lr={s.lr}", "train.max_tokens=null", "train.tokens_per_param=null",
                f"train.max_steps={steps}", f"train.seed={seed}", f"eval.interval={s.eval_interval}")

    for seed in range(n_seeds):
        for name in FIT:
            runs.append(RunSpec(fit_label(name, seed), (*common(seed, T), *_schedule(name, T), f"schedule.warmup_steps={W}"),
                                {"role": "fit", "schedule": name, "seed": seed, "steps": T, "lr": s.lr}))
        for name in PLANNED:
            runs.append(RunSpec(f"held:{name}/seed{seed}", (*common(seed, T), *_schedule(name, T), f"schedule.warmup_steps={W}"),
                                {"role": "held-out", "schedule": name, "seed": seed, "steps": T, "lr": s.lr}))
        for steps in (T, T // 2):
            for shape in SHAPES:
                name = f"cooldown-{shape}@{steps}"
                runs.append(RunSpec(
                    f"held:{name}/seed{seed}",
                    (*common(seed, steps), "schedule.name=cooldown", "schedule.warmup_steps=0", "schedule.end_ratio=0.0",
                     f"schedule.params.shape={shape}"),
                    {"role": "held-out", "schedule": name, "seed": seed, "steps": steps, "lr": s.lr},
                    parent=fit_label("Constant", seed), branch_step=round((1 - COOLDOWN) * steps)))
        runs.append(RunSpec(f"held:Cosine-10x@2T/seed{seed}",
                            (*common(seed, 2 * T), *_schedule("Cosine-10x", 2 * T), f"schedule.warmup_steps={W}"),
                            {"role": "held-out", "schedule": "Cosine-10x@2T", "seed": seed, "steps": 2 * T, "lr": s.lr}))
    notes = [f"budget T = {T} updates ({fmt(s.tpp)} TPP), warmup {W} updates in every run, peak LR {fmt(s.lr)}, "
             f"validation every {s.eval_interval} updates on the fixed validation set; the laws are fit on "
             f"{', '.join(FIT)} of each seed and every other run is held out",
             "the optimized schedule is added (and trained on every seed) once seed 0's fit runs have finished"]
    study = Study("forecast", s.config, runs, report=lambda results, out_dir: report(results, out_dir, T), notes=notes,
                  dynamic=True)
    law = _fit_if_ready(study, out, 0, "mpl") if out is not None else None
    if law is not None:
        from pretrain.forecast import FAMILIES, optimize_schedule, schedule_override

        cfg, _ = _offline(study, study.spec("held:Linear-D2Z/seed0"))
        sched, predicted = min((optimize_schedule(law, s.lr, T, W, family=f, alpha=cfg.dual_alpha()) for f in FAMILIES),
                               key=lambda x: x[1])
        for seed in range(n_seeds):
            runs.append(RunSpec(f"optimized/seed{seed}", (*common(seed, T), schedule_override(sched)),
                                {"role": "optimized", "schedule": "optimized", "seed": seed, "steps": T, "lr": s.lr,
                                 "predicted": predicted}))
        study = dataclasses.replace(study, runs=runs)
    elif "projected" in getattr(Study, "__dataclass_fields__", {}):  # priced by the dry run before it is known
        proj = [RunSpec(f"optimized/seed{seed}", (*common(seed, T), *_schedule("Linear-D2Z", T), f"schedule.warmup_steps={W}"),
                        {"role": "optimized", "seed": seed, "steps": T}) for seed in range(n_seeds)]
        study = dataclasses.replace(study, projected={"the optimized schedule on every seed": proj})
    return study


def _offline(study: Study, spec: RunSpec):
    from .estimate import offline_config

    return offline_config(study.config, spec.overrides)


def _run_dirs(study: Study, out: Path, seed: int) -> list[Path] | None:
    from .runner import RESULT, find_run_dir

    dirs = [find_run_dir(Path(out), study.key(study.spec(fit_label(name, seed)))) for name in FIT]
    return dirs if all((d / RESULT).is_file() for d in dirs) else None


TRAIN_WINDOW = 20  # updates per training-loss window, when the signal compared is training loss


def law_path(out: Path, law: str, seed: int, metric: str | None = None) -> Path:
    tag = "" if metric is None else f"-{metric}{TRAIN_WINDOW if metric == 'loss' else ''}"
    return Path(out) / "laws" / f"{law}{tag}-seed{seed}.json"


def _fit_if_ready(study: Study, out: Path, seed: int, law: str, metric: str | None = None):
    """The law fit on the seed's three fit runs once they have finished (cached in OUT/laws/LAW-seedN.json), on
    ``metric`` (default: ``fit --metric auto``'s choice; another one is cached as LAW-METRIC-seedN.json)."""
    from pretrain.forecast import FittedLaw, fit_law, read_run
    from pretrain.forecast.fit import choose_metric

    if fit_label(FIT[0], seed) not in {r.label for r in study.runs}:
        return None
    dirs = _run_dirs(study, out, seed)
    if dirs is None:
        return None
    path = law_path(out, law, seed, metric)
    if path.is_file():
        return FittedLaw.load(path, expect_law=law)
    metric = metric or choose_metric(dirs)
    fitted = fit_law([read_run(d, metric, TRAIN_WINDOW) for d in dirs], law, lam=None)
    fitted.save(path)
    return fitted


# -- report -------------------------------------------------------------------------------------------

def _curve(rec, law):
    from pretrain.forecast import read_run

    sig = law.settings.get("signal") or {}
    return read_run(rec.run_dir, sig.get("metric", "val_loss"), int(sig.get("window", 1) or 1))


def report(results, out: Path, T: int) -> str:
    from pretrain.forecast import read_run
    from pretrain.forecast.score import ShiftBaseline, score_runs, spearman_interval

    from .plots import save_figure
    from .report import fmt_loss

    study = results.study
    seeds = sorted(results.values("seed"))
    laws: dict[tuple[str, int], Any] = {}
    for seed in seeds:
        for name in LAW_NAMES:
            law = _fit_if_ready(study, out, seed, name)
            if law is not None:
                laws[(name, seed)] = law
    if not laws:
        return "The fit runs have not finished: no law yet.\n"
    lines: list[str] = []
    for (name, seed), law in sorted(laws.items(), key=lambda kv: (kv[0][1], LAW_NAMES.index(kv[0][0]))):
        sig = law.settings.get("signal", {})
        lines += [f"**{name}**, seed {seed}, fit on {', '.join(FIT)} ({sig.get('metric')}, window {sig.get('window')}; "
                  f"`laws/{name}-seed{seed}.json`): " + ", ".join(f"{k} = {v:.4g}" for k, v in law.params.items())
                  + "".join(f", {k} = {v:g} (chosen by the fit)" for k, v in law.options.items())
                  + f"; in-sample mean relative error {law.diagnostics.get('mean_rel_err', math.nan):.3%}"]
        lines += [f"  - fit warning: {w}" for w in law.warnings]
    lines.append("")

    # score every held-out run of each seed with each law and the baseline
    rows: dict[str, dict[str, Any]] = {}  # label -> {"seed", "schedule", "steps", law -> CurveScore}
    per_predictor: dict[str, tuple[list, list]] = {}
    plot_curves = []
    for seed in seeds:
        held = [r for r in results.select(role="held-out", seed=seed) if r.status == "done"]
        opt = [r for r in results.select(role="optimized", seed=seed) if r.status == "done"]
        for name in LAW_NAMES:
            law = laws.get((name, seed))
            if law is None or not held:
                continue
            curves = [_curve(r, law) for r in held]
            scores, _ = score_runs(law.predict_curve, curves)
            per_predictor.setdefault(name, ([], []))
            per_predictor[name][0].extend(curves)
            per_predictor[name][1].extend(law.predict_curve(c) for c in curves)
            for r, sc in zip(held, scores, strict=True):
                rows.setdefault(r.spec.label, {"seed": seed, **r.spec.params})[name] = sc
            if name == "mpl":
                dirs = _run_dirs(study, out, seed) or []
                sig = law.settings.get("signal", {})
                fit_curves = [read_run(d, sig.get("metric", "val_loss"), int(sig.get("window", 1) or 1)) for d in dirs]
                base = ShiftBaseline.fit(fit_curves)
                bscores, _ = score_runs(base.predict_curve, curves)
                per_predictor.setdefault("baseline", ([], []))
                per_predictor["baseline"][0].extend(curves)
                per_predictor["baseline"][1].extend(base.predict_curve(c) for c in curves)
                for r, sc in zip(held, bscores, strict=True):
                    rows[r.spec.label]["baseline"] = sc
                for r in opt:
                    c = _curve(r, law)
                    rows.setdefault(r.spec.label, {"seed": seed, **r.spec.params})["mpl"] = score_runs(law.predict_curve, [c])[0][0]
                if seed == seeds[0]:
                    plot_curves = [(r.spec.params["schedule"], c, law.predict_curve(c)) for r, c in zip(held, curves, strict=True)]
    if not rows:
        return "\n".join(lines + ["No held-out run has finished."]) + "\n"

    def pct(x: float) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.2%}"

    lines += ["Held-out runs, validation loss after warmup (PredE: mean |relative error| over the curve; WorstE: its "
              "largest; final: the error at the final evaluation; the baseline is the constant run's curve shifted "
              "by the fit runs' mean annealing gain):", "",
              "| run | actual final | MPL PredE | MPL WorstE | MPL final | MPL R² | annealing PredE | annealing final "
              "| baseline PredE | baseline final |", "|---" * 10 + "|"]
    for label, row in rows.items():
        m, a, b = row.get("mpl"), row.get("annealing"), row.get("baseline")
        first = m or a
        lines.append(f"| {label} | {fmt_loss(first.actual_final) if first else 'n/a'} | "
                     + " | ".join([pct(m.prede) if m else "n/a", pct(m.worste) if m else "n/a",
                                   f"{m.final_err:+.2%}" if m else "n/a", f"{m.r2:.3f}" if m else "n/a",
                                   pct(a.prede) if a else "n/a", f"{a.final_err:+.2%}" if a else "n/a",
                                   pct(b.prede) if b else "n/a", f"{b.final_err:+.2%}" if b else "n/a"]) + " |")
    held_rows = {k: v for k, v in rows.items() if v.get("role") == "held-out"}
    summaries = {}
    for name in (*LAW_NAMES, "baseline"):
        sc = [v[name] for v in held_rows.values() if name in v]
        if not sc:
            continue
        from pretrain.forecast.score import pooled_r2, summarize

        curves, preds = per_predictor.get(name, ([], []))
        summaries[name] = summarize(sc, pooled_r2(curves, preds))
    lines += ["", "| predictor | held-out runs | median PredE | median WorstE | largest WorstE | median abs. final error "
              "| R² (all points) |", "|---" * 7 + "|"]
    for name, sm in summaries.items():
        lines.append(f"| {name} | {sm.runs} | {pct(sm.prede)} | {pct(sm.worste)} | {pct(sm.worst_of_all)} | "
                     f"{pct(sm.final_abs_err)} | {sm.r2_pooled:.4f} |")
    lines += ["", "Authors (MPL, 25M-400M): PredE 0.11-0.17%, WorstE 0.41-0.99%, R² >= 0.997.", ""]
    lines += _signal(results, out, seeds, laws) + [""]

    # where the laws err: phase and worst runs
    where: dict[str, str] = {}
    for name in LAW_NAMES:
        sc = [(k, v[name]) for k, v in held_rows.items() if name in v]
        if not sc:
            continue
        st = np.nanmedian([s.stable_prede for _, s in sc])
        de = np.nanmedian([s.decay_prede for _, s in sc])
        worst = sorted(sc, key=lambda kv: -kv[1].prede)[:3]
        where[name] = (f"errs most {'during the decay' if de > st else 'at the peak LR'} (median PredE {pct(float(de))} "
                       f"vs {pct(float(st))}), on " + ", ".join(f"`{k}` (final {s.final_err:+.2%})" for k, s in worst))
        lines.append(f"- {name}: median PredE at the peak LR {pct(float(st))}, during the decay {pct(float(de))}; "
                     "largest PredE: " + ", ".join(f"`{k}` {pct(s.prede)} (final {s.final_err:+.2%})" for k, s in worst))
    lines.append("")

    # ranking of the schedules of budget T, over seeds
    verdicts = []
    rank_scheds = sorted({v["schedule"] for v in held_rows.values() if v.get("steps") == T})
    from . import stats

    for name in LAW_NAMES:
        sm = summaries.get(name)
        if sm is None:
            continue
        act = np.full((len(seeds), len(rank_scheds)), np.nan)
        pre = np.full_like(act, np.nan)
        for v in held_rows.values():
            if v.get("steps") == T and name in v:
                i, j = seeds.index(v["seed"]), rank_scheds.index(v["schedule"])
                act[i, j], pre[i, j] = v[name].actual_final, v[name].predicted_final
        rho, lo, hi, per_seed = spearman_interval(act, pre) if len(rank_scheds) >= 2 else (math.nan,) * 3 + ([],)
        order = lambda m: " < ".join(rank_scheds[j] for j in np.argsort(np.nanmean(m, axis=0)))  # noqa: E731
        lines += [f"{name}: ranking of the {len(rank_scheds)} held-out schedules of {T} updates (mean over "
                  f"{len(seeds)} seed(s)): actual {order(act)}; predicted {order(pre)}; Spearman {rho:.2f} "
                  f"[{lo:.2f}, {hi:.2f}] (bootstrap over seeds and schedules; per seed "
                  + ", ".join(f"{r:.2f}" for r in per_seed) + ")", ""]
        base = summaries.get("baseline")
        tag = "MPL" if name == "mpl" else "the LR-annealing law"
        verdicts.append(stats.Verdict(f"{tag}: median PredE over held-out curves <= 0.3%", sm.prede <= BARS["prede"],
                                      f"{pct(sm.prede)} over {sm.runs} runs, {len(seeds)} seed(s)",
                                      "" if sm.prede <= BARS["prede"] else where.get(name, "")))
        verdicts.append(stats.Verdict(f"{tag}: median final-loss error <= 0.5%", sm.final_abs_err <= BARS["final"],
                                      f"{pct(sm.final_abs_err)} over {sm.runs} runs",
                                      "" if sm.final_abs_err <= BARS["final"] else where.get(name, "")))
        verdicts.append(stats.Verdict(f"{tag}: Spearman >= 0.8 over >= 5 held-out schedules",
                                      None if len(rank_scheds) < 5 or not math.isfinite(rho) else rho >= BARS["spearman"],
                                      f"{rho:.2f} [{lo:.2f}, {hi:.2f}] over {len(rank_scheds)} schedules (a bar on "
                                      "the point estimate; the interval is the seeds' and schedules' bootstrap)",
                                      _rank_note(act)))
        if base is not None:
            # paired over the held-out runs: the baseline's PredE minus the law's, run by run
            diffs = [v["baseline"].prede - v[name].prede for v in held_rows.values() if name in v and "baseline" in v]
            est = stats.paired_estimate(diffs, "baseline PredE - law PredE, per held-out run")
            v = stats.verdict(f"{tag} beats the trivial baseline on PredE", est, ">0", name="ΔPredE",
                              units=f"{est.n} held-out runs ({len(seeds)} seeds)")
            verdicts.append(dataclasses.replace(v, statistic=f"{v.statistic}; median PredE {pct(sm.prede)} vs "
                                                              f"{pct(base.prede)}"))

    # the optimized schedule: final validation loss against Linear-D2Z, per seed
    gaps = []
    for seed in seeds:
        o = [r for r in results.select(role="optimized", seed=seed) if r.status == "done"]
        d = [r for r in results.select(role="held-out", schedule="Linear-D2Z", seed=seed) if r.status == "done"]
        if o and d and math.isfinite(o[0].final_val_loss) and math.isfinite(d[0].final_val_loss):
            gaps.append((seed, (d[0].final_val_loss - o[0].final_val_loss) / d[0].final_val_loss,
                         o[0].final_val_loss, d[0].final_val_loss))
    if gaps:
        sched = next(r for r in results.records.values() if r.spec.params.get("role") == "optimized").spec.overrides[-1]
        mean = float(np.mean([g for _, g, _, _ in gaps]))
        lines += [f"Optimized schedule `{sched}` against Linear-D2Z at the same peak LR, final validation loss: "
                  + "; ".join(f"seed {s}: {o:.4f} vs {d:.4f} ({g:+.2%})" for s, g, o, d in gaps)
                  + f"; mean {mean:+.2%} (> 0: optimized better).", ""]
        est = stats.paired_estimate([g for _, g, _, _ in gaps], "(Linear-D2Z - optimized) / Linear-D2Z final val loss")
        verdicts.append(stats.verdict("the optimized schedule beats Linear-D2Z in validation loss", est, ">0"))
    else:
        lines += ["The optimized schedule has not been trained yet (rerun the study).", ""]
    lines += ["### Verdicts", ""] + [v.markdown() for v in verdicts]
    if plot_curves:
        save_figure(out / "forecast_curves.png", _plot, plot_curves[:10], size=(10, 4.2))
        lines += ["", "![held-out validation loss (solid) and the MPL forecast (dashed), seed 0](forecast_curves.png)"]
    from data_prep.fsutil import atomic_write_bytes

    dump = {label: {k: (v.row() if hasattr(v, "row") else v) for k, v in row.items()} for label, row in rows.items()}
    dump["_summary"] = {k: dataclasses.asdict(v) for k, v in summaries.items()}
    atomic_write_bytes(out / "forecast.json", (json.dumps(dump, indent=1, default=float) + "\n").encode())
    return "\n".join(lines) + "\n"


def _signal(results, out: Path, seeds: list[int], laws: dict) -> list[str]:
    """Which signal the MPL forecasts better from: validation loss, or training loss in windows of TRAIN_WINDOW
    updates (each law scored on the held-out curves of its own signal). ``fit --metric auto``'s default rests on it."""
    from pretrain.forecast import read_run
    from pretrain.forecast.score import score_runs

    val, train = [], []
    for seed in seeds:
        law_v = laws.get(("mpl", seed))
        if law_v is None or law_v.settings.get("signal", {}).get("metric") != "val_loss":
            continue
        law_t = _fit_if_ready(results.study, out, seed, "mpl", "loss")
        held = [r for r in results.select(role="held-out", seed=seed) if r.status == "done"]
        if law_t is None or not held:
            continue
        val += score_runs(law_v.predict_curve, [read_run(r.run_dir, "val_loss") for r in held])[0]
        train += score_runs(law_t.predict_curve, [read_run(r.run_dir, "loss", TRAIN_WINDOW) for r in held])[0]
    if not val:
        return []
    v, t = float(np.median([x.prede for x in val])), float(np.median([x.prede for x in train]))
    fv, ft = float(np.median([abs(x.final_err) for x in val])), float(np.median([abs(x.final_err) for x in train]))
    better = "validation loss" if v <= t else f"training loss in windows of {TRAIN_WINDOW} updates"
    return [f"Signal: the MPL fit on validation loss (every evaluation) forecasts its held-out curves with median PredE "
            f"{v:.2%} (final {fv:.2%}); fit on training loss in windows of {TRAIN_WINDOW} updates, {t:.2%} (final "
            f"{ft:.2%}) on the held-out training curves. Better here: {better}"
            + ("; `fit --metric auto` picks validation loss when every run has >= 10 evaluations after warmup, as "
               "these runs do." if v <= t else "; `fit --metric auto` would pick validation loss: pass "
               "`--metric loss` on data like this.")]


def _plot(fig, curves):
    ax = fig.subplots()
    for label, curve, pred in curves:
        line, = ax.plot(curve.steps, curve.losses, lw=0.9, label=label)
        ax.plot(curve.steps, pred, lw=1, ls="--", color=line.get_color())
    ax.set_xlabel("update")
    ax.set_ylabel("validation loss (solid), MPL forecast (dashed)")
    lo = min(float(np.min(c.losses[c.steps > 0.2 * c.lrs.size])) for _, c, _ in curves)
    hi = max(float(np.max(c.losses[c.steps > 0.2 * c.lrs.size])) for _, c, _ in curves)
    ax.set_ylim(lo - 0.02 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    ax.legend(fontsize=6)
