"""Pieces of the training loop (the loop itself is ``Trainer._loop`` in pretrain/trainer.py):
the loss-spike detector, the parameter norm and the memory in use."""

from __future__ import annotations

import math
from collections import deque


class SpikeDetector:
    """A loss more than ``threshold`` standard deviations above the rolling mean of the last ``window``."""

    def __init__(self, window: int, threshold: float):
        self.recent: deque = deque(maxlen=max(window, 1))
        self.window, self.threshold = window, threshold

    @property
    def ready(self) -> bool:
        return bool(self.window) and len(self.recent) == self.window

    def zscore(self, loss: float) -> float:
        """How many standard deviations ``loss`` is above the window's mean (the window must be full)."""
        mean = sum(self.recent) / self.window
        std = math.sqrt(sum((x - mean) ** 2 for x in self.recent) / self.window)
        return (loss - mean) / max(std, 1e-8)

    def observe(self, loss: float) -> float | None:
        """The loss's z-score if it is a spike (a spike is kept out of the statistics); else None."""
        if self.ready:
            z = self.zscore(loss)
            if z > self.threshold:
                return z
        self.recent.append(loss)
        return None


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
