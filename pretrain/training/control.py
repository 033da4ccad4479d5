"""Run control: preemption signals and time-based saves, decided for all ranks alike.

SIGTERM or SIGUSR1 to any rank sets a local flag; the loop sums the flags of all
ranks with the step's loss (one collective), so every rank finishes the same
step, saves the same checkpoint and exits with ``EXIT_INCOMPLETE``. A second
signal only sets the flag again.
"""

from __future__ import annotations

import signal
import time

from ..errors import EXIT_INCOMPLETE  # noqa: F401  (re-exported: saved and stopped before max_steps)

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class RunControl:
    def __init__(self, save_minutes: float = 0.0, stop_after_steps: int = 0):
        self.save_minutes = save_minutes
        self.stop_after_steps = stop_after_steps  # this launch stops (and saves) after that many updates; 0: never
        self.signal: int = 0
        self.last_save = time.monotonic()

    def install(self) -> RunControl:
        """Handle the signals from now on (kept through the process's exit: see Trainer.fit)."""
        self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def uninstall(self) -> None:
        """Put back the handlers from before :meth:`install` (an in-process run that is over)."""
        for sig, handler in getattr(self, "_previous", {}).items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        self.signal = signum  # acted on after the current step; harmless if repeated

    def local_flags(self, steps_this_launch: int) -> list[float]:
        """[stop requested, time-based save due] as seen by this rank."""
        stop = bool(self.signal) or (self.stop_after_steps > 0 and steps_this_launch >= self.stop_after_steps)
        due = self.save_minutes > 0 and time.monotonic() - self.last_save >= 60.0 * self.save_minutes
        return [float(stop), float(due)]

    def saved(self) -> None:
        self.last_save = time.monotonic()
