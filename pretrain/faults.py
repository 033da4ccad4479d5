"""Fault injection for tests: every named point where a test can make a run misbehave, in one place.

A test arms points with one environment variable holding JSON, read once per process::

    PRETRAIN_FAULTS='{"train.nan_loss": [3, 4], "checkpoint.pause": "marker@1#6"}'

=======================  ===================================================================
point                    what it does
=======================  ===================================================================
``train.nan_loss``       list of updates whose loss (and so gradients) is NaN on every rank
``train.noise_tokens``   list of updates whose batches are replaced by uniformly random tokens
``train.nan_weight``     list of updates after which a weight of the model is NaN on every rank
``checkpoint.pause``     ``phase[@rank][#step]``: the save blocks forever at that phase (one of
                         ``checkpoint.SAVE_PHASES``) so the test can ``kill -9`` it there
``data_prep.units``      ``{"pause_s", "fail_unit", "kill_unit", "flush_tokens"}`` for the
                         tokenize workers (see ``data_prep.pipeline``)
=======================  ===================================================================

The hot loops call :func:`step_hit`, a dictionary lookup that returns at once when nothing is
armed. Unset, nothing here has any effect.
"""

from __future__ import annotations

import json
import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

ENV = "PRETRAIN_FAULTS"
POINTS = ("train.nan_loss", "train.noise_tokens", "train.nan_weight", "checkpoint.pause", "data_prep.units")


@lru_cache(maxsize=1)
def _armed(raw: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        armed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"${ENV}: expected a JSON object of fault points ({e})") from None
    unknown = sorted(set(armed) - set(POINTS)) if isinstance(armed, dict) else ["(not an object)"]
    if unknown:
        raise ValueError(f"${ENV}: unknown fault points {unknown}; known: {', '.join(POINTS)}")
    return armed


def armed() -> dict[str, Any]:
    """The armed points of this process ({} when ``$PRETRAIN_FAULTS`` is unset)."""
    return _armed(os.environ.get(ENV, ""))


def get(point: str, default: Any = None) -> Any:
    return armed().get(point, default)


def step_hit(point: str, step: int) -> bool:
    """Whether ``point`` (a list of steps) is armed for update ``step``. Cheap: for the training loop."""
    steps = armed().get(point)
    return bool(steps) and step in steps


def pause(phase: str, rank: int, root: Path, step: int) -> None:
    """``checkpoint.pause``: block forever at ``phase`` (after leaving a marker file in ``root``)."""
    want = armed().get("checkpoint.pause")
    if not want:
        return
    want, _, at_step = want.partition("#")
    name, _, who = want.partition("@")
    if name == phase and (not who or int(who) == rank) and (not at_step or int(at_step) == step):
        (Path(root) / f".paused-{phase}-rank{rank}").touch()
        while True:
            time.sleep(1)


def arm(points: dict[str, Any]) -> dict[str, str]:
    """The environment entry that arms ``points``, for a test's subprocess: ``env={**os.environ, **arm({...})}``."""
    unknown = sorted(set(points) - set(POINTS))
    if unknown:
        raise ValueError(f"unknown fault points {unknown}; known: {', '.join(POINTS)}")
    return {ENV: json.dumps(points)}
