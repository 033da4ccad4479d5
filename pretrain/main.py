"""``pretrain.py --config run.yaml [key.sub=value ...]``: check everything, then train.

Works under ``deepspeed``, ``torchrun`` and plain ``python`` (a world of one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from .config import ConfigError, Sources
from .distributed import DistInfo, world_from_env

EXIT_CONFIG_ERROR = 2
EXIT_CHECKPOINT_ERROR = 3
EXIT_UNSTABLE = 4  # too many consecutive non-finite updates


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pretrain.py",
        description="Pretrain a GPT with DeepSpeed. Settings come from the YAML; "
        "override any of them with dotted KEY=VALUE arguments, e.g. optimizer.lr=3e-4 train.max_steps=100.",
    )
    p.add_argument("--config", required=True, help="run YAML (see configs/)")
    p.add_argument("--dry-run", action="store_true", help="check the config and print the plan; do not train")
    p.add_argument("--branch-from", metavar="CKPT", help="start from another run's checkpoint (.../checkpoints/step_N): "
                   "same as checkpoint.branch_from=CKPT")
    p.add_argument("--stop-after-steps", type=int, default=0, metavar="K",
                   help="save and stop (exit code 75) after K updates in this launch; relaunch to continue")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by deepspeed
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return p.parse_args(argv)


def load_and_check(config_path: str, overrides: Sequence[str], world_size: int):
    """The resolved RunConfig and DeepSpeed dict, or ConfigError naming every problem."""
    from .run_config import load_run_config, resolve

    sources = Sources(config_path)
    cfg = load_run_config(config_path, list(overrides), sources)
    return resolve(cfg, world_size, sources)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    rank, world_size, _, _ = world_from_env()
    overrides = list(args.overrides) + ([f"checkpoint.branch_from={args.branch_from}"] if args.branch_from else [])
    try:
        cfg, ds_config = load_and_check(args.config, overrides, world_size)
    except ConfigError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    from .hardware import choose_precision, detect, plan_threads

    hw = detect()
    _, _, _, local_world = world_from_env()
    try:
        threads = plan_threads(hw, local_world, cfg.data.num_workers)
    except ValueError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    precision = choose_precision(cfg.train.precision, hw)
    if precision.warning and rank == 0:
        print(f"warning: {precision.warning}", file=sys.stderr, flush=True)
    if args.dry_run:
        if rank == 0:
            print(plan_text(cfg, world_size, precision, threads))
        return 0
    from .distributed import barrier, init_distributed, release_shared_memory

    from .checkpoint import CheckpointError
    from .training.loop import TrainingUnstable

    dist = init_distributed(threads.threads)
    try:
        try:
            code = run(cfg, ds_config, dist, args.stop_after_steps, hw, precision, threads)
        except CheckpointError as e:
            if rank == 0:
                print(f"error: {e}", file=sys.stderr, flush=True)
            return EXIT_CHECKPOINT_ERROR
        except TrainingUnstable as e:
            if rank == 0:
                print(f"error: {e}", file=sys.stderr, flush=True)
            return EXIT_UNSTABLE
        barrier()
    finally:
        release_shared_memory(dist)
        import torch.distributed

        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return code


def plan_text(cfg, world_size: int, precision=None, threads=None) -> str:
    m, t = cfg.model, cfg.train
    n_params = m.num_params()
    tokens_per_step = t.global_batch_size * cfg.seq_len
    total_tokens = tokens_per_step * t.max_steps
    flops = m.flops_per_token(cfg.seq_len) * total_tokens
    warmup = cfg.schedule.warmup_for(t.max_steps)
    text = (
        f"plan: {n_params / 1e6:.2f}M parameters ({m.num_params(include_embeddings=False) / 1e6:.2f}M non-embedding), "
        f"{t.max_steps} steps x {t.global_batch_size} seqs x {cfg.seq_len} tokens = {total_tokens:,} tokens "
        f"({total_tokens / n_params:.2f} tokens/param), warmup {warmup} steps, schedule {cfg.schedule.name}, "
        f"world {world_size} x micro {t.micro_batch_size} x accum {t.grad_accum}, ~{flops:.3g} FLOPs"
    )
    if precision is not None:
        text += f"\n  precision {precision}"
    if threads is not None:
        text += f"\n  threads {threads.threads} per rank ({threads.reason})"
    if t.compile:
        text += "\n  torch.compile on"
    return text


def run(cfg, ds_config: dict, dist: DistInfo, stop_after_steps: int = 0, hw=None, precision=None, threads=None) -> int:
    """Train; returns 0 when max_steps is reached, EXIT_INCOMPLETE when stopped early (saved)."""
    import deepspeed
    import torch
    import yaml

    from .checkpoint import Checkpointer
    from .data import endless
    from .model.param_groups import param_groups
    from .run_config import ds_precision
    from .resume import check_compatible, find_start, prepare_world_size, write_lineage
    from .schedules.dual import smoothing
    from .training.callbacks import CheckpointCallback, DualCallback, EvalCallback, MetricsLogger
    from .training.control import EXIT_INCOMPLETE, RunControl
    from .training.loop import TrainContext, train
    from .training.rng import restore_rng
    from .training.state import TrainState

    _quiet_deepspeed(dist)
    control = RunControl(cfg.checkpoint.interval_minutes, stop_after_steps).install()
    out = cfg.out_dir
    config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    from .hardware import detect, peak_flops

    hw = hw or detect()
    peak, peak_why = peak_flops(hw, ds_precision(ds_config), torch.get_num_threads(), cfg.train.peak_tflops)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_yaml)
        print(plan_text(cfg, dist.world_size, precision, threads), flush=True)
        print(f"  MFU against {peak / 1e12:.3g} TFLOP/s per rank ({peak_why})" if peak else f"  no MFU: {peak_why}", flush=True)
        _write_hardware(out / "hardware.json", hw, precision, threads, peak, peak_why)

    # Where this launch starts, decided before DeepSpeed is set up (a universal checkpoint changes its config).
    checkpointer = Checkpointer(cfg.checkpoint_dir, cfg.checkpoint.keep_last, dist, cfg.hash(), config_yaml, cfg.checkpoint.verify)
    start = find_start(cfg, dist, checkpointer)
    if start is not None:
        check_compatible(start, cfg)
        start = prepare_world_size(start, checkpointer.root, dist, ds_config)
    if dist.is_main:
        (out / "ds_config.json").write_text(json.dumps(ds_config, indent=2))

    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    model = cfg.model.build().to(dist.device)  # on the device first: fused AdamW needs its params there
    groups = param_groups(model, cfg.optimizer.weight_decay, cfg.optimizer.embedding_weight_decay)
    optimizer = cfg.optimizer.build(groups, fused=dist.device.startswith("cuda"))
    if cfg.train.compile:
        model.compile()  # in place: the state dict keeps its names (checkpoints load either way)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    torch.manual_seed(cfg.train.seed + 1000 + dist.rank)  # dropout differs between ranks

    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()  # collective: local rank 0 cleans what killed loaders left, all wait
    if dist.local_rank == 0:
        cfg.data.decompress_shards()  # once per node, safe when nodes share the data directory
    from .distributed import barrier

    barrier()
    loader = cfg.data.build_train_loader(cfg.train.micro_batch_size, cfg.train.seed)
    val = cfg.data.build_val_dataset()

    state = TrainState(max_steps=cfg.train.max_steps)
    if start is not None:
        saved = checkpointer.load(engine, start.tag, start.load_dir) if not start.branch else Checkpointer(
            start.root, 1, dist, verify=cfg.checkpoint.verify).load(engine, start.tag, start.load_dir)
        state.step, state.tokens = saved["state"]["step"], saved["state"]["tokens"]
        if saved.get("data") is not None:
            loader.load_state_dict(saved["data"])
        if saved.get("rng") is not None and cfg.checkpoint.restore_rng:
            restore_rng(saved["rng"])
        if dist.is_main:
            how = "branched from" if start.branch else "resumed from"
            extra = f" (converted from {start.marker['world_size']} ranks)" if start.universal else ""
            print(f"{how} {start.path} at step {state.step}{extra}", flush=True)
            if start.branch:
                write_lineage(start, cfg, out)

    start_step = state.step
    ctx = TrainContext(
        engine=engine,
        state=state,
        dist=dist,
        seq_len=cfg.seq_len,
        micro_batch_size=cfg.train.micro_batch_size,
        tokens_per_step=cfg.train.global_batch_size * cfg.seq_len,
        z_loss=cfg.model.z_loss,
        control=control,
        flops_per_token=cfg.model.flops_per_token(cfg.seq_len),
        peak_flops=peak,
        max_consecutive_skips=cfg.train.max_consecutive_skips,
        spike_window=cfg.train.spike_window,
        spike_threshold=cfg.train.spike_threshold,
        skip_spikes=cfg.train.skip_spikes,
        log_interval=cfg.logging.interval,
    )
    schedule = cfg.build_schedule()
    alpha = None
    if dist.is_main:
        try:
            alpha = smoothing(schedule.multipliers(), cfg.dual_alpha())
        except ValueError as e:  # LR x weight decay >= 1: the dual view does not apply
            print(f"warning: no dual-coefficient logging: {e}", flush=True)
    permanent = cfg.checkpoint.permanent_steps(cfg.schedule, cfg.train.max_steps)
    callbacks = [
        EvalCallback(val, cfg.eval.interval, cfg.eval.max_samples, cfg.train.micro_batch_size),
        DualCallback(alpha, cfg.logging.interval, dist.is_main and alpha is not None),
        # Log before saving: every step up to a committed checkpoint has its record.
        MetricsLogger(out, cfg.logging.interval, cfg.logging.tensorboard, dist.is_main),
        CheckpointCallback(checkpointer, cfg.checkpoint.interval, loader, permanent, control),
    ]
    train(ctx, endless(loader), schedule, cfg.train.grad_accum, callbacks)
    # The signal handlers stay: a launcher that sees one rank exit sends SIGTERM to the others,
    # which must still finish their clean exit (and report the same exit code).

    if not state.done:
        if dist.is_main:
            if control.signal:
                why = f"signal {control.signal}"
            elif stop_after_steps and state.step - start_step >= stop_after_steps:
                why = f"--stop-after-steps {stop_after_steps}"
            else:
                why = "a signal to another rank"
            print(f"stopped at step {state.step} of {state.max_steps} ({why}); saved {checkpointer.root}; "
                  f"relaunch the same command to continue (exit code {EXIT_INCOMPLETE})", flush=True)
        return EXIT_INCOMPLETE
    if dist.is_main:
        from .plot import plot_run

        png = plot_run(out)
        print(f"done: {state.step} steps, {state.tokens:,} tokens; loss curve {png}", flush=True)
    return 0


def _write_hardware(path: Path, hw, precision, threads, peak, peak_why: str) -> None:
    """What the run was given: precision and why, threads, the peak its MFU is against (for the report)."""
    record = {
        "device": hw.device,
        "cpu": hw.describe_cpu(),
        "gpu": hw.gpu_name or None,
        "precision": precision.precision if precision else None,
        "precision_reason": precision.reason if precision else None,
        "threads_per_rank": threads.threads if threads else None,
        "threads_reason": threads.reason if threads else None,
        "peak_tflops_per_rank": peak / 1e12 if peak else None,
        "peak_source": peak_why,
    }
    path.write_text(json.dumps(record, indent=1))


def _quiet_deepspeed(dist: DistInfo) -> None:
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
