"""The training loop: set the LR from the global step, fetch data, step, guard, run callbacks."""

from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from ..distributed import DistInfo, all_reduce_sum
from ..schedules import Schedule, set_lr
from .callbacks import Callback
from .control import RunControl
from .state import TrainState
from .step import StepOutput, train_step

NAN_TEST_ENV = "PRETRAIN_TEST_NAN_AT_STEPS"  # test-only: "3,4" makes those updates' loss NaN on every rank
NOISE_TEST_ENV = "PRETRAIN_TEST_NOISE_AT_STEPS"  # test-only: those updates get uniformly random tokens (a spike)


def _steps_from_env(name: str) -> set[int]:
    return {int(s) for s in os.environ.get(name, "").split(",") if s.strip()}


class TrainingUnstable(RuntimeError):
    """Too many consecutive non-finite updates: stop, keeping the last good checkpoint."""


@dataclass
class TrainContext:
    """What callbacks may look at: the engine, the counters and the process layout."""

    engine: Any
    state: TrainState
    dist: DistInfo
    seq_len: int
    micro_batch_size: int
    tokens_per_step: int
    z_loss: float = 0.0  # weight of the z-loss term (GPTConfig.z_loss)
    control: Optional[RunControl] = None  # signals, time-based saves, per-launch step limit
    flops_per_token: float = 0.0  # training FLOPs per token (GPTConfig.flops_per_token)
    peak_flops: Optional[float] = None  # the device's dense bf16 peak, for MFU (None on CPU)
    max_consecutive_skips: int = 5
    spike_window: int = 100
    spike_threshold: float = 6.0
    skip_spikes: bool = False  # decide on a spike before the update (one extra forward pass) and skip it
    log_interval: int = 10


class SpikeDetector:
    """A loss more than ``threshold`` standard deviations above the rolling mean of the last ``window``."""

    def __init__(self, window: int, threshold: float):
        self.recent: deque = deque(maxlen=max(window, 1))
        self.window, self.threshold = window, threshold

    @property
    def ready(self) -> bool:
        return bool(self.window) and len(self.recent) == self.window

    def z(self, loss: float) -> Optional[float]:
        """The loss's z-score if it is a spike (the spike is then kept out of the statistics)."""
        if self.ready:
            mean = sum(self.recent) / self.window
            std = math.sqrt(sum((x - mean) ** 2 for x in self.recent) / self.window)
            z = (loss - mean) / max(std, 1e-8)
            if z > self.threshold:
                return z
        self.recent.append(loss)
        return None


def _spike_precheck(ctx: "TrainContext", micro_batches, spikes: SpikeDetector) -> Optional[tuple[float, float]]:
    """(loss, z) when this update's batches give a loss spike (an extra forward, same on all ranks)."""
    from .step import eval_loss

    loss_sum, count = eval_loss(ctx.engine, micro_batches, ctx.seq_len, ctx.dist.device)
    loss_sum, count = all_reduce_sum([loss_sum, float(count)], ctx.dist.device)
    loss = loss_sum / count
    if not math.isfinite(loss):
        return None  # left to the non-finite guard
    mean = sum(spikes.recent) / spikes.window
    std = math.sqrt(sum((x - mean) ** 2 for x in spikes.recent) / spikes.window)
    z = (loss - mean) / max(std, 1e-8)
    return (loss, z) if z > spikes.threshold else None


def param_norm(engine) -> float:
    """Global L2 norm of the parameters (ZeRO-3 partitions summed over ranks)."""
    import torch
    import torch.distributed as dist

    partitioned = engine.zero_optimization_partition_weights()
    total = torch.zeros((), dtype=torch.float64, device=next(engine.module.parameters()).device)
    for p in engine.module.parameters():
        t = p.ds_tensor if partitioned and hasattr(p, "ds_tensor") else p
        total += t.detach().double().pow(2).sum()
    if partitioned and dist.is_initialized():
        dist.all_reduce(total)
    return math.sqrt(total.item())


def memory_gb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def train(
    ctx: TrainContext,
    batches: Iterator[Any],
    schedule: Schedule,
    grad_accum: int,
    callbacks: Sequence[Callback],
) -> TrainState:
    state, engine = ctx.state, ctx.engine
    for cb in callbacks:
        cb.on_train_start(ctx)
    group0 = engine.optimizer.param_groups[0]
    peak_lr = group0["base_lr"] / group0.get("lr_mult", 1.0)
    poison, noise = _steps_from_env(NAN_TEST_ENV), _steps_from_env(NOISE_TEST_ENV)
    spikes = SpikeDetector(ctx.spike_window, ctx.spike_threshold)
    first_step, consecutive_skips, skipped_total = state.step, 0, 0
    last = time.perf_counter()
    while not state.done:
        multiplier = schedule(state.step)
        set_lr(engine.optimizer, multiplier)
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(grad_accum)]
        data_wait = time.perf_counter() - t0
        if state.step + 1 in noise:
            import torch

            micro_batches = [torch.randint_like(b, int(b.max()) + 1) for b in micro_batches]
        spike = _spike_precheck(ctx, micro_batches, spikes) if ctx.skip_spikes and spikes.ready else None
        if spike is not None:  # skip the update: these batches are consumed, the weights are not touched
            out = StepOutput(loss=spike[0], z_loss=0.0, grad_norm=float("nan"), skipped=True)
        else:
            out = train_step(engine, micro_batches, ctx.seq_len, ctx.dist.device, ctx.z_loss, poison=state.step + 1 in poison)
        state.step += 1
        state.tokens += ctx.tokens_per_step
        # One collective per step: the loss terms and every rank's stop/save flags.
        flags = ctx.control.local_flags(state.step - first_step) if ctx.control else [0.0, 0.0]
        loss, z_loss, stop, save_due = all_reduce_sum([out.loss, out.z_loss, *flags], ctx.dist.device)
        loss, z_loss = loss / ctx.dist.world_size, z_loss / ctx.dist.world_size
        state.stop, state.save_due = stop > 0 and not state.done, save_due > 0
        now = time.perf_counter()
        step_time, last = now - last, now
        tokens_per_s = ctx.tokens_per_step / step_time
        metrics: dict[str, Any] = {
            "step": state.step,
            "loss": loss,
            "lr": peak_lr * multiplier,  # the schedule's LR; each group scales it by its lr_mult
            "lr_multiplier": multiplier,
            "tokens": state.tokens,
            "grad_norm": out.grad_norm,
            **({"z_loss": z_loss} if ctx.z_loss else {}),
            "step_time_s": step_time,
            "data_wait_s": data_wait,
            "tokens_per_s": tokens_per_s,
            "samples_per_s": tokens_per_s / ctx.seq_len,
            "tflops": ctx.flops_per_token * tokens_per_s / 1e12,
        }
        if ctx.peak_flops:
            metrics["mfu"] = ctx.flops_per_token * tokens_per_s / ctx.dist.world_size / ctx.peak_flops
        for group in engine.optimizer.param_groups:
            if "name" in group:
                metrics[f"lr/{group['name']}"] = group["lr"]

        # Stability guards. DeepSpeed skips an update whose gradients are not finite (the
        # same decision on every rank: it follows from the all-reduced gradient norm).
        if spike is not None:
            skipped_total += 1
            metrics.update(skipped=1, skipped_total=skipped_total, loss_spike_z=spike[1])
            if ctx.dist.is_main:
                print(f"warning: step {state.step}: loss spike {loss:.4f} ({spike[1]:.1f} std above the last "
                      f"{ctx.spike_window} updates); update skipped", flush=True)
        elif out.skipped or not math.isfinite(loss):
            consecutive_skips += 1
            skipped_total += 1
            metrics.update(skipped=1, skipped_total=skipped_total)
            if ctx.dist.is_main:
                print(f"warning: step {state.step}: non-finite loss or gradients ({loss}); update skipped "
                      f"({consecutive_skips} in a row)", flush=True)
            if consecutive_skips >= ctx.max_consecutive_skips:
                raise TrainingUnstable(
                    f"{consecutive_skips} consecutive updates skipped as non-finite (steps {state.step - consecutive_skips + 1}"
                    f"..{state.step}); stopping, the last good checkpoint is kept"
                )
        else:
            consecutive_skips = 0
            z = spikes.z(loss)
            if z is not None:
                metrics["loss_spike_z"] = z
                if ctx.dist.is_main:
                    print(f"warning: step {state.step}: loss spike {loss:.4f} ({z:.1f} std above the last "
                          f"{ctx.spike_window} updates)", flush=True)
        if state.step % ctx.log_interval == 0 or state.done:
            metrics["param_norm"] = param_norm(engine)
            metrics["memory_gb"] = memory_gb(ctx.dist.device)

        for cb in callbacks:
            cb.on_step_end(ctx, metrics)
        if state.stop:
            break
    for cb in callbacks:
        cb.on_train_end(ctx)
    return state
