"""The counters a run advances; checkpoints store these, never hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass


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
