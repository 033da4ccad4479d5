"""Inspect a run's LR schedule and its dual coefficients, without training.

    python -m pretrain.schedules --config configs/demo_cpu.yaml [KEY=VALUE ...]
        [--compare linear "linear:end_ratio=0.1" "wsd:decay=0.2,shape=1-sqrt" ...] [--out schedules.png]

Prints, for the run's schedule and each schedule compared with it (same run
length, warmup, peak LR and weight decay): the weight left on the initial
weights c_{T,0}, and how many most recent updates carry 50% and 90% of the
weight on updates; plots the LR curves and the coefficients c_{T,i} (PNG).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from ..config_loader import ConfigError, Sources, from_dict
from ..plot import save_atomic
from . import ScheduleConfig
from .dual import coefficients, smoothing, summarize

DEFAULT_COMPARE = ["linear", "linear:end_ratio=0.1", "cosine:end_ratio=0.1", "wsd:decay=0.2", "constant", "rational"]


def parse_spec(spec: str, base: ScheduleConfig) -> ScheduleConfig:
    """``name[:key=value,key=value]`` (values are YAML) -> a ScheduleConfig sharing ``base``'s warmup."""
    name, _, rest = spec.partition(":")
    params = {}
    for item in filter(None, _split_top(rest)):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError([f"--compare {spec!r}: expected name:key=value,key=value"])
        params[key.strip()] = yaml.safe_load(value)
    data = {
        "name": name.strip(),
        "warmup_steps": base.warmup_steps,
        "warmup_fraction": base.warmup_fraction,
        "end_ratio": params.pop("end_ratio", None),
        "params": params,
    }
    return from_dict(ScheduleConfig, data, Sources(f"--compare {spec!r}"), prefix="schedule")


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets (so ``milestones=[10,20]`` stays whole)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def label(cfg: ScheduleConfig) -> str:
    parts = [f"{k}={v}" for k, v in cfg.kwargs().items()]
    return cfg.name + (f"({', '.join(parts)})" if parts else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pretrain.schedules", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="run YAML")
    p.add_argument("--compare", nargs="*", default=None, help=f"schedules to set beside it (default: {' '.join(DEFAULT_COMPARE)})")
    p.add_argument("--out", default="schedules.png", help="PNG to write")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = p.parse_args(argv)

    from ..run_config import load_run_config

    try:
        cfg = load_run_config(args.config, args.overrides)
        T = cfg.train.max_steps
        specs = DEFAULT_COMPARE if args.compare is None else args.compare
        scheds = [cfg.schedule] + [parse_spec(s, cfg.schedule) for s in specs]
        for s in scheds:
            bad = s.check_run(T)
            if bad:
                raise ConfigError([f"schedule {label(s)}: {k}: expected {e}" for k, e in bad])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    lr, alpha_peak = cfg.optimizer.lr, cfg.dual_alpha()
    print(f"{T} updates, peak LR {lr:g}, alpha = LR x weight decay of hidden matrices = {alpha_peak:.4g}")
    print(f"{'schedule':<44} {'final LR':>10} {'c_T,0':>10} {'50% window':>11} {'90% window':>11}")
    rows = []
    for i, s in enumerate(scheds):
        mults = s.build(T, lr=lr, alpha=alpha_peak).multipliers()
        alpha = smoothing(mults, alpha_peak)
        summary = summarize(alpha)
        name = label(s) + (" [run]" if i == 0 else "")
        rows.append((name, mults, alpha))
        print(f"{name:<44} {lr * mults[-1]:>10.3g} {summary.c0:>10.3g} {summary.window50:>11,} {summary.window90:>11,}")
    png = plot(rows, lr, Path(args.out), title=f"{cfg.name}: {T} updates, alpha_peak {alpha_peak:.3g}")
    print(f"wrote {png}")
    return 0


def plot(rows, lr: float, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_c) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, mults, alpha in rows:
        steps = range(1, len(mults) + 1)
        ax_lr.plot(steps, [lr * m for m in mults], lw=2.2 if name.endswith("[run]") else 1.2, label=name)
        c0, c = coefficients(alpha)
        ax_c.plot(steps, c, lw=2.2 if name.endswith("[run]") else 1.2, label=f"{name}: c_T,0={c0:.2g}")
    ax_lr.set(xlabel="update t", ylabel="learning rate", title="LR schedule")
    ax_c.set(xlabel="update i", ylabel="c_{T,i}", yscale="log", title="dual coefficients at the last update")
    for ax in (ax_lr, ax_c):
        ax.grid(alpha=0.3)
    ax_c.legend(fontsize=7)
    ax_lr.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_atomic(fig, out)


if __name__ == "__main__":
    raise SystemExit(main())

