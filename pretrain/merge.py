"""Checkpoint merging (WSM: warmup-stable-merge): average a run's checkpoints' weights into one checkpoint.

    python -m pretrain.merge RUN_DIR --last 4 [--weights uniform|ema:0.9|linear] [--out DIR]
    python -m pretrain.merge RUN_DIR --steps 600 800 1000

The merged checkpoint is ``OUT/step_<newest step>/`` (default OUT: ``RUN_DIR/merged-<how>``):
``model.safetensors`` (fp32 weights), the newest source's ``config.yaml`` and per-rank trainer
state (step, tokens, data position), then a manifest and a ``COMPLETE`` marker that records
the sources and their weights. Like any checkpoint it can be evaluated
(``python -m pretrain.evaluate``), exported (``python -m pretrain.export RUN_DIR
--checkpoint-dir OUT``) and branched from (``checkpoint.branch_from``: the merged weights with
a fresh optimizer state, since a merge has no single one; the step, tokens and data position
of the newest source continue).

Weights, over the n chosen checkpoints oldest first (i = 0..n-1), normalised to sum to 1:
``uniform`` 1; ``linear`` i + 1; ``ema:D`` D^(n-1-i) (the newest weighs most).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

from .checkpoint import MARKER, WEIGHTS, CheckpointDir, CheckpointError, atomic_write_text, commit, step_of, tag_for


def merge_weights(method: str, n: int) -> list[float]:
    """The normalised weight of each of ``n`` checkpoints, oldest first."""
    if n < 1:
        raise ValueError("nothing to merge")
    if method == "uniform":
        raw = [1.0] * n
    elif method == "linear":
        raw = [float(i + 1) for i in range(n)]
    elif method.startswith("ema:"):
        try:
            decay = float(method.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--weights {method!r}: expected ema:DECAY with a number, e.g. ema:0.9") from None
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"--weights {method!r}: the decay must be in (0, 1]")
        raw = [decay ** (n - 1 - i) for i in range(n)]
    else:
        raise ValueError(f"--weights {method!r}: expected uniform, linear or ema:DECAY")
    total = sum(raw)
    return [w / total for w in raw]


def merge(ckpts: CheckpointDir, tags: Sequence[str], method: str = "uniform", out: Optional[Path] = None,
          verify: bool = True, log=print) -> Path:
    """Write the weighted average of ``tags``' weights as a checkpoint; return its directory."""
    import torch
    from safetensors.torch import save_file

    tags = sorted(tags, key=step_of)
    for tag in tags:
        ckpts.tag_of(tag)  # complete, else a clear error
        if verify:
            ckpts.check(tag)
    weights = merge_weights(method, len(tags))
    total: dict[str, torch.Tensor] = {}
    for tag, w in zip(tags, weights):
        sd = ckpts.fp32_weights(tag)
        log(f"  {ckpts.root / tag}: weight {w:.4f}")
        for k, v in sd.items():
            v = v.detach().to(torch.float64)
            total[k] = total[k] + w * v if k in total else w * v
    merged = {k: v.to(torch.float32).contiguous() for k, v in total.items()}

    newest = ckpts.path(tags[-1])
    out = Path(out) if out else ckpts.root.parent / f"merged-{len(tags)}-{method.replace(':', '')}"
    final = out / tag_for(step_of(tags[-1]))
    tmp = out / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(merged, str(tmp / WEIGHTS))
    for f in ["config.yaml", *sorted(p.name for p in newest.glob("trainer_state_rank*.json"))]:
        shutil.copy2(newest / f, tmp / f)
    src = ckpts.marker(tags[-1])
    marker = {k: src[k] for k in ("step", "tokens", "world_size", "config_hash", "version") if k in src}
    marker["merged"] = {"method": method, "sources": [str(ckpts.path(t)) for t in tags], "weights": weights}
    commit(tmp, marker)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(out / "latest", final.name + "\n")
    return final


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.merge", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory written by pretrain.py")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--steps", type=int, nargs="+", metavar="STEP", help="the steps of the checkpoints to merge")
    which.add_argument("--last", type=int, metavar="N", help="the newest N complete checkpoints")
    p.add_argument("--weights", default="uniform", help="uniform | linear | ema:DECAY (default uniform)")
    p.add_argument("--checkpoint-dir", help="the run's checkpoints, if not where its config says")
    p.add_argument("--out", help="where the merged checkpoint goes (default RUN_DIR/merged-<N>-<weights>)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the sources")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .config_loader import ConfigError
    from .rundir import RunDir, RunDirError

    args = parse_args(argv)
    try:
        ckpts = RunDir(args.run_dir).checkpoints(args.checkpoint_dir)
        complete = ckpts.complete_tags()
        if args.last is not None:
            if not 1 <= args.last <= len(complete):
                raise CheckpointError(f"--last {args.last}: {ckpts.root} has {len(complete)} complete checkpoints")
            tags = complete[-args.last:]
        else:
            tags = [tag_for(s) for s in args.steps]
        merge_weights(args.weights, len(tags))  # a bad --weights before any work
        print(f"merging {len(tags)} checkpoints of {ckpts.root} ({args.weights}):")
        out = merge(ckpts, tags, args.weights, Path(args.out) if args.out else None, verify=not args.no_verify)
    except (RunDirError, ConfigError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3 if isinstance(e, CheckpointError) else 2
    marker = json.loads((out / MARKER).read_text())
    print(f"wrote {out} (step {marker['step']}); evaluate: python -m pretrain.evaluate {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
