"""Summarise a finished run: where its outputs are, and its loss against a unigram baseline.

    python -m pretrain.report RUN_DIR

The unigram baseline is the cross-entropy of the validation tokens under the
train split's token frequencies (add-1/2 smoothing): the loss of a model that
ignores context. A trained LM must land clearly below it.

A directory that is no run to report on is refused with exit code 2 and what it is: no
``config.yaml`` (not a run directory), a config but no training record in ``metrics.jsonl``
(never trained). A run that is incomplete (in progress or stopped before ``train.max_steps``),
has no complete checkpoint, no validation loss or no readable data for the baseline gets a
report that starts with ``partial report of RUN_DIR:`` and the reasons (exit code 0).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from .rundir import METRICS, RunDir, RunDirError


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


class ReportError(ValueError):
    """The directory is no run to report on (the message says what it is instead)."""


def _number(record: dict, key: str) -> float | None:
    v = record.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def run_state(run_dir: str | Path) -> tuple[RunDir, list[dict], list[str]]:
    """``(run, training records, why the report is partial)``; ReportError when there is nothing to report:
    not a run directory, a config that does not load, or a run that never trained."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ReportError(f"{path}: no such directory")
    try:
        run = RunDir(path)
        cfg = run.config_dict
    except (RunDirError, yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path} is not a run directory: {e}") from None
    metrics = path / METRICS
    if not metrics.is_file():
        raise ReportError(f"{path} has a config.yaml but no {METRICS}: the run never trained (nothing to report)")
    try:
        records = [r for r in run.metrics() if isinstance(r, dict)]
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{metrics} cannot be read: {e}") from None
    trained = [r for r in records if isinstance(r.get("step"), int) and _number(r, "loss") is not None
               and isinstance(r.get("tokens"), int)]
    if not trained:
        raise ReportError(f"{metrics} holds no training record (step, tokens, loss): the run never completed an "
                          "optimizer update (nothing to report)")
    partial = []
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    max_steps = train.get("max_steps")
    last = trained[-1]["step"]
    if isinstance(max_steps, int) and last < max_steps:
        partial.append(f"the run is incomplete: {last} of {max_steps} updates in {metrics} (still training, or "
                       "stopped; rerun pretrain.py with the same config to resume)")
    try:
        ckpts = run.checkpoints()
        if not ckpts.complete_tags():
            partial.append(f"no complete checkpoint in {ckpts.root}: nothing to evaluate, export or resume from")
    except Exception as e:  # noqa: BLE001  (a config that names no loadable checkpoint section)
        partial.append(f"its checkpoints cannot be located ({e})")
    return run, trained, partial


def report(run_dir: str | Path) -> dict:
    """Print the summary of ``run_dir``; its numbers as a dict (``partial``: why it is a partial report).

    ReportError, before anything is written, for a directory that is not a run or a run that never trained.
    """
    run, records, partial = run_state(run_dir)
    run_dir = run.path
    cfg = run.config_dict
    all_records = [r for r in run.metrics() if isinstance(r, dict)]
    vals = [r for r in all_records if _number(r, "val_loss") is not None]
    data_dir = (cfg.get("data") or {}).get("path") if isinstance(cfg.get("data"), dict) else None
    try:
        baseline: float | None = unigram_baseline(data_dir) if isinstance(data_dir, str) else None
    except Exception as e:  # noqa: BLE001  (the data directory moved, was deleted, or is remote)
        partial.append(f"no unigram baseline: the run's data {data_dir} cannot be read ({type(e).__name__}: {e})")
        baseline = None
    if not vals:
        partial.append(f"no validation loss in {run_dir / METRICS}")
    from .plot import plot_run

    png = plot_run(run_dir, baseline=baseline)
    ckpt_dir = None
    try:
        ckpt_dir = run.checkpoints().root
    except Exception:  # noqa: BLE001  (said in partial)
        pass
    final = vals[-1]["val_loss"] if vals else float("nan")
    out = {
        "steps": records[-1]["step"],
        "tokens": records[-1]["tokens"],
        "final_train_loss": records[-1]["loss"],
        "final_val_loss": final,
        "unigram_val_loss": baseline if baseline is not None else float("nan"),
        "ratio": final / baseline if baseline else float("nan"),
        "plot": str(png),
        "partial": list(partial),
    }
    if partial:
        print(f"partial report of {run_dir}:")
        for why in partial:
            print(f"  - {why}")
    print(f"run directory    {run_dir}")
    print(f"  config         {run_dir / 'config.yaml'}  (DeepSpeed: {run_dir / 'ds_config.json'})")
    print(f"  metrics        {run_dir / METRICS}  ({len(records)} updates)")
    print(f"  tensorboard    {run_dir / 'tensorboard'}")
    if ckpt_dir is not None:
        latest = ckpt_dir / "latest"
        print(f"  checkpoints    {ckpt_dir}  (latest: {latest.read_text().strip() if latest.is_file() else 'none'})")
    print(f"  loss curve     {png}")
    print(f"trained {out['steps']} steps, {out['tokens']:,} tokens")
    hw = run.hardware()
    if hw:
        out["precision"] = hw.get("precision")
        print(f"precision {hw.get('precision')} ({hw.get('precision_reason')}); "
              f"{hw.get('threads_per_rank')} thread(s) per rank ({hw.get('threads_reason')})")
    mfus = [r["mfu"] for r in records if _number(r, "mfu") is not None]
    if mfus:
        import statistics

        out["mfu"] = statistics.median(mfus[-20:])
        print(f"MFU {out['mfu']:.1%} (median of the last {min(20, len(mfus))} steps; against "
              f"{hw.get('peak_tflops_per_rank', float('nan')):.3g} TFLOP/s per rank: {hw.get('peak_source')})"
              if hw else f"MFU {out['mfu']:.1%}")
    if vals and baseline is not None:
        print(f"final validation loss {final:.4f} nats/token (ppl {math.exp(min(final, 50.0)):.1f}) vs unigram "
              f"baseline {baseline:.4f} (ppl {math.exp(min(baseline, 50.0)):.1f}): ratio {out['ratio']:.3f}")
    elif vals:
        print(f"final validation loss {final:.4f} nats/token (ppl {math.exp(min(final, 50.0)):.1f}); no baseline")
    print(f"view the curves: tensorboard --logdir {run_dir / 'tensorboard'}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    try:
        report(args.run_dir)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
