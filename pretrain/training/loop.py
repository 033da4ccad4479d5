"""The training loop: set the LR from the global step, fetch data, step, run callbacks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from ..distributed import DistInfo, all_reduce_sum
from ..schedules import Schedule, set_lr
from .callbacks import Callback
from .control import RunControl
from .state import TrainState
from .step import train_step


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
    first_step = state.step
    last = time.perf_counter()
    while not state.done:
        multiplier = schedule(state.step)
        set_lr(engine.optimizer, multiplier)
        t0 = time.perf_counter()
        micro_batches = [next(batches) for _ in range(grad_accum)]
        data_wait = time.perf_counter() - t0
        out = train_step(engine, micro_batches, ctx.seq_len, ctx.dist.device, ctx.z_loss)
        state.step += 1
        state.tokens += ctx.tokens_per_step
        # One collective per step: the loss terms and every rank's stop/save flags.
        flags = ctx.control.local_flags(state.step - first_step) if ctx.control else [0.0, 0.0]
        loss, z_loss, stop, save_due = all_reduce_sum([out.loss, out.z_loss, *flags], ctx.dist.device)
        loss, z_loss = loss / ctx.dist.world_size, z_loss / ctx.dist.world_size
        state.stop, state.save_due = stop > 0 and not state.done, save_due > 0
        now = time.perf_counter()
        step_time, last = now - last, now
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
            "tokens_per_s": ctx.tokens_per_step / step_time,
        }
        for group in engine.optimizer.param_groups:
            if "name" in group:
                metrics[f"lr/{group['name']}"] = group["lr"]
        for cb in callbacks:
            cb.on_step_end(ctx, metrics)
        if state.stop:
            break
    for cb in callbacks:
        cb.on_train_end(ctx)
    return state
