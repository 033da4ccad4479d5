"""A checkpoint in DeepSpeed's universal format, for a launch on another world size.

    python -m pretrain.convert RUN_DIR_OR_CKPT --world-size N [--workers K] [--into RUN_DIR]

DeepSpeed's ``ds_to_universal`` rewrites every ZeRO shard into one file per parameter and state; on a
large model (Phi-3: ~46 GB of optimizer state) that takes longer than a collective's timeout. So a job
that resizes runs this first, with parallel workers; a launch that finds the conversion done reuses it.
A launch that does not find it converts on rank 0 while the other ranks wait for the marker file, not
in a collective (:func:`pretrain.resume.prepare_world_size`).

The conversion goes into the run's own checkpoint directory, ``<checkpoints>/.universal/step_N``
(``--into``: the run that will load it, e.g. a branch from another run's checkpoint); the source
checkpoint is only read. It is written under a temporary name and renamed once whole, with a ``.done``
marker naming the source checkpoint's manifest: a half-finished one is redone, one of another source
(the step saved again) too. A lock file keeps two conversions of one checkpoint from running at once.
Universal checkpoints do not depend on the world size that loads them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .checkpoint import MARKER, CheckpointDir, CheckpointError, atomic_write_text

UNIVERSAL = ".universal"
DONE = ".done"


def default_workers() -> int:
    """Parallel extract workers: this process's cores, at most 8 (each holds one rank's optimizer shard)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover  (not Linux)
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _source_id(source: Path) -> str | None:
    try:
        return json.loads((source / MARKER).read_text()).get("manifest_sha256")
    except (OSError, ValueError):
        return None


def is_converted(out: Path, source: Path) -> bool:
    """Whether ``out`` holds a whole conversion of ``source`` as it is now."""
    try:
        done = json.loads((out / DONE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(done, dict) and done.get("source_manifest_sha256") == _source_id(source) is not None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert(source: Path, out_root: Path, workers: int = 0, log=print) -> Path:
    """``source`` (a complete checkpoint) converted to ``out_root/<its tag>``; a finished conversion is reused.

    CheckpointError if ``ds_to_universal`` fails (nothing is left behind but the lock file)."""
    source = Path(source)
    workers = workers or default_workers()
    out = out_root / source.name
    out_root.mkdir(parents=True, exist_ok=True)
    with _locked(out_root / f".lock-{source.name}"):
        if is_converted(out, source):
            return out
        tmp = out_root / f".tmp-{source.name}"
        shutil.rmtree(tmp, ignore_errors=True)  # a conversion killed midway
        log(f"converting {source} to DeepSpeed's universal format in {out} ({workers} extract workers)")
        res = subprocess.run(
            [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(source),
             "--output_folder", str(tmp), "--num_extract_workers", str(workers),
             "--num_merge_workers", str(max(1, workers // 2)), "--inject_missing_state"],
            capture_output=True, text=True,
        )
        if res.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(f"cannot convert {source} to a universal checkpoint: ds_to_universal failed:\n"
                                  f"{res.stderr[-3000:]}")
        atomic_write_text(tmp / DONE, json.dumps({"source": str(source.resolve()),
                                                  "source_manifest_sha256": _source_id(source)}, indent=1))
        shutil.rmtree(out, ignore_errors=True)  # a conversion of an earlier save of this step
        tmp.rename(out)
    return out


def resolve_source(path: Path) -> tuple[Path, Path]:
    """(the newest sound checkpoint, its run's checkpoint directory) for a run directory, a checkpoint
    directory or one checkpoint (step_N); CheckpointError for anything else."""
    path = Path(path)
    if (path / MARKER).is_file():
        ckpts, tag = CheckpointDir.open(path)
        ckpts.check(tag)
        return ckpts.root / tag, ckpts.root
    for root in (path / "checkpoints", path):
        ckpts = CheckpointDir(root)
        if ckpts.complete_tags():
            tag = ckpts.newest_sound()
            return ckpts.root / tag, ckpts.root
    raise CheckpointError(f"{path}: neither a run directory with checkpoints, a checkpoint directory, nor a "
                          f"complete checkpoint (a step_NNNNNNNN directory with a {MARKER} marker)")


def main(argv: Sequence[str] | None = None) -> int:
    from .cli_numbers import integer
    from .errors import EXIT_CHECKPOINT_ERROR, EXIT_CONFIG_ERROR
    from .outputs import OutputError, check_disjoint, check_replaceable

    ap = argparse.ArgumentParser(prog="python -m pretrain.convert", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="a run directory, its checkpoint directory, or one checkpoint (step_N)")
    ap.add_argument("--world-size", type=integer(1, 1 << 20), required=True,
                    help="the number of ranks that will load it")
    ap.add_argument("--workers", type=integer(1, 256), default=0,
                    help=f"parallel extract workers (merge workers: half); default {default_workers()} here")
    ap.add_argument("--into", type=Path, default=None,
                    help="the run directory that will load it (default: the run the checkpoint belongs to)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace a conversion of an earlier save of this step")
    args = ap.parse_args(argv)
    try:
        source, root = resolve_source(args.source)
        marker = json.loads((source / MARKER).read_text())
        saved_world = marker.get("world_size")
        if "merged" in marker:
            print(f"{source} is a merged checkpoint (no DeepSpeed files): any world size loads it; nothing to do")
            return 0
        if saved_world == args.world_size:
            print(f"{source} was saved by {saved_world} ranks: it loads on {args.world_size} ranks as it is; "
                  "nothing to do")
            return 0
        if args.into is not None:
            root = _run_checkpoint_root(args.into)
        out = root / UNIVERSAL / source.name
        check_disjoint(out, {"checkpoint": source}, flag="the universal checkpoint")
        if not is_converted(out, source):
            check_replaceable(out, overwrite=args.overwrite, owned_by=[DONE], flag="the universal checkpoint")
        out = convert(source, out.parent, args.workers)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CHECKPOINT_ERROR
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(f"universal checkpoint: {out} (from {source}, saved by {saved_world} ranks); a launch on "
          f"{args.world_size} ranks loads it")
    return 0


def _run_checkpoint_root(run_dir: Path) -> Path:
    """The checkpoint directory of the run at ``run_dir``, as its config.yaml names it (or the default)."""
    import yaml

    from .checkpoint import CheckpointConfig

    cfg_path = Path(run_dir) / "config.yaml"
    ckpt_cfg: dict = {}
    if cfg_path.is_file():
        try:
            ckpt_cfg = (yaml.safe_load(cfg_path.read_text()) or {}).get("checkpoint") or {}
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise CheckpointError(f"{cfg_path}: not a run config ({e})") from None
    return CheckpointConfig(dir=ckpt_cfg.get("dir")).root(Path(run_dir))


if __name__ == "__main__":
    sys.exit(main())
