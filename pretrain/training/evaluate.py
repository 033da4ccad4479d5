"""Validation loss over a fixed set of validation sequences, split over ranks: its config, the
function, and the callback that runs it during training."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..distributed import all_reduce_sum
from .callbacks import Callback, _due

if TYPE_CHECKING:
    from ..trainer import Trainer


@dataclass
class EvalConfig:
    interval: int = 100  # validate every N updates (and always after the last); 0: only at the end
    max_samples: int = 256  # validation sequences (over all ranks), the same fixed ones every time

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.interval < 0:
            problems.append(("interval", "an integer >= 0"))
        if self.max_samples < 1:
            problems.append(("max_samples", "an integer >= 1"))
        return problems


class EvalCallback(Callback):
    """Validation loss over a fixed set of validation sequences, split over ranks.

    The set is ``max_samples`` sequences spread evenly over the validation
    split (so every source of per-source data is covered), the same at every
    evaluation whatever the training position; rank r takes every world-th one.
    """

    def __init__(self, val_dataset, interval: int, max_samples: int, batch_size: int):
        self.dataset = val_dataset
        self.interval = interval
        self.max_samples = max_samples
        self.batch_size = batch_size

    def _batches(self, ctx: "Trainer"):
        from ..data import collate_tokens

        total = self.dataset.num_samples  # len() would be the per-rank share
        n = min(self.max_samples, total)
        chosen = [i * total // n for i in range(n)]
        mine = chosen[ctx.dist.rank :: ctx.dist.world_size]
        for i in range(0, len(mine), self.batch_size):
            yield collate_tokens([self.dataset[j] for j in mine[i : i + self.batch_size]])

    def evaluate(self, ctx: "Trainer") -> float:
        from .step import eval_loss

        loss_sum, count = eval_loss(ctx.engine, self._batches(ctx), ctx.seq_len, ctx.dist.device)
        loss_sum, count = all_reduce_sum([loss_sum, float(count)], ctx.dist.device)
        return loss_sum / max(count, 1.0)

    def on_step_end(self, ctx: "Trainer", metrics: dict[str, Any]) -> None:
        if _due(ctx.state.step, self.interval, ctx.state.max_steps):
            t0 = time.perf_counter()
            metrics["val_loss"] = self.evaluate(ctx)
            metrics["val_ppl"] = math.exp(min(metrics["val_loss"], 50.0))
            metrics["eval_time_s"] = time.perf_counter() - t0
