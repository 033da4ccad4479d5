"""``pretrain.py --config run.yaml [--dry-run] [--branch-from CKPT] [key.sub=value ...]``: check, then train.

Works under ``deepspeed``, ``torchrun`` and plain ``python`` (a world of one). Options and
``KEY=VALUE`` overrides mix in any order. The run itself is ``pretrain.trainer``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .distributed import world_from_env
from .errors import EXIT_CHECKPOINT_ERROR, EXIT_CONFIG_ERROR, ConfigError, LaunchError


def _steps(text: str) -> int:
    """``--stop-after-steps``: an integer >= 0 (0: no stop)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: expected an integer >= 0 (0: off)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is out of range: expected an integer >= 0 (0: off)")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pretrain.py",
        description="Pretrain a GPT with DeepSpeed. Settings come from the YAML; override any of them with "
        "dotted KEY=VALUE arguments, e.g. optimizer.lr=3e-4 train.max_steps=100, before or after the options.",
    )
    p.add_argument("--config", required=True, help="run YAML (see configs/)")
    p.add_argument("--dry-run", action="store_true", help="check the config and print the plan; do not train")
    p.add_argument("--branch-from", metavar="CKPT", help="start from another run's checkpoint (.../checkpoints/step_N): "
                   "same as checkpoint.branch_from=CKPT")
    p.add_argument("--stop-after-steps", type=_steps, default=0, metavar="K",
                   help="save and stop (exit code 75) after K updates in this launch; relaunch to continue")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    args, rest = p.parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-") or "=" not in a]
    if unknown:
        p.error(f"unrecognized arguments: {' '.join(unknown)} (overrides are KEY=VALUE)")
    args.overrides = rest
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from .hardware import choose_precision, detect, plan_threads
    from .run_config import load_and_resolve, plan_text

    args = parse_args(argv)
    rank, world_size, _, local_world = world_from_env()
    overrides = list(args.overrides) + ([f"checkpoint.branch_from={args.branch_from}"] if args.branch_from else [])
    hw = detect()
    try:
        cfg, ds_config = load_and_resolve(args.config, overrides, world_size, hw)
        threads = plan_threads(hw, local_world, cfg.data.num_workers)
    except (ConfigError, ValueError) as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    precision = choose_precision(cfg.train.precision, hw)
    if precision.warning and rank == 0:
        print(f"warning: {precision.warning}", file=sys.stderr, flush=True)
    if args.dry_run:
        # Every check the launch makes before training: also where it starts (resume or branch) and whether
        # that checkpoint fits this config. Nothing is written.
        from .errors import CheckpointError
        from .resume import check_start

        try:
            start = check_start(cfg)
        except CheckpointError as e:
            if rank == 0:
                print(f"error: {e}", file=sys.stderr)
            return EXIT_CHECKPOINT_ERROR
        if rank == 0:
            print(plan_text(cfg, world_size, precision, threads))
            if start is not None:
                how = "branch from" if start.branch else "resume from"
                print(f"  {how} {start.path} (step {start.step})")
        return 0

    from .trainer import run_launch

    try:
        result = run_launch(cfg, ds_config, stop_after_steps=args.stop_after_steps)
    except LaunchError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        return e.code
    if result.code == 0 and rank == 0 and cfg.logging.plot:
        from .plot import plot_run

        print(f"loss curve {plot_run(result.run_dir)}", flush=True)
    return result.code


def exit_now(code: int) -> None:
    """End the process with ``code`` once the run is over, without tearing the interpreter down.

    The run has closed its files, writers, process group and shared memory by now. What normal exit adds is
    joining idle thread pools (DeepSpeed, streaming) and finalizing torch's modules: 4-7 seconds a rank on 2
    CPU cores, paid by every launch. The ``atexit`` handlers still run and the output is flushed.
    Under ``launch_scripts/keep_exit_code.py`` (``PRETRAIN_EXIT_DIR`` set), which records the code as the
    script ends, this is a plain ``sys.exit``.
    """
    import atexit
    import logging
    import os

    if os.environ.get("PRETRAIN_EXIT_DIR"):
        sys.exit(code)

    logging.shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 1)


def cli() -> None:
    """The ``pretrain`` console script: :func:`main`, then :func:`exit_now` (as ``pretrain.py`` does)."""
    exit_now(main())


if __name__ == "__main__":  # pragma: no cover
    exit_now(main())
