"""Checkpoint merging (WSM: warmup-stable-merge): average a run's checkpoints' weights into one checkpoint.

    python -m pretrain.merge RUN_DIR --last 4 [--weights uniform|linear|ema:0.9|decay:linear|decay:1-sqrt]
                             [--out DIR] [--overwrite]
    python -m pretrain.merge RUN_DIR --steps 600 800 1000

The merged checkpoint is ``OUT/step_<newest step>/`` (default OUT: ``RUN_DIR/merged-<how>``):
``model.safetensors`` (fp32 weights), the newest source's ``config.yaml`` and per-rank trainer
state (step, tokens, data position), then a manifest and a ``COMPLETE`` marker that records
the sources and their weights. Like any checkpoint it can be evaluated
(``python -m pretrain.evaluate``), exported (``python -m pretrain.export RUN_DIR
--checkpoint-dir OUT``) and branched from (``checkpoint.branch_from``: the merged weights with
a fresh optimizer state, since a merge has no single one; the step, tokens and data position
of the newest source continue).

OUT follows the output rule (:mod:`pretrain.outputs`): it may not be, contain or lie inside the run's
checkpoint directory or a source checkpoint; an existing OUT must be a merge output (only merged
checkpoints and their ``latest`` pointer), and its checkpoint of the same step is replaced only with
``--overwrite``, atomically. A checkpoint named twice (``--steps 200 200``) is refused.

Weights, over the n chosen checkpoints oldest first (i = 0..n-1), normalised to sum to 1:
``uniform`` 1; ``linear`` i + 1; ``ema:D`` D^(n-1-i) (the newest weighs most);
``decay:SHAPE`` the weights the WSM duality gives a decay of that shape (``linear``, ``cosine``, ``1-sqrt``: the
cooldown shapes of :mod:`pretrain.schedules`). A merge sum_j c_j theta_j of checkpoints theta_0..theta_k equals
training on with the LR of the update chunk between checkpoints i-1 and i multiplied by w_i = sum_{j>=i} c_j
(w_0 = 1): the shape f (f(0) = 1, f(1) = 0) fixes w_i = f(i/(k+1)) for i = 0..k and w_{k+1} = 0, so
c_j = w_j - w_{j+1}. ``decay:linear`` gives uniform weights 1/(k+1) (a linear decay to 1/(k+1)); ``decay:1-sqrt``
c_j = sqrt((j+1)/(k+1)) - sqrt(j/(k+1)) for j < k, c_k = 1 - sqrt(k/(k+1)) (:func:`duality_weights`, :func:`implied_multipliers`).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .checkpoint import (
    MARKER,
    POINTER,
    TAG_RE,
    WEIGHTS,
    CheckpointDir,
    CheckpointError,
    atomic_write_text,
    commit,
    step_of,
    tag_for,
)
from .cli_numbers import integer
from .outputs import check_disjoint, check_replaceable, staged_dir


def decay_shapes() -> tuple[str, ...]:
    """The decay shapes of :mod:`pretrain.schedules` (a cooldown's ``shape``): linear, cosine, 1-sqrt."""
    from .schedules import DECAY_SHAPES

    return DECAY_SHAPES


def decay_shape(shape: str):
    """The decay ``f`` on [0, 1] of a cooldown shape (f(0) = 1, f(1) = 0); ValueError naming the known shapes."""
    from .schedules import decay_ratio

    shapes = decay_shapes()
    if shape not in shapes:
        raise ValueError(f"decay shape {shape!r}: expected one of {', '.join(shapes)} (pretrain.schedules' cooldown "
                         "shapes)")
    return lambda x: decay_ratio(0.0, x, shape)


def duality_weights(shape: str, n: int) -> list[float]:
    """The merge weights c_0..c_{n-1} (oldest checkpoint first, sum 1) that the WSM duality gives a decay ``shape``
    over ``n`` checkpoints: w_i = f(i/n) for i < n, w_n = 0, c_j = w_j - w_{j+1}, so that the LR multipliers the
    merge implies (:func:`implied_multipliers`) are f(0), f(1/n), ..., f((n-1)/n)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"duality_weights: n = {n!r}: expected a number of checkpoints >= 1")
    f = decay_shape(shape)
    w = [f(i / n) for i in range(n)] + [0.0]
    c = [w[j] - w[j + 1] for j in range(n)]
    if not all(math.isfinite(x) and x >= -1e-12 for x in c):  # a shape that rises somewhere
        raise ValueError(f"decay shape {shape!r} over {n} checkpoints gives negative merge weights {c}: the duality "
                         "needs a non-increasing decay")
    c = [max(0.0, x) for x in c]
    total = sum(c)
    return [x / total for x in c]


def implied_multipliers(c: Sequence[float]) -> list[float]:
    """The LR multiplier w_i = sum_{j>=i} c_j that a merge with weights ``c`` (oldest first) implies for the update
    chunk ending at checkpoint i (w_0 = sum c = 1 for normalised weights); ValueError for a weight that is negative
    or not finite."""
    if not c or not all(math.isfinite(x) and x >= 0 for x in c):
        raise ValueError(f"implied_multipliers: weights {list(c)}: expected one or more finite numbers >= 0")
    out, tail = [], 0.0
    for x in reversed(list(c)):
        tail += x
        out.append(tail)
    return out[::-1]


def merge_weights(method: str, n: int) -> list[float]:
    """The normalised weight of each of ``n`` checkpoints, oldest first."""
    if n < 1:
        raise ValueError("nothing to merge")
    if method.startswith("decay:"):
        try:
            return duality_weights(method.split(":", 1)[1], n)
        except ValueError as e:
            raise ValueError(f"--weights {method!r}: {e}") from None
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
        raise ValueError(f"--weights {method!r}: expected uniform, linear, ema:DECAY or decay:SHAPE "
                         f"(SHAPE one of {', '.join(decay_shapes())})")
    total = sum(raw)
    return [w / total for w in raw]


def is_merged_checkpoint(path: Path) -> bool:
    """a checkpoint written by pretrain.merge (a step_N directory whose COMPLETE marker records its sources)"""
    try:
        return TAG_RE.match(path.name) is not None and "merged" in json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False


def is_merge_output(path: Path) -> bool:
    """a merge output (only checkpoints written by pretrain.merge and its latest pointer)"""
    if not path.is_dir():
        return False
    for entry in path.iterdir():
        if entry.name.startswith("."):  # a merge's staging directory, left by a killed merge
            continue
        if entry.name == POINTER and entry.is_file():
            continue
        if not (entry.is_dir() and is_merged_checkpoint(entry)):
            return False
    return True


def default_out(ckpts: CheckpointDir, n: int, method: str) -> Path:
    return ckpts.root.parent / f"merged-{n}-{method.replace(':', '')}"


def check_tags(tags: Sequence[str], flag: str = "--steps") -> None:
    """Refuse a checkpoint named twice: a merge of a checkpoint with itself is no merge."""
    twice = sorted({t for t in tags if list(tags).count(t) > 1}, key=step_of)
    if twice:
        raise ValueError(f"{flag} {' '.join(str(step_of(t)) for t in tags)}: step "
                         f"{', '.join(str(step_of(t)) for t in twice)} is given more than once; name each checkpoint "
                         "once (--weights sets how much each counts)")


def check_out(ckpts: CheckpointDir, tags: Sequence[str], out: Path, overwrite: bool,
              inputs: Mapping[str, Path] | None = None) -> Path:
    """Every check of where the merge goes, before anything is written; return the checkpoint it writes.

    ``out`` may not be, contain or lie inside the checkpoint directory, any source checkpoint or ``inputs``;
    an existing ``out`` must be a merge output, and its checkpoint of the newest source's step is replaced
    only with ``overwrite``.
    """
    named = {"run's checkpoint directory": ckpts.root, **(inputs or {})}
    named.update({f"source checkpoint {t}": ckpts.path(t) for t in tags})
    check_disjoint(out, named, "--out")
    check_replaceable(out, overwrite=True, owned_by=is_merge_output, flag="--out")  # its kind; nothing is replaced
    final = out / tag_for(step_of(sorted(tags, key=step_of)[-1]))
    check_replaceable(final, overwrite=overwrite, owned_by=is_merged_checkpoint, flag="--out")
    return final


def merge(ckpts: CheckpointDir, tags: Sequence[str], method: str = "uniform", out: Path | None = None,
          verify: bool = True, log=print, overwrite: bool = False,
          inputs: Mapping[str, Path] | None = None) -> Path:
    """Write the weighted average of ``tags``' weights as a checkpoint; return its directory.

    The output rule (:mod:`pretrain.outputs`, :func:`check_out`) is checked before any work; an earlier merge
    of the same step in ``out`` is replaced only with ``overwrite``, atomically.
    """
    import torch
    from safetensors.torch import save_file

    check_tags(tags)
    tags = sorted(tags, key=step_of)
    weights = merge_weights(method, len(tags))
    out = Path(out) if out else default_out(ckpts, len(tags), method)
    for tag in tags:
        ckpts.tag_of(tag)  # complete, else a clear error
    final = check_out(ckpts, tags, out, overwrite, inputs)
    for tag in tags:
        if verify:
            ckpts.check(tag)
    total: dict[str, torch.Tensor] = {}
    for tag, w in zip(tags, weights, strict=True):
        sd = ckpts.fp32_weights(tag)
        log(f"  {ckpts.root / tag}: weight {w:.4f}")
        for k, v in sd.items():
            v = v.detach().to(torch.float64)
            total[k] = total[k] + w * v if k in total else w * v
    merged = {k: v.to(torch.float32).contiguous() for k, v in total.items()}
    bad = [k for k, v in merged.items() if not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"the merge of {', '.join(str(ckpts.path(t)) for t in tags)} has non-finite values in "
                              f"{len(bad)} of {len(merged)} tensors ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); "
                              "nothing was written")

    newest = ckpts.path(tags[-1])
    with staged_dir(final, overwrite=overwrite, owned_by=is_merged_checkpoint, flag="--out") as tmp:
        save_file(merged, str(tmp / WEIGHTS))
        for f in ["config.yaml", *sorted(p.name for p in newest.glob("trainer_state_rank*.json"))]:
            shutil.copy2(newest / f, tmp / f)
        src = ckpts.marker(tags[-1])
        marker = {k: src[k] for k in ("step", "tokens", "world_size", "config_hash", "version") if k in src}
        marker["merged"] = {"method": method, "sources": [str(ckpts.path(t)) for t in tags], "weights": weights,
                            "implied_multipliers": implied_multipliers(weights)}  # the WSM duality's LR multipliers
        commit(tmp, marker)
    atomic_write_text(out / POINTER, final.name + "\n")
    return final


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pretrain.merge", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run directory written by pretrain.py")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--steps", type=integer(0), nargs="+", metavar="STEP",
                       help="the steps of the checkpoints to merge (each once)")
    which.add_argument("--last", type=integer(1), metavar="N", help="the newest N complete checkpoints (N >= 1)")
    p.add_argument("--weights", default="uniform",
                   help="uniform | linear | ema:DECAY | decay:SHAPE (default uniform). decay:linear, decay:cosine, "
                        "decay:1-sqrt: the WSM-duality weights of that decay shape, c_j = f(j/n) - f((j+1)/n) over "
                        "the n checkpoints oldest first (f(1) = 0): the merge emulates a cooldown whose LR "
                        "multiplier over the update chunk before checkpoint i is f(i/n) (decay:linear: uniform weights, "
                        "a linear decay to 1/n). Recorded in the merged checkpoint's COMPLETE marker")
    p.add_argument("--checkpoint-dir", help="the run's checkpoints, if not where its config says")
    p.add_argument("--out", help="where the merged checkpoint goes (default RUN_DIR/merged-<N>-<weights>); not inside "
                                 "the run's checkpoints; an existing one must be a merge output")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier merge of the same step in --out (atomically)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the sources")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from .config_loader import ConfigError
    from .rundir import RunDir, RunDirError

    args = parse_args(argv)
    try:
        run = RunDir(args.run_dir)
        ckpts = run.checkpoints(args.checkpoint_dir)
        inputs = {"run's configured checkpoint directory": run.checkpoints().root} if args.checkpoint_dir else {}
        complete = ckpts.complete_tags()
        if args.last is not None:
            if args.last > len(complete):
                raise CheckpointError(f"--last {args.last}: expected 1 to {len(complete)} "
                                      f"({ckpts.root} has {len(complete)} complete checkpoints)")
            tags = complete[-args.last:]
        else:
            tags = [tag_for(s) for s in args.steps]
            check_tags(tags)
        merge_weights(args.weights, len(tags))  # a bad --weights before any work
        out = Path(args.out) if args.out else default_out(ckpts, len(tags), args.weights)
        for tag in tags:
            ckpts.tag_of(tag)
        check_out(ckpts, tags, out, args.overwrite, inputs)  # before the sources are read
        print(f"merging {len(tags)} checkpoints of {ckpts.root} ({args.weights}):")
        out = merge(ckpts, tags, args.weights, out, verify=not args.no_verify, overwrite=args.overwrite,
                    inputs=inputs)
    except (RunDirError, ConfigError, CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 3 if isinstance(e, CheckpointError) else 2
    marker = json.loads((out / MARKER).read_text())
    print(f"wrote {out} (step {marker['step']}); evaluate: python -m pretrain.evaluate {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
