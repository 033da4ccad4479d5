"""The Trainer owns one run: engine, data, checkpoints, run control, callbacks; ``fit()`` trains.

Built from a resolved :class:`~pretrain.run_config.RunConfig`, its DeepSpeed dict and the
process layout. Where a launch starts (fresh, resumed, branched) is decided by
``pretrain.resume``; the per-rank state a checkpoint holds is captured and restored by
``pretrain.training.state``. ``train()`` runs a whole run in the calling process (a world of
one when no launcher is present), for experiments and tests that should not pay a launcher.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .distributed import DistInfo, all_reduce_sum, barrier
from .errors import EXIT_CHECKPOINT_ERROR, EXIT_CONFIG_ERROR, EXIT_UNSTABLE, LaunchError, TrainingUnstable  # noqa: F401  (re-exported for callers of the trainer)


def build_engine(model, optimizer_cfg, ds_config: dict, device: str, compile: bool = False):
    """The DeepSpeed engine over ``model`` with our optimizer (its param groups, fused AdamW on CUDA)."""
    import deepspeed

    from .model.param_groups import param_groups

    model = model.to(device)  # on the device first: fused AdamW needs its params there
    groups = param_groups(model, optimizer_cfg.weight_decay, optimizer_cfg.embedding_weight_decay)
    optimizer = optimizer_cfg.build(groups, fused=device.startswith("cuda"))
    if compile:
        model.compile()  # in place: the state dict keeps its names (checkpoints load either way)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    return engine


@dataclass
class TrainResult:
    code: int  # 0: max_steps reached; EXIT_INCOMPLETE: stopped early, saved
    run_dir: Path
    step: int
    tokens: int
    last: dict[str, Any] = field(default_factory=dict)  # the last metrics record (rank 0)
    val_loss: float | None = None  # the last validation loss


class Trainer:
    def __init__(self, cfg, ds_config: dict, dist: DistInfo, *, hardware=None, precision=None, threads=None,
                 stop_after_steps: int = 0):
        from .training.control import RunControl
        from .training.state import TrainState

        self.cfg, self.ds_config, self.dist = cfg, ds_config, dist
        self.hardware, self.precision, self.threads = hardware, precision, threads
        self.state = TrainState(max_steps=cfg.train.max_steps)
        self.control = RunControl(cfg.checkpoint.interval_minutes, stop_after_steps)
        self.engine = self.loader = self.val = self.saver = None
        self.val_per_source: dict = {}
        self.evaluator = self.logger = self.checkpointer = None
        self._shm_before: set[int] | None = None  # streaming's shared memory from before this run's data
        self.start = None  # pretrain.resume.StartPoint, or None for a fresh run
        self.callbacks: list = []
        self.peak_flops: float | None = None
        self.checkpointer = None  # training.callbacks.CheckpointCallback
        self.last: dict[str, Any] = {}

    @property
    def seq_len(self) -> int:
        return self.cfg.seq_len

    @property
    def run_dir(self) -> Path:
        return self.cfg.out_dir

    # -- set-up ------------------------------------------------------------------------------
    def setup(self) -> Trainer:
        import torch
        import yaml

        from .checkpoint import CheckpointSaver, atomic_write_text
        from .hardware import detect, peak_flops
        from .resume import check_compatible, find_init_checkpoint, find_start, prepare_world_size, weights_only
        from .run_config import ds_precision, plan_text

        cfg, dist = self.cfg, self.dist
        _quiet_deepspeed()
        config_yaml = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        hw = self.hardware or detect()
        self.peak_flops, peak_why = peak_flops(hw, ds_precision(self.ds_config), torch.get_num_threads(),
                                               cfg.train.peak_tflops)
        out = self.run_dir

        # Where this launch starts, decided before DeepSpeed is set up (a universal checkpoint changes its config)
        # and before anything is written: a refused launch leaves the run directory as it was.
        self.saver = CheckpointSaver(cfg.checkpoint_dir, cfg.checkpoint.keep_last, dist, cfg.hash(), config_yaml)
        start = find_start(cfg, dist)
        if start is not None:
            check_compatible(start, cfg)
        # checkpoint.init_from one of our checkpoints: checked (complete, hashes, model) before anything is written
        init = find_init_checkpoint(cfg, dist) if start is None and cfg.checkpoint.init_checkpoint else None
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "config.yaml", config_yaml)
            print(plan_text(cfg, dist.world_size, self.precision, self.threads), flush=True)
            print(f"  MFU against {self.peak_flops / 1e12:.3g} TFLOP/s per rank ({peak_why})" if self.peak_flops
                  else f"  no MFU: {peak_why}", flush=True)
            _write_hardware(out / "hardware.json", hw, self.precision, self.threads, self.peak_flops, peak_why)
        if start is not None:
            start = prepare_world_size(start, self.saver.root, dist, self.ds_config, cfg.checkpoint.convert_workers,
                                       weights_only=weights_only(start, cfg))
        self.start = start
        if dist.is_main:
            atomic_write_text(out / "ds_config.json", json.dumps(self.ds_config, indent=2))

        torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
        model = cfg.model.build()
        # The weights go into the model before DeepSpeed wraps it: under ZeRO-3 it partitions what it is given.
        if weights_only(start, cfg):  # a merge, or a branch without its optimizer state: a fresh optimizer
            from .checkpoint import CheckpointDir

            model.load_state_dict(CheckpointDir(start.root).model(start.tag, cfg.model).state_dict())
        elif init is not None:  # our checkpoint's weights, a fresh run from step 0
            self._init_from_checkpoint(model, init)
        elif start is None and cfg.checkpoint.init_from:  # Hugging Face weights, a fresh run from step 0
            self._init_from_hf(model, Path(cfg.checkpoint.init_from.removeprefix("hf:")))
        self.engine = build_engine(model, cfg.optimizer, self.ds_config, dist.device, cfg.train.compile)
        torch.manual_seed(cfg.train.seed + 1000 + dist.rank)  # dropout differs between ranks
        self._setup_data()
        if start is not None:
            self._restore(start)
        self.callbacks = self._callbacks()
        return self

    def _init_from_hf(self, model, directory: Path) -> None:
        """Load ``directory``'s Llama / Phi-3 weights into ``model``; rank 0 records them in lineage.json."""
        from .checkpoint import atomic_write_text
        from .config_loader import ConfigError
        from .hf import HFError, hf_format, load_hf, sha256_files

        try:
            sd, files = load_hf(directory, self.cfg.model)
        except HFError as e:
            raise ConfigError([f"checkpoint.init_from = hf:{directory}: {e}"]) from None
        model.load_state_dict(sd)
        if self.dist.is_main:
            lineage = {"init_from": str(directory.resolve()), "format": hf_format(directory)[0],
                       "weights_sha256": sha256_files(files), "step": 0}
            atomic_write_text(self.run_dir / "lineage.json", json.dumps(lineage, indent=1))
            print(f"initialized from {directory} ({lineage['format']}, {len(files)} weight file(s)); "
                  "training starts at step 0", flush=True)

    def _init_from_checkpoint(self, model, init) -> None:
        """Load the weights of ``init`` (one of our checkpoints, checked by rank 0) into ``model``; a fresh
        optimizer, schedule and step counter; rank 0 records it in lineage.json."""
        from .checkpoint import CheckpointDir
        from .resume import write_init_lineage

        model.load_state_dict(CheckpointDir(init.root).model(init.tag, self.cfg.model).state_dict())
        if self.dist.is_main:
            write_init_lineage(init, self.cfg, self.run_dir)
            print(f"initialized from the weights of {init.path} (step {init.step}); a fresh {self.cfg.optimizer.name} "
                  "optimizer and schedule, training starts at step 0", flush=True)

    def _setup_data(self) -> None:
        from .data import clean_stale_shared_memory, shared_memory_lock, streaming_memory_ids

        self._shm_before = streaming_memory_ids()
        clean_stale_shared_memory()  # collective: local rank 0 cleans what killed loaders left, all wait
        data = self.cfg.data.build()
        if self.dist.local_rank == 0:
            data.decompress_shards()  # once per node, safe when nodes share the data directory
        barrier()
        with shared_memory_lock(self.dist.world_size, self.dist.local_rank):
            self.loader = data.build_train_loader(self.cfg.train.micro_batch_size, self.cfg.train.seed)
            self.val = data.build_val_dataset()
            self.val_per_source = data.build_val_datasets_per_source() if self.cfg.eval.per_source else {}

    def _load(self, start) -> tuple[Any, dict[str, Any]]:
        """Load ``start`` into the engine; a checkpoint refused as unsafe falls back to the previous sound one
        of the run's own (a branch source has no fallback)."""
        import dataclasses

        from .checkpoint import CheckpointDir, UnsafeCheckpoint, step_of
        from .resume import weights_only

        ckpts = CheckpointDir(start.root, self.cfg.checkpoint.verify)
        while True:
            error, saved = None, None
            try:
                if weights_only(start, self.cfg):  # its weights went into the model before the engine was built
                    saved = ckpts.rank_state(start.tag, self.dist)
                else:
                    saved = ckpts.load(self.engine, start.tag, self.dist, start.load_dir)
            except UnsafeCheckpoint as e:
                error = e
            # Every rank loads its own files: all fall back together if any one refused.
            (refused,) = all_reduce_sum([float(error is not None)], self.dist.device)
            if not refused:
                return start, saved
            if error is None:
                error = UnsafeCheckpoint(f"{start.path}: another rank refused one of its files as unsafe")
            older = None if start.branch or start.universal else next(
                (t for t in reversed(ckpts.complete_tags()) if step_of(t) < start.step and not ckpts.verify(t)), None)
            if older is None:
                raise error
            if self.dist.is_main or "another rank" not in str(error):
                print(f"warning: skipping checkpoint {start.path}: {error}", flush=True)
            start = dataclasses.replace(start, tag=older, marker=ckpts.marker(older))

    def _restore(self, start) -> None:
        from .resume import weights_only, write_lineage
        from .training.state import restore

        start, saved = self._load(start)
        self.start = start
        load_data = self.cfg.checkpoint.load_data_state
        restore(saved, self.state, self.loader, restore_rng=self.cfg.checkpoint.restore_rng, load_data=load_data)
        # The checkpoint brought back its param groups' hyperparameters; the config wins.
        changes = self.cfg.optimizer.apply(self.engine.optimizer)
        if self.dist.is_main:
            how = "branched from" if start.branch else "resumed from"
            extra = f" (converted from {start.marker['world_size']} ranks)" if start.universal else ""
            print(f"{how} {start.path} at step {self.state.step}{extra}", flush=True)
            if changes:
                print(f"the config's optimizer settings replace the checkpoint's: {'; '.join(changes)}", flush=True)
            if not load_data:
                print("the data order starts fresh (checkpoint.load_data_state=false)", flush=True)
            fresh = weights_only(start, self.cfg)
            if fresh and start.branch:
                print(f"a fresh {self.cfg.optimizer.name} optimizer state (the checkpoint's weights and counters only)",
                      flush=True)
            if start.branch:
                write_lineage(start, self.cfg, self.run_dir, changes, data_state="restored" if load_data else "fresh",
                              optimizer_state="fresh" if fresh else "restored")
            elif changes:
                record = {"step": self.state.step, "checkpoint": str(start.path), "optimizer_changes": changes}
                with open(self.run_dir / "changes.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")

    def _callbacks(self) -> list:
        from .schedules.dual import smoothing
        from .training.callbacks import CheckpointCallback, DualCallback, MetricsLogger
        from .training.evaluate import EvalCallback

        cfg, dist = self.cfg, self.dist
        alpha = None
        if dist.is_main:
            try:
                alpha = smoothing(cfg.build_schedule().multipliers(), cfg.dual_alpha())
            except ValueError as e:  # LR x weight decay >= 1: the dual view does not apply
                print(f"warning: no dual-coefficient logging: {e}", flush=True)
        permanent = cfg.checkpoint.permanent_steps(cfg.schedule, cfg.train.max_steps)
        self.evaluator = EvalCallback(self.val, cfg.eval, cfg.train.micro_batch_size,
                                      self.val_per_source if cfg.eval.per_source else None)
        self.logger = MetricsLogger(self.run_dir, cfg.logging.interval, cfg.logging.tensorboard, dist.is_main,
                                    cfg.logging.wandb)
        self.checkpointer = CheckpointCallback(self.saver, cfg.checkpoint.interval, self.loader, permanent, self.control)
        return [
            self.evaluator,
            DualCallback(alpha, cfg.logging.interval, dist.is_main and alpha is not None),
            # Log before saving: every step up to a committed checkpoint has its record.
            self.logger,
            self.checkpointer,
        ]

    # -- training ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train to ``train.max_steps``, or until a stop (a signal, --stop-after-steps), saving as configured."""
        from .data import endless
        from .training.control import EXIT_INCOMPLETE

        if self.engine is None:
            self.setup()
        start_step = self.state.step
        if self.state.done:  # e.g. a branch from step N with train.max_steps = N, or a finished run relaunched
            if self.dist.is_main:
                print(f"nothing to train: the run starts at step {self.state.step} and train.max_steps is "
                      f"{self.state.max_steps}", flush=True)
            return TrainResult(0, self.run_dir, self.state.step, self.state.tokens)
        # The handlers stay installed after the loop: a launcher that sees one rank exit sends SIGTERM
        # to the others, which must still finish their clean exit (and report the same exit code).
        self.control.install()
        self._loop(endless(self.loader))
        state, dist = self.state, self.dist
        val = self.last.get("val_loss")
        if not state.done:
            if dist.is_main:
                stop_after = self.control.stop_after_steps
                if self.control.signal:
                    why = f"signal {self.control.signal}"
                elif stop_after and state.step - start_step >= stop_after:
                    why = f"--stop-after-steps {stop_after}"
                else:
                    why = "a signal to another rank"
                print(f"stopped at step {state.step} of {state.max_steps} ({why}); saved {self.saver.root}; "
                      f"relaunch the same command to continue (exit code {EXIT_INCOMPLETE})", flush=True)
            return TrainResult(EXIT_INCOMPLETE, self.run_dir, state.step, state.tokens, self.last, val)
        if dist.is_main:
            print(f"done: {state.step} steps, {state.tokens:,} tokens", flush=True)
        return TrainResult(0, self.run_dir, state.step, state.tokens, self.last, val)

    def _loop(self, batches) -> None:
        from . import faults
        from .distributed import host_all_reduce_sum
        from .optim import set_lr
        from .training.callbacks import _due
        from .training.loop import SpikeDetector, memory_gb, param_norm
        from .training.step import StepBuffer, StepOutput, train_step

        cfg, state, engine, dist = self.cfg, self.state, self.engine, self.dist
        t = cfg.train
        schedule = cfg.build_schedule()
        tokens_per_step = t.global_batch_size * self.seq_len
        flops_per_token = cfg.model.flops_per_token(self.seq_len)
        for cb in self.callbacks:
            cb.on_train_start(self)
        if state.step == 0 and cfg.eval.at_start:  # the initial weights' validation loss: a step-0 record
            self.logger.on_step_end(self, {"step": 0, "tokens": 0, **self.evaluator.metrics(self)})
        spikes = SpikeDetector(t.spike_window, t.spike_threshold)
        self._skips = [0, 0]  # [consecutive, total] skipped updates
        # Host syncs: the updates' losses and norms stay on the device, buffered, until a step that needs them on
        # the host (a logging, evaluation or save step, a stop, the last step; every step with train.skip_spikes,
        # whose pre-check needs the running statistics): then one all-reduce and one device->host copy for all of
        # them, the stability guards run over them in order, and each gets its own metrics.jsonl record as before.
        buffer = StepBuffer(dist.device, dist.rank, dist.world_size)
        pending: list[tuple[dict[str, Any], tuple[float, float] | None, bool]] = []  # (metrics, spike, skipped)
        first_step = state.step
        last = time.perf_counter()
        while not state.done:
            multiplier = schedule(state.step)
            lrs = set_lr(engine.optimizer, multiplier)
            t0 = time.perf_counter()
            micro_batches = [next(batches) for _ in range(t.grad_accum)]
            data_wait = time.perf_counter() - t0
            if faults.step_hit("train.noise_tokens", state.step + 1):
                import torch

                micro_batches = [torch.randint_like(b, int(b.max()) + 1) for b in micro_batches]
            spike = self._spike_precheck(micro_batches, spikes) if t.skip_spikes and spikes.ready else None
            if spike is not None:  # skip the update: these batches are consumed, the weights are not touched
                out = StepOutput(loss=spike[0], z_loss=0.0, grad_norm=float("nan"), skipped=True)
            else:
                out = train_step(engine, micro_batches, self.seq_len, dist.device, cfg.model.z_loss,
                                 poison=faults.step_hit("train.nan_loss", state.step + 1))
            state.step += 1
            state.tokens += tokens_per_step
            # Every rank's stop/save flags, agreed after every update: host numbers over gloo (a side group when
            # the default one is NCCL), so no device sync; a preemption's grace period needs only one update.
            stop, save_due = host_all_reduce_sum(self.control.local_flags(state.step - first_step))
            state.stop, state.save_due = stop > 0 and not state.done, save_due > 0
            now = time.perf_counter()
            step_time, last = now - last, now
            tokens_per_s = tokens_per_step / step_time
            metrics: dict[str, Any] = {
                "step": state.step,
                "loss": None,  # filled at the next host sync (the key keeps its place in the record)
                "lr": cfg.optimizer.lr * multiplier,  # the schedule's LR; each group scales it by its lr_mult
                "lr_multiplier": multiplier,
                "tokens": state.tokens,
                "grad_norm": None,
                **({"z_loss": None} if cfg.model.z_loss else {}),
                "step_time_s": step_time,  # the host's time: with a device, the time to queue the update's work
                "data_wait_s": data_wait,
                "tokens_per_s": tokens_per_s,
                "samples_per_s": tokens_per_s / self.seq_len,
                "tflops": flops_per_token * tokens_per_s / 1e12,
                **{f"lr/{name}": lr for name, lr in lrs.items()},
            }
            if self.peak_flops:
                metrics["mfu"] = flops_per_token * tokens_per_s / dist.world_size / self.peak_flops
            buffer.add(out)
            pending.append((metrics, spike, out.skipped))
            if faults.step_hit("train.nan_weight", state.step):
                _poison_weight(engine)
            log_due = state.step % cfg.logging.interval == 0 or state.done
            save = self.checkpointer.due(state)
            if not (log_due or save or state.stop or t.skip_spikes
                    or _due(state.step, cfg.eval.interval, state.max_steps)):
                continue  # nothing needs this update's numbers on the host yet

            self._settle(pending, buffer.read(), spikes)  # may raise TrainingUnstable
            pending = []
            # The weights are checked before every save and at every logging step: the norm is a reduction
            # over all of them (non-finite norm: non-finite weights), agreed by all ranks in one collective.
            if log_due or save:
                norm = param_norm(engine)
                (bad,) = all_reduce_sum([float(not math.isfinite(norm))], dist.device)
                if bad:
                    raise TrainingUnstable(
                        f"step {state.step}: the weights are not finite after the update (parameter norm {norm} "
                        f"on rank {dist.rank}); stopping without saving them, the last good checkpoint is kept "
                        "(lower optimizer.lr or set optimizer.grad_clip, then relaunch)")
                if log_due:
                    metrics["param_norm"] = norm
                    metrics["memory_gb"] = memory_gb(dist.device)

            for cb in self.callbacks:
                cb.on_step_end(self, metrics)
            self.last = metrics
            if state.stop:
                break
        for cb in self.callbacks:
            cb.on_train_end(self)

    def _settle(self, pending, values, spikes) -> None:
        """Fill the buffered updates' loss, z-loss and gradient norm (``values``, in order), run the stability
        guards over them in order, and log each but the last (the caller runs every callback for that one).

        DeepSpeed skips an update whose gradients are not finite (the same decision on every rank: it follows
        from the all-reduced gradient norm); too many in a row stop the run, naming the steps.
        """
        t, skips = self.cfg.train, self._skips
        for i, ((metrics, spike, skipped), (loss, z_loss, grad_norm)) in enumerate(zip(pending, values, strict=True)):
            step = metrics["step"]
            metrics["loss"], metrics["grad_norm"] = loss, grad_norm
            if "z_loss" in metrics:
                metrics["z_loss"] = z_loss
            if spike is not None:
                skips[1] += 1
                metrics.update(skipped=1, skipped_total=skips[1], loss_spike_z=spike[1])
                self._warn(f"step {step}: loss spike {loss:.4f} ({spike[1]:.1f} std above the last "
                           f"{t.spike_window} updates); update skipped")
            elif skipped or not math.isfinite(loss):
                skips[0] += 1
                skips[1] += 1
                metrics.update(skipped=1, skipped_total=skips[1])
                self._warn(f"step {step}: non-finite loss or gradients ({loss}); update skipped "
                           f"({skips[0]} in a row)")
                if skips[0] >= t.max_consecutive_skips:
                    raise TrainingUnstable(
                        f"{skips[0]} consecutive updates skipped as non-finite (steps "
                        f"{step - skips[0] + 1}..{step}); stopping, the last good checkpoint is kept"
                    )
            else:
                skips[0] = 0
                z = spikes.observe(loss)
                if z is not None:
                    metrics["loss_spike_z"] = z
                    self._warn(f"step {step}: loss spike {loss:.4f} ({z:.1f} std above the last "
                               f"{t.spike_window} updates)")
            if i < len(pending) - 1:  # no other callback acts on a step that did not need a host sync
                self.logger.on_step_end(self, metrics)
                self.last = metrics

    def _spike_precheck(self, micro_batches, spikes) -> tuple[float, float] | None:
        """(loss, z) when this update's batches give a loss spike (an extra forward, same on all ranks)."""
        from .training.step import eval_loss

        loss_sum, count = eval_loss(self.engine, micro_batches, self.seq_len, self.dist.device)
        loss_sum, count = all_reduce_sum([loss_sum, float(count)], self.dist.device)
        loss = loss_sum / count
        if not math.isfinite(loss):
            return None  # left to the non-finite guard
        z = spikes.zscore(loss)
        return (loss, z) if z > spikes.threshold else None

    def _warn(self, message: str) -> None:
        if self.dist.is_main:
            print(f"warning: {message}", flush=True)

    # -- tear-down ---------------------------------------------------------------------------
    def close(self, restore_signals: bool = False) -> None:
        """Drop the engine and the loaders and release their shared memory: the next run in this process
        starts clean (streaming keeps every shared-memory block open until the process exits otherwise)."""
        if restore_signals:
            self.control.uninstall()
        if self.logger is not None and self.logger.wandb is not None:
            self.logger.wandb.finish(exit_code=1)  # still open: the run failed before its end
        self.callbacks = []
        self.evaluator = self.logger = None
        if self.engine is not None:
            module = getattr(self.engine, "module", None)
            try:  # its hooks (held by torch's C++ side, out of the garbage collector's sight) would keep it alive
                self.engine.destroy()
            except Exception as e:  # noqa: BLE001  (closing after a failure: report it, do not hide the failure)
                self._warn(f"DeepSpeed engine.destroy() failed ({type(e).__name__}: {e}); its memory may be kept "
                           "until the process ends")
            # ZeRO-3 keeps every engine alive through two module-level references that destroy() leaves
            # (DeepSpeed 0.19): the root module on parameter_offload.FWD_MODULE_STACK, pushed when its hooks are
            # set up and never popped, and the class-wide lru_cache of the coordinator's __params_to_release
            # (keys: coordinator, submodule). Through the module's hooks they hold the engine, its optimizer,
            # its process-group handles (sockets, gloo threads) and its memory. The cache is only a cache: an
            # engine still alive in this process recomputes what it needs.
            import sys

            offload = sys.modules.get("deepspeed.runtime.zero.parameter_offload")
            if offload is not None and module is not None:
                offload.FWD_MODULE_STACK[:] = [m for m in offload.FWD_MODULE_STACK if m is not module]
            coordinator = sys.modules.get("deepspeed.runtime.zero.partitioned_param_coordinator")
            cached = getattr(getattr(coordinator, "PartitionedParameterCoordinator", None),
                             "_PartitionedParameterCoordinator__params_to_release", None)
            # the lru_cache wrapper sits inside instrument_w_nvtx's wrapper (no functools.wraps: in its closure)
            for fn in [cached, *(c.cell_contents for c in getattr(cached, "__closure__", None) or ())]:
                if hasattr(fn, "cache_clear"):
                    fn.cache_clear()
            del module
        self.engine = self.loader = self.val = None
        self.val_per_source = {}
        gc.collect()
        if self._shm_before is not None:
            from .data import release_streaming_memory

            release_streaming_memory(self._shm_before)


def _poison_weight(engine) -> None:
    """Fault ``train.nan_weight``: a NaN into the first weight of the model (every rank alike), as an update gone bad."""
    import torch

    with torch.no_grad():
        next(engine.module.parameters()).view(-1)[0] = float("nan")


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
    from .checkpoint import atomic_write_text

    atomic_write_text(path, json.dumps(record, indent=1))


def _quiet_deepspeed() -> None:
    import logging

    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)


# -- running a launch ------------------------------------------------------------------------

def run_launch(cfg, ds_config: dict, *, stop_after_steps: int = 0, in_process: bool = False) -> TrainResult:
    """One launch of a checked config on this process's rank: set up the process group, train, clean up.

    Raises LaunchError with the exit code for a checkpoint that cannot be used (3) or an unstable
    run (4).
    """
    import torch.distributed

    from .checkpoint import CheckpointError
    from .config_loader import ConfigError
    from .distributed import init_distributed, release_shared_memory, world_from_env
    from .hardware import choose_precision, detect, plan_threads

    hw = detect()
    _, _, _, local_world = world_from_env()
    threads = plan_threads(hw, local_world, cfg.data.num_workers)
    precision = choose_precision(cfg.train.precision, hw)
    dist = init_distributed(threads.threads)
    trainer = Trainer(cfg, ds_config, dist, hardware=hw, precision=precision, threads=threads,
                      stop_after_steps=stop_after_steps)
    try:
        try:
            result = trainer.setup().fit()
        except CheckpointError as e:
            raise LaunchError(EXIT_CHECKPOINT_ERROR, str(e)) from None
        except ConfigError as e:  # found only at set-up (e.g. checkpoint.init_from's weights)
            raise LaunchError(EXIT_CONFIG_ERROR, str(e)) from None
        except TrainingUnstable as e:
            raise LaunchError(EXIT_UNSTABLE, str(e)) from None
        barrier()
        return result
    finally:
        trainer.close(restore_signals=in_process)
        release_shared_memory(dist)
        if torch.distributed.is_initialized():
            import deepspeed.comm

            deepspeed.comm.destroy_process_group()  # also drops DeepSpeed's cached groups (the next run's are new)


@contextlib.contextmanager
def temporary_env(values: dict[str, str]):
    """``os.environ`` updated with ``values`` inside the block, and put back as it was afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _world_of_one():
    """A world of one in this process when no launcher set one up; the environment is restored afterwards."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        yield
        return
    from .distributed import _free_port

    with temporary_env({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}):
        yield


def train(config: str | Path, overrides: Sequence[str] = (), *, stop_after_steps: int = 0) -> TrainResult:
    """Run ``config`` with ``KEY=VALUE`` overrides in this process; return the run directory and final metrics.

    Without a launcher this is a world of one; under ``torchrun``/``deepspeed`` every rank calls it.
    Raises ConfigError for a bad config and LaunchError for a run that could not finish. Runs in a
    row do not leak state: the process group, DeepSpeed's buffers, streaming's shared memory, the
    torch thread count and the signal handlers are put back.
    """
    import torch

    from .distributed import world_from_env
    from .run_config import load_and_resolve

    threads_before = torch.get_num_threads()
    with _world_of_one():
        _, world_size, _, _ = world_from_env()
        cfg, ds_config = load_and_resolve(config, overrides, world_size)
        try:
            return run_launch(cfg, ds_config, stop_after_steps=stop_after_steps, in_process=True)
        finally:
            torch.set_num_threads(threads_before)
