"""GPT pretraining with DeepSpeed ZeRO on mosaicml-streaming data.

Importing this package has no side effects and imports neither torch nor
DeepSpeed; the heavy modules are imported where they are used.

In-process runs (a world of one without a launcher)::

    from pretrain import train
    result = train("configs/demo_cpu.yaml", ["train.max_steps=50"])
    result.run_dir, result.val_loss, result.last["loss"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._version import __version__  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from pathlib import Path

    from .trainer import TrainResult


def train(config: str | Path, overrides: Sequence[str] = (), *, stop_after_steps: int = 0) -> TrainResult:
    """Train ``config`` with ``KEY=VALUE`` overrides in this process; see :func:`pretrain.trainer.train`."""
    from .trainer import train as _train

    return _train(config, overrides, stop_after_steps=stop_after_steps)
