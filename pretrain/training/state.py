"""The counters a run advances, and the per-rank state a checkpoint holds, captured and restored here.

A checkpoint stores counters (step, tokens), each rank's data-loader position and RNG states,
never hyperparameters: the config of the launch that loads it wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class TrainState:
    step: int = 0  # optimizer updates completed
    tokens: int = 0  # training tokens consumed, over all ranks
    max_steps: int = 0
    # Decided for all ranks alike after each update (not saved):
    stop: bool = False  # a preemption signal or the launch's step limit: save, then exit
    save_due: bool = False  # the time-based checkpoint interval has passed

    @property
    def done(self) -> bool:
        return self.step >= self.max_steps

    def to_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens}


def capture(loader) -> dict[str, Any]:
    """This rank's state beside the counters: its data position and its RNG states."""
    from .rng import capture_rng

    return {"data": loader.state_dict() if loader is not None else None, "rng": capture_rng()}


def restore(saved: dict[str, Any], state: TrainState, loader, restore_rng: bool = True,
            load_data: bool = True) -> dict[str, Any] | None:
    """Put a checkpoint's per-rank state back (the inverse of :func:`capture` plus the counters)."""
    from .rng import restore_rng as _restore_rng

    state.step, state.tokens = saved["state"]["step"], saved["state"]["tokens"]
    if load_data and saved.get("data") is not None and loader is not None:
        problem = data_position_problem(saved["data"], loader.dataset.num_samples)
        if problem:
            from ..checkpoint import CheckpointError

            raise CheckpointError(problem)
        loader.load_state_dict(saved["data"])
    if restore_rng and saved.get("rng") is not None:
        _restore_rng(saved["rng"])
    return saved


def data_position_problem(position: dict[str, Any], num_samples: int) -> str | None:
    """Why a saved data position cannot be resumed in a dataset of ``num_samples``, or None."""
    at = position.get("sample_in_epoch", 0)
    if at > num_samples:
        return (f"the checkpoint's data position (epoch {position.get('epoch')}, sample {at}) does not fit the "
                f"training data ({num_samples} samples): it was saved on other data. To start a fresh, seeded order "
                "on this data, set checkpoint.load_data_state=false")
    return None
