"""Summarise a finished run: where its outputs are, and its loss against a unigram baseline.

    python -m pretrain.report RUN_DIR

The unigram baseline is the cross-entropy of the validation tokens under the
train split's token frequencies (add-1/2 smoothing): the loss of a model that
ignores context. A trained LM must land clearly below it.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .rundir import RunDir


def unigram_baseline(data_dir: str | Path) -> float:
    """Cross-entropy (nats/token) of the val split under the train split's unigram distribution."""
    import numpy as np

    from data_prep import token_counts

    train = np.asarray(token_counts(data_dir, "train"), dtype=np.float64)
    val = np.asarray(token_counts(data_dir, "val"), dtype=np.float64)
    size = max(len(train), len(val))
    train = np.pad(train, (0, size - len(train)))
    val = np.pad(val, (0, size - len(val)))
    p = (train + 0.5) / (train.sum() + 0.5 * size)
    return float(-(val * np.log(p)).sum() / val.sum())


def report(run_dir: str | Path) -> dict:
    run = RunDir(run_dir)
    run_dir = run.path
    cfg = run.config_dict
    records = run.metrics()
    vals = [r for r in records if "val_loss" in r]
    baseline = unigram_baseline(cfg["data"]["path"])
    from .plot import plot_run

    png = plot_run(run_dir, baseline=baseline)
    ckpt_dir = run.checkpoints().root
    final = vals[-1]["val_loss"] if vals else float("nan")
    out = {
        "steps": records[-1]["step"],
        "tokens": records[-1]["tokens"],
        "final_train_loss": records[-1]["loss"],
        "final_val_loss": final,
        "unigram_val_loss": baseline,
        "ratio": final / baseline,
        "plot": str(png),
    }
    print(f"run directory    {run_dir}")
    print(f"  config         {run_dir / 'config.yaml'}  (DeepSpeed: {run_dir / 'ds_config.json'})")
    print(f"  metrics        {run_dir / 'metrics.jsonl'}  ({sum(1 for r in records if 'loss' in r)} updates)")
    print(f"  tensorboard    {run_dir / 'tensorboard'}")
    print(f"  checkpoints    {ckpt_dir}  (latest: {(ckpt_dir / 'latest').read_text().strip() if (ckpt_dir / 'latest').exists() else 'none'})")
    print(f"  loss curve     {png}")
    print(f"trained {out['steps']} steps, {out['tokens']:,} tokens")
    hw = run.hardware()
    if hw:
        out["precision"] = hw.get("precision")
        print(f"precision {hw.get('precision')} ({hw.get('precision_reason')}); "
              f"{hw.get('threads_per_rank')} thread(s) per rank ({hw.get('threads_reason')})")
    mfus = [r["mfu"] for r in records if "mfu" in r]
    if mfus:
        import statistics

        out["mfu"] = statistics.median(mfus[-20:])
        print(f"MFU {out['mfu']:.1%} (median of the last {min(20, len(mfus))} steps; against "
              f"{hw.get('peak_tflops_per_rank', float('nan')):.3g} TFLOP/s per rank: {hw.get('peak_source')})"
              if hw else f"MFU {out['mfu']:.1%}")
    print(
        f"final validation loss {final:.4f} nats/token (ppl {math.exp(final):.1f}) vs unigram baseline "
        f"{baseline:.4f} (ppl {math.exp(baseline):.1f}): ratio {out['ratio']:.3f}"
    )
    print(f"view the curves: tensorboard --logdir {run_dir / 'tensorboard'}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    report(args.run_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
