"""A study: a base run config, the runs it needs (a grid of overrides x seeds, plus branches), and a report.

Every run is named by a hash of what determines its result: the config after its overrides (less the
sections that only say where things go: name, run_dir, logging, checkpoint), and, for a branch, its
parent's name and the step it branches at. The same study on the same config therefore gives the same
run names on every machine and every rerun, which is what makes a finished run never redone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pretrain.run_config import RunConfig

# Sections that change where a run writes, never what it computes.
UNHASHED = ("name", "run_dir", "logging", "checkpoint")


@dataclass(frozen=True)
class RunSpec:
    """One run of a study.

    ``overrides`` are dotted ``KEY=VALUE`` on the study's base config (the seed included, as
    ``train.seed=N``). ``params`` are the run's coordinates in the study (schedule, lr, tpp, seed, role,
    ...): the columns of ``runs.csv`` and what the report groups by. A branch starts from ``parent``'s
    checkpoint at ``branch_step`` (the runner saves that checkpoint permanently in the parent). A run with
    ``init_from`` starts from that run's weights at ``init_step`` only (``checkpoint.init_from``: a fresh
    optimizer, schedule and step counter); the parent must keep that step (``keep``).
    """

    label: str
    overrides: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)
    parent: str | None = None  # label of the run this one branches from
    branch_step: int | None = None
    keep: tuple[int, ...] = ()  # steps whose checkpoints the study needs besides branch points (e.g. to merge)
    isolated: bool = False  # runs in its own process, never in a standing worker (e.g. a launcher under test)
    init_from: str | None = None  # label of the run whose weights at init_step this run starts from (step 0)
    init_step: int | None = None

    def __post_init__(self):
        if (self.parent is None) != (self.branch_step is None):
            raise ValueError(f"run {self.label!r}: a branch needs both parent and branch_step")
        if (self.init_from is None) != (self.init_step is None) or (self.init_from and self.parent):
            raise ValueError(f"run {self.label!r}: init_from needs init_step, and excludes a parent")


class Results(Protocol):
    """What a study's report gets: the runs by label, once run (:class:`experiments.runner.StudyResults`).

    Declared here so that this module needs nothing of the runner (the runner imports the study, not the
    other way round)."""

    study: Study
    records: Mapping[str, Any]  # label -> experiments.runner.RunRecord
    out: Path

    def __getitem__(self, label: str) -> Any: ...

    def select(self, **params: Any) -> list[Any]: ...

    def values(self, key: str) -> list[Any]: ...


@dataclass
class Study:
    """What ``python -m experiments NAME`` runs: ``runs`` on ``config``, then ``report``."""

    name: str
    config: Path
    runs: list[RunSpec]
    report: Callable[[Results, Path], str]  # writes figures into the directory, returns report.md's text
    notes: list[str] = field(default_factory=list)  # said in the dry run and the report (what this scale cannot show)
    dynamic: bool = False  # its runs depend on finished runs (build again after running, until nothing new appears)
    # A dynamic study's runs not known yet, priced by the dry run (experiments.estimate): name -> runs, e.g.
    # {"expected": [...], "worst case": [...]}. Never run from here: the study adds them once they are known.
    projected: dict[str, list[RunSpec]] = field(default_factory=dict)

    def __post_init__(self):
        labels = [r.label for r in self.runs]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"study {self.name!r}: run labels must be unique; repeated: {dupes}")
        by_label = {r.label: r for r in self.runs}
        for r in self.runs:
            if r.parent is not None and r.parent not in by_label:
                raise ValueError(f"study {self.name!r}: run {r.label!r} branches from unknown run {r.parent!r}")
            if r.init_from is not None and r.init_from not in by_label:
                raise ValueError(f"study {self.name!r}: run {r.label!r} starts from unknown run {r.init_from!r}")
        self._by_label = by_label
        self._keys: dict[str, str] = {}

    def spec(self, label: str) -> RunSpec:
        return self._by_label[label]

    def load_config(self, run: RunSpec) -> RunConfig:
        """The run's typed config (base YAML + overrides), before any file is checked."""
        from pretrain.run_config import load_run_config

        return load_run_config(self.config, list(run.overrides))

    def key(self, run: RunSpec) -> str:
        """The run's name: 12 hex digits of a hash of its config, seed and branch point."""
        if run.label not in self._keys:
            cfg = self.load_config(run).to_dict()
            blob: dict[str, Any] = {k: v for k, v in cfg.items() if k not in UNHASHED}
            if run.parent is not None:
                blob["branch"] = {"parent": self.key(self.spec(run.parent)), "step": run.branch_step}
            if run.init_from is not None:  # checkpoint.init_from is not hashed (a path): the weights' run is
                blob["init"] = {"parent": self.key(self.spec(run.init_from)), "step": run.init_step}
            text = json.dumps(blob, sort_keys=True, default=str).encode()
            self._keys[run.label] = hashlib.sha256(text).hexdigest()[:12]
        return self._keys[run.label]

    def children(self, run: RunSpec) -> list[RunSpec]:
        """The run's branches, the projected ones included (its branch points must be kept before they exist)."""
        projected = [r for runs in self.projected.values() for r in runs]
        return [r for r in [*self.runs, *projected] if r.parent == run.label]

    def waves(self) -> list[list[RunSpec]]:
        """Runs in dependency order: roots first, then branches of the wave before, and so on."""
        done: set[str] = set()
        out = []
        left = list(self.runs)
        while left:
            wave = [r for r in left if all(p is None or p in done for p in (r.parent, r.init_from))]
            out.append(wave)
            done.update(r.label for r in wave)
            left = [r for r in left if r.label not in done]
        return out


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of ``axes`` (in the order given), as dicts: ``grid(lr=[1, 2], seed=[0, 1])``."""
    import itertools

    names = list(axes)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(axes[n] for n in names))]


def fmt(value: Any) -> str:
    """A compact label for a value: 0.004 -> 4e-03, 20.0 -> 20."""
    if isinstance(value, float):
        return f"{value:g}" if 1e-2 <= abs(value) < 1e4 or value == 0 else f"{value:.3g}"
    return str(value)
