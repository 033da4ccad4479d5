"""The counters a run advances; checkpoints store these, never hyperparameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class TrainState:
    step: int = 0  # optimizer updates completed
    tokens: int = 0  # training tokens consumed, over all ranks
    max_steps: int = 0

    @property
    def done(self) -> bool:
        return self.step >= self.max_steps

    def to_dict(self) -> dict:
        return asdict(self)
