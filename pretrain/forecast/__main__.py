"""Predict a schedule's loss before paying for it: fit a loss law on runs, forecast schedules, search one.

    python -m pretrain.forecast fit RUN_DIR... [--law mpl|annealing] [--metric auto|val_loss|loss] [--window 20]
        [--out law.json] [--plot fit.png]
    python -m pretrain.forecast predict law.json [law2.json ...] --config RUN.yaml [--compare SPEC ...] [--out forecast.png] [KEY=VALUE ...]
    python -m pretrain.forecast optimize law.json --config RUN.yaml [--family wsd|linear|cosine|steps|all]
        [--out best_schedule.yaml] [--plot optimized.png] [KEY=VALUE ...]

SPEC is the syntax of ``python -m pretrain.schedules --compare``: ``name[:key=value,...]``; each
spec keeps the run's budget, warmup and peak LR. The laws are in pretrain/forecast/laws.py.

Recommended use: fit on three runs at one peak LR and budget, as the MPL authors do: a constant
run, a cosine decay to 10% and a two-stage step decay (x0.3 at 50%), evaluated every <= 25 updates
on a fixed validation set (``--metric auto`` then fits validation loss; without such evaluations it
fits training loss averaged over fixed windows of ``--window`` updates). Fit both laws (``--law
mpl`` and ``--law annealing``) and pass both files to ``predict``: each figure is labelled with
the law it comes from.

Outputs follow the output rule (:mod:`pretrain.outputs`): never a file the command reads (a run's
metrics.jsonl/config.yaml, the law file, the run YAML), written atomically, and an existing one is
replaced only with ``--overwrite`` and only when it is this command's kind of file. A law file that
is not JSON, lacks keys or holds non-finite values is refused naming the file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..cli_numbers import integer, number
from ..config_loader import ConfigError
from ..outputs import OutputError, check_disjoint, check_replaceable
from ..plot import save_atomic
from ..schedules.__main__ import label, parse_spec
from .fit import FORMAT, LAM_GRID, FittedLaw, ForecastError, fit_law, read_run
from .laws import get_law
from .optimize import FAMILIES, lrs_for_config, optimize_schedule, schedule_override, schedule_yaml

if TYPE_CHECKING:
    from ..run_config import RunConfig

PLOT_POINTS = 600  # steps at which a curve is drawn (and the last one)

RUN_INPUTS = ("metrics.jsonl", "config.yaml", "lineage.json")  # what fit reads of a run directory


def _is_law(path: Path) -> bool:
    """a law file written by `python -m pretrain.forecast fit`"""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _is_png(path: Path) -> bool:
    """a PNG image"""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89PNG\r\n\x1a\n"
    except OSError:
        return False


def _is_schedule(path: Path) -> bool:
    """a schedule section written by `python -m pretrain.forecast optimize` (a YAML holding only schedule:)"""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and set(data) == {"schedule"}


def check_outputs(outputs: dict[str, tuple[str | None, object]], inputs: dict[str, Path], overwrite: bool) -> None:
    """The output rule (:mod:`pretrain.outputs`) for every file a subcommand writes, before any work:
    ``outputs`` is ``{flag: (path or None, what an earlier one looks like)}``; ``inputs`` ``{what: path}``."""
    given = {flag: Path(path) for flag, (path, _) in outputs.items() if path}
    seen: dict[Path, str] = {}
    for flag, path in given.items():
        real = path.resolve()
        if real in seen:
            raise OutputError(f"{flag} {path} is also {seen[real]}: each output needs its own file")
        seen[real] = flag
        check_disjoint(path, inputs, flag)
        if path.is_dir():
            raise OutputError(f"{flag} {path} is a directory: expected a file name")
        if path.exists() or path.is_symlink():
            check_replaceable(path, overwrite=overwrite, owned_by=outputs[flag][1], flag=flag)


def _load_law(path: str) -> FittedLaw:
    """The law file, checked beyond its parameters (what the forecasts read of it): ForecastError naming the file."""
    import math

    try:
        law = FittedLaw.load(path)
    except ForecastError:
        raise
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as e:
        raise ForecastError(f"{path}: not a law file written by `python -m pretrain.forecast fit` "
                            f"({type(e).__name__}: {e})") from None

    def finite(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if not finite(law.lr_ref) or law.lr_ref <= 0:
        raise ForecastError(f"{path}: lr_ref: expected a finite LR > 0, got {law.lr_ref!r}")
    bad = [k for k, v in law.options.items() if not finite(v)]
    if bad:
        raise ForecastError(f"{path}: options.{bad[0]}: expected a finite number, got {law.options[bad[0]]!r}")
    if not isinstance(law.diagnostics, dict) or not isinstance(law.diagnostics.get("warnings", []), list):
        raise ForecastError(f"{path}: diagnostics: expected a mapping with a list of warnings")
    if not isinstance(law.sources, list):
        raise ForecastError(f"{path}: sources: expected a list of the fit runs")
    for i, src in enumerate(law.sources):
        for key, ok in (("peak_lr", lambda v: finite(v) and v > 0), ("max_steps", lambda v: isinstance(v, int) and v >= 1)):
            if not isinstance(src, dict) or not ok(src.get(key)):
                got = src.get(key) if isinstance(src, dict) else src
                raise ForecastError(f"{path}: sources[{i}].{key}: expected a finite number > 0, got {got!r}")
    return law


def _fit(args) -> int:
    inputs = {f"run {d}'s {name}": Path(d) / name for d in args.run_dirs for name in RUN_INPUTS}
    check_outputs({"--out": (args.out, _is_law), "--plot": (args.plot, _is_png)}, inputs, args.overwrite)
    from .fit import choose_metric

    metric = choose_metric(args.run_dirs) if args.metric == "auto" else args.metric
    if args.metric == "auto":
        print(f"metric: {metric} (auto: " + ("every run has frequent evaluations on its fixed validation set)"
              if metric == "val_loss" else f"not every run has >= 10 evaluations after warmup: training loss "
              f"averaged over windows of {args.window} updates)"))
    runs = [read_run(d, metric, args.window) for d in args.run_dirs]
    law = fit_law(runs, args.law, skip_fraction=args.skip_fraction, max_points=args.max_points, starts=args.starts,
                  seed=args.seed, huber_delta=args.huber_delta, lam=args.lam)
    spec, d = get_law(law.law), law.diagnostics
    print(f"fitted {law.law} to {len(runs)} run(s), {d['points']} points (parameters in absolute-LR units):")
    for name in spec.params:
        rse = d["rel_se"].get(name)
        print(f"  {name:<6} = {law.params[name]:<12.6g} " + (f"(±{rse:.1%})" if rse is not None else "(undetermined)"))
    if law.law == "annealing":
        print(f"  lam    = {law.options['lam']:g} (momentum of the annealing area" +
              (", chosen by the fit)" if args.lam is None else ")"))
    print(f"in-sample: RMSE {d['rmse']:.4g}, mean relative error {d['mean_rel_err']:.3%}, max {d['max_rel_err']:.3%}")
    for r, src in zip(d["runs"], law.sources, strict=True):
        print(f"  {r['name']}: {src['max_steps']} updates, peak LR {src['peak_lr']:.3g}, {r['points']} points, "
              f"RMSE {r['rmse']:.4g}, mean relative error {r['mean_rel_err']:.3%}")
    if metric == "loss" and args.window < 20:
        law.diagnostics["warnings"].append(f"training loss averaged over windows of {args.window} updates (< 20): "
                                           "per-batch scatter dominates the fit")
    for w in law.warnings:
        print(f"warning: {w}")
    print(f"wrote {law.save(args.out)}")
    if args.plot:
        rows = [(run.name, run.lrs, np.arange(1, run.lrs.size + 1), law.predict(run.lrs), run.steps - (run.window - 1) / 2,
                 run.losses)
                for run in runs]
        print(f"wrote {plot(rows, Path(args.plot), f'{law.law} fit to {len(runs)} run(s)')}")
    return 0


def _load(args) -> tuple[list[FittedLaw], RunConfig]:
    from ..run_config import load_run_config

    inputs = {**{f"law file {p}": Path(p) for p in args.laws}, "run config": Path(args.config)}
    if args.command == "predict":
        check_outputs({"--out": (args.out, _is_png)}, inputs, args.overwrite)
    else:
        check_outputs({"--out": (args.out, _is_schedule), "--plot": (args.plot, _is_png)}, inputs, args.overwrite)
    laws = [_load_law(p) for p in args.laws]
    cfg = load_run_config(args.config, args.overrides)
    return laws, cfg


def _curve(law: FittedLaw, lrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steps = np.unique(np.linspace(1, lrs.size, min(PLOT_POINTS, lrs.size)).round().astype(int))
    return steps, law.predict(lrs, steps)


def _notes(law: FittedLaw, peak_lr: float, T: int) -> None:
    """Say where a forecast leaves what the law was fit on."""
    if law.warnings:
        print("note: the law's fit warned: " + "; ".join(law.warnings))
    if not law.sources:
        return
    peaks = [s["peak_lr"] for s in law.sources]
    steps = [s["max_steps"] for s in law.sources]
    if not min(peaks) / 1.5 <= peak_lr <= max(peaks) * 1.5:
        print(f"note: peak LR {peak_lr:.3g} is outside the fit runs' ({min(peaks):.3g}..{max(peaks):.3g}): an extrapolation")
    if T > 2 * max(steps):
        print(f"note: {T} updates is more than twice the longest fit run ({max(steps)}): an extrapolation")


def _predict(args) -> int:
    laws, cfg = _load(args)
    T, peak = cfg.train.max_steps, cfg.optimizer.lr
    scheds = [(label(cfg.schedule) + " [run]", cfg.schedule)]
    scheds += [(label(s), s) for s in (parse_spec(spec, cfg.schedule) for spec in args.compare or [])]
    lr_rows = []
    for name, s in scheds:
        try:
            lr_rows.append((name, s, lrs_for_config(cfg, s)))
        except ForecastError as e:
            raise ForecastError(f"{name}: {e}") from None
    print(f"{cfg.name}: {T} updates, peak LR {peak:g}, warmup {cfg.schedule.warmup_for(T)}")
    tags = [f"{law.law} ({path})" for law, path in zip(laws, args.laws, strict=True)]
    rows = []
    for law, tag in zip(laws, tags, strict=True):
        print(f"law {tag}:")
        _notes(law, peak, T)
    print(f"{'schedule':<52} {'final LR':>10} {'law':<11} {'predicted final loss':>21} {'vs run':>9}")
    for law in laws:
        run_final = None
        for name, _, lrs in lr_rows:
            steps, pred = _curve(law, lrs)
            run_final = pred[-1] if run_final is None else run_final
            diff = f"{pred[-1] - run_final:+.4f}" if not name.endswith("[run]") else ""
            print(f"{name:<52} {lrs[-1]:>10.3g} {law.law:<11} {pred[-1]:>21.4f} {diff:>9}")
            rows.append((f"{name} [{law.law}]" if len(laws) > 1 else name, lrs, steps, pred, None, None))
    names = " and ".join(law.law for law in laws)
    print(f"wrote {plot(rows, Path(args.out), f'{cfg.name}: {names} forecast, {T} updates, peak LR {peak:g}')}")
    return 0


def _optimize(args) -> int:
    laws, cfg = _load(args)
    law = laws[0]
    T, peak = cfg.train.max_steps, cfg.optimizer.lr
    run_lrs = lrs_for_config(cfg)
    W = cfg.schedule.warmup_for(T)
    print(f"{cfg.name}: {T} updates, peak LR {peak:g}, warmup {W}; law {law.law} from {args.laws[0]}")
    _notes(law, peak, T)
    report: list = []
    best: tuple | None = None
    for fam in FAMILIES if args.family == "all" else [args.family]:
        found = optimize_schedule(law, peak, T, W, fam, alpha=cfg.dual_alpha(), seed=args.seed, report=report)
        if best is None or found[1] < best[1]:
            best = found
    assert best is not None
    run_final = law.final(run_lrs)
    print(f"{'family':<14} {'best schedule':<62} {'predicted final loss':>21}")
    print(f"{'[run]':<14} {label(cfg.schedule):<62} {run_final:>21.4f}")
    for fam, s, final, _ in report:
        print(f"{fam:<14} {label(s):<62} {final:>21.4f}")
    sched, final = best
    edges = next(r[3] for r in report if r[1] is sched)
    if edges:
        print(f"note: the best schedule has {', '.join(edges)} at the end of its searched range: the law may be "
              "extrapolating (check that its fit runs cover such schedules) or the optimum lies outside the family")
    comment = (f"python -m pretrain.forecast optimize {args.laws[0]} --config {args.config}: the lowest predicted final "
               f"loss, {final:.4f}\n(the run's own schedule: {run_final:.4f}) at {T} updates, peak LR {peak:g}. "
               "Replace the run YAML's schedule section with this one.")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(schedule_yaml(sched, comment))
    tmp.replace(out)
    print(f"best: {label(sched)}, predicted final loss {final:.4f} ({final - run_final:+.4f} vs the run's schedule)")
    print(f"wrote {out}; to train with it:\n  python pretrain.py --config {args.config} '{schedule_override(sched)}'")
    if args.plot:
        rows = []
        for name, s in [(label(cfg.schedule) + " [run]", None), (label(sched) + " [best]", sched)]:
            lrs = lrs_for_config(cfg, s)
            rows.append((name, lrs, *_curve(law, lrs), None, None))
        print(f"wrote {plot(rows, Path(args.plot), f'{cfg.name}: {law.law}-optimized schedule, {T} updates')}")
    return 0


def plot(rows, out: Path, title: str) -> Path:
    """Two panels: LR per update, and loss (predicted lines, observed dots) per update."""
    import matplotlib

    matplotlib.use("Agg")
    from textwrap import fill

    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(13, 4.8))
    lows, highs = [], []
    for i, (name, lrs, steps, pred, obs_steps, obs) in enumerate(rows):
        color = f"C{i % 10}"
        bold = name.endswith("[run]") or name.endswith("[best]")
        ax_lr.plot(np.arange(1, lrs.size + 1), lrs, color=color, lw=2.2 if bold else 1.2, label=fill(name, 48))
        ax_loss.plot(steps, pred, color=color, lw=2.2 if bold else 1.2, label=fill(f"{name}: {pred[-1]:.4f}", 48))
        if obs is not None:
            ax_loss.scatter(obs_steps, obs, s=3, color=color, alpha=0.35)
        after = steps >= max(1, int(0.3 * lrs.size))  # the y range: past the steep start
        lows.append(pred[after].min())
        highs.append(pred[after].max())
    if lows:
        pad = 0.05 * (max(highs) - min(lows) + 1e-9)
        ax_loss.set_ylim(min(lows) - pad, max(highs) + pad)
    ax_lr.set(xlabel="update t", ylabel="learning rate", title="LR schedule")
    observed = any(r[5] is not None for r in rows)
    ax_loss.set(xlabel="updates t", ylabel="loss",
                title="loss after t updates" + (" (line: law, dots: observed)" if observed else ", predicted"))
    for ax in (ax_lr, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_atomic(fig, out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.forecast", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="fit a law to runs' loss curves")
    f.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    f.add_argument("--law", choices=["mpl", "annealing"], default="mpl")
    f.add_argument("--out", default="law.json", help="the fitted law (JSON)")
    f.add_argument("--metric", choices=["auto", "val_loss", "loss"], default="auto",
                   help="the curve to fit: val_loss (evaluations on the fixed validation set), loss (training loss "
                        "averaged over --window updates), auto (default): val_loss when every run has >= 10 "
                        "evaluations after warmup, else loss")
    f.add_argument("--window", type=integer(1), default=20,
                   help="with training loss: fit means over fixed windows of this many updates (>= 1; default 20), "
                        "ending at each run's last update; recorded in the law file")
    f.add_argument("--skip-fraction", type=number(0, 1, hi_open=True), default=0.1,
                   help="skip this fraction of each run's start (and its warmup), in [0, 1)")
    f.add_argument("--max-points", type=integer(10), default=200, help="at most this many bin medians per run (>= 10)")
    f.add_argument("--starts", type=integer(1), default=8, help="seeded starting points (>= 1)")
    f.add_argument("--seed", type=integer(0), default=0)
    f.add_argument("--huber-delta", type=number(0, lo_open=True), default=1e-3,
                   help="Huber threshold on log-loss residuals (> 0)")
    f.add_argument("--lam", type=number(0, 1, hi_open=True), default=None,
                   help="the annealing law's momentum in [0, 1) (default: chosen by the fit from "
                        f"{', '.join(map(str, LAM_GRID))})")
    f.add_argument("--plot", default=None, help="PNG of the observed and fitted curves")
    f.add_argument("--overwrite", action="store_true", help="replace an earlier law file or plot at --out/--plot")
    for name, helptext in (("predict", "forecast a run config's schedule and others"),
                           ("optimize", "search a family of schedules for the lowest predicted final loss")):
        s = sub.add_parser(name, help=helptext)
        if name == "predict":
            s.add_argument("laws", nargs="+", metavar="LAW", help="law files written by fit (e.g. one per law)")
        else:
            s.add_argument("law", help="law.json written by fit")
        s.add_argument("--config", required=True, help="run YAML (its budget, peak LR, warmup and schedule)")
        s.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
        if name == "predict":
            s.add_argument("--compare", nargs="*", default=None, metavar="SPEC", help="schedules name[:key=value,...]")
            s.add_argument("--out", default="forecast.png", help="PNG to write")
        else:
            s.add_argument("--family", choices=[*FAMILIES, "all"], default="wsd")
            s.add_argument("--seed", type=integer(0), default=0, help="of the search (deterministic for a seed)")
            s.add_argument("--out", default="best_schedule.yaml", help="the best schedule, a run YAML's schedule section")
            s.add_argument("--plot", default=None, help="PNG of the run's and the best schedule")
        s.add_argument("--overwrite", action="store_true", help="replace an earlier output of this command")
    args, rest = p.parse_known_args(argv)
    bad = [r for r in rest if r.startswith("-") or "=" not in r]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)} (overrides are KEY=VALUE)")
    if rest and args.command == "fit":
        p.error(f"fit takes no KEY=VALUE overrides: {' '.join(rest)}")
    if args.command == "predict":  # KEY=VALUE given before --config land among the law files
        args.overrides = [a for a in args.laws if "=" in a] + args.overrides
        args.laws = [a for a in args.laws if "=" not in a]
        if not args.laws:
            p.error("predict: expected at least one law file")
    elif args.command == "optimize":
        args.laws = [args.law]
    if rest:
        args.overrides += rest
    if getattr(args, "compare", None):  # KEY=VALUE after --compare: an override ('=' before any ':'), not a spec
        is_override = [("=" in c and c.index("=") < (c.index(":") if ":" in c else len(c))) for c in args.compare]
        args.overrides += [c for c, o in zip(args.compare, is_override, strict=True) if o]
        args.compare = [c for c, o in zip(args.compare, is_override, strict=True) if not o]
    try:
        return {"fit": _fit, "predict": _predict, "optimize": _optimize}[args.command](args)
    except (ForecastError, ConfigError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
