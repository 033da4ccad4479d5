"""Plot a run's training and validation loss (and LR) from its metrics.jsonl.

    python -m pretrain.plot RUN_DIR [--out loss.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .rundir import read_metrics


def _ema(values: list[float], beta: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected as Adam's moments are: ``m_t / (1 - beta^t)``.

    Without the correction the average starts at the first value and lags the curve by ~1/(1-beta)
    steps while the loss falls fastest; with it, early points weigh the values seen so far evenly.
    """
    out, avg = [], 0.0
    for t, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**t))
    return out


def plot_run(run_dir: str | Path, out: str | Path | None = None, baseline: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no records")
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    val = [(s, v) for s, v in val if v is not None]  # a non-finite value is written as null
    records = [r for r in records if r.get("loss") is not None]  # the step-0 record holds validation only
    if not records:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no training records")
    steps = [r["step"] for r in records]
    loss = [r["loss"] for r in records]

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, lw=0.8, label="train loss")
    ax.plot(steps, _ema(loss), color="tab:blue", lw=1.6, label="train loss (EMA 0.9)")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", color="tab:orange", lw=1.6, ms=4, label="validation loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls="--", lw=1, label=f"unigram baseline ({baseline:.3f})")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"{run_dir.name}: {steps[-1]} steps, {records[-1]['tokens']:,} tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    ax_lr.plot(steps, [r["lr"] for r in records], color="tab:green", lw=1.2)
    ax_lr.set_ylabel("LR (peak group)")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    return save_atomic(fig, Path(out) if out else run_dir / "loss.png")


def save_atomic(fig, out: Path, dpi: int = 110) -> Path:
    """Save ``fig`` as the PNG ``out`` (written to a temporary name, then renamed) and close it."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    tmp.replace(out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    p.add_argument("--out", default=None)
    p.add_argument("--baseline", type=float, default=None, help="draw a horizontal reference loss")
    args = p.parse_args(argv)
    print(plot_run(args.run_dir, args.out, args.baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
