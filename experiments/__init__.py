"""Experiment harness: the papers' LR-schedule studies from one command.

A study module (``skiplr``, ``d2z``, ``wsd``, ``forecast``) has ``build(scale, seeds) -> Study``: its base config
per scale, its grid of runs and branches, and its report. :mod:`experiments.runner` runs what is not yet
finished; :mod:`experiments.estimate` prices a study before it runs; :mod:`experiments.stats` holds the
statistics. Importing this package imports neither torch nor DeepSpeed.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from .study import Study

_MODULES = ("skiplr", "d2z", "wsd", "forecast")


class _Registry(dict):
    """Study name -> module, imported on first use."""

    def __getitem__(self, name: str) -> ModuleType:
        return importlib.import_module(f"{__name__}.{name}")

    def items(self):
        return [(n, self[n]) for n in self]


STUDIES: dict[str, ModuleType] = _Registry.fromkeys(_MODULES)  # type: ignore[assignment]


def build_study(name: str, scale: str = "cpu", *, seeds: int | None = None, overrides: Sequence[str] = (),
                out: Path | None = None, full_grid: bool = False, variant: str | None = None) -> Study:
    """Study ``name`` at ``scale``, with ``overrides`` added to every run (after the study's own: they win);
    ``variant``: a study's named variant (skiplr: pretrained, scratch)."""
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    extra = {"variant_name": variant} if variant else {}
    if variant and name != "skiplr":
        raise ValueError(f"study {name!r} has no variants (--variant {variant})")
    study: Study = STUDIES[name].build(scale, seeds=seeds, out=out, full_grid=full_grid, overrides=overrides, **extra)
    if overrides:
        runs = [dataclasses.replace(r, overrides=tuple(r.overrides) + tuple(overrides)) for r in study.runs]
        study = dataclasses.replace(study, runs=runs)
    return study
