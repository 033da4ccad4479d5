"""Exit codes and the error types that cross layers: one definition of each.

A leaf module (it imports nothing of the package), so every layer can import it downward. The
command-line entry points turn these errors into their exit codes:

=====  ===========================  ==========================================================
code   constant                     meaning
=====  ===========================  ==========================================================
0                                   done: the run reached ``train.max_steps``
2      ``EXIT_CONFIG_ERROR``        a bad config, flag or input, refused before any work
3      ``EXIT_CHECKPOINT_ERROR``    a checkpoint that cannot be used (incomplete, corrupt, unsafe, not fitting)
4      ``EXIT_UNSTABLE``            too many consecutive non-finite updates, or non-finite weights
75     ``EXIT_INCOMPLETE``          saved and stopped before max_steps (a signal, --stop-after-steps):
                                    relaunch to continue (SLURM scripts requeue on it; EX_TEMPFAIL)
=====  ===========================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_CONFIG_ERROR = 2
EXIT_CHECKPOINT_ERROR = 3
EXIT_UNSTABLE = 4
EXIT_INCOMPLETE = 75


class ConfigError(ValueError):
    """One or more configuration problems, each on its own line."""

    def __init__(self, problems: Iterable[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            msg = f"invalid configuration: {self.problems[0]}"
        else:
            msg = "invalid configuration:\n  " + "\n  ".join(self.problems)
        super().__init__(msg)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, incomplete, corrupt or not fitting the config."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint file holds a pickled object other than weights: refused, never executed."""


class TrainingUnstable(RuntimeError):
    """Too many consecutive non-finite updates, or non-finite weights: stop, keeping the last good checkpoint."""


class LaunchError(RuntimeError):
    """A launch that could not finish, with the exit code its command returns."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class RunDirError(ValueError):
    """A directory that is not (or not yet) what a command expects of a run directory."""
