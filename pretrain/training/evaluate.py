"""Validation loss over a fixed set of validation sequences, split over ranks: its config, the
function (used in training and by ``python -m pretrain.evaluate``), and the training callback."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ..distributed import all_reduce_sum
from .callbacks import Callback, TrainContext, _due


@dataclass
class EvalConfig:
    interval: int = 100  # validate every N updates (and always after the last); 0: only at the end
    max_samples: int = 256  # validation sequences (over all ranks), the same fixed ones every time
    at_start: bool = True  # also validate the initial weights (a step-0 record) in a fresh run
    per_source: bool = True  # per-source data: also the loss of each source (val_loss/<source>)

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.interval < 0:
            problems.append(("interval", "an integer >= 0"))
        if self.max_samples < 1:
            problems.append(("max_samples", "an integer >= 1"))
        return problems


def fixed_indices(total: int, max_samples: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """``max_samples`` sample indices spread evenly over ``total`` (every source of per-source data is
    covered), the same at every evaluation; rank r takes every world-th one."""
    n = min(max_samples, total)
    return [i * total // n for i in range(n)][rank::world_size]


def validation_loss(model, dataset, seq_len: int, max_samples: int, batch_size: int, device: str,
                    rank: int = 0, world_size: int = 1) -> float:
    """Mean token cross-entropy of ``model`` (a DeepSpeed engine or a plain module) over the fixed set."""
    from ..data import collate_tokens
    from .step import eval_loss

    mine = fixed_indices(dataset.num_samples, max_samples, rank, world_size)  # len() would be the per-rank share
    batches = (collate_tokens([dataset[j] for j in mine[i:i + batch_size]]) for i in range(0, len(mine), batch_size))
    loss_sum, count = eval_loss(model, batches, seq_len, device)
    loss_sum, count = all_reduce_sum([loss_sum, float(count)], device)
    return loss_sum / max(count, 1.0)


class EvalCallback(Callback):
    """Validation loss every ``interval`` updates and after the last (``val_loss``, ``val_ppl``), and per source
    (``val_loss/<source>``) when ``per_source`` holds a validation dataset per source."""

    def __init__(self, val_dataset, cfg: EvalConfig, batch_size: int, per_source: dict | None = None):
        self.dataset = val_dataset
        self.cfg = cfg
        self.batch_size = batch_size
        self.per_source = per_source or {}

    def metrics(self, ctx: TrainContext) -> dict[str, float]:
        t0 = time.perf_counter()
        d = ctx.dist
        loss = validation_loss(ctx.engine, self.dataset, ctx.seq_len, self.cfg.max_samples, self.batch_size, d.device,
                               d.rank, d.world_size)
        out = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0))}
        share = max(1, self.cfg.max_samples // max(1, len(self.per_source)))
        for name, ds in self.per_source.items():
            out[f"val_loss/{name}"] = validation_loss(ctx.engine, ds, ctx.seq_len, share, self.batch_size, d.device,
                                                      d.rank, d.world_size)
        out["eval_time_s"] = time.perf_counter() - t0
        return out

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        if _due(ctx.state.step, self.cfg.interval, ctx.state.max_steps):
            metrics.update(self.metrics(ctx))
