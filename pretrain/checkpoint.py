"""Atomic checkpoints on top of DeepSpeed's ``save_checkpoint``.

Layout under the checkpoint directory::

    step_00000100/            DeepSpeed's files (ZeRO-partitioned weights and optimizer state)
    step_00000100/trainer_state_rank{R}.json   our counters and data position, one per rank
    step_00000100/COMPLETE    written last, by rank 0, after every rank has finished writing:
                              the step, the config hash, and size + sha256 of every file
    latest                    name of the newest complete checkpoint

DeepSpeed's own ``latest`` file is never written (it is written before every
rank has finished). A checkpoint without ``COMPLETE`` is never loaded, and
pruning removes the marker before the files. Every small file is written to a
temporary name, fsynced and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .distributed import DistInfo, barrier
from .training.state import TrainState

MARKER = "COMPLETE"
POINTER = "latest"
TAG_RE = re.compile(r"^step_(\d{8,})$")


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Checkpointer:
    def __init__(self, root: Path, keep_last: int, dist: DistInfo, config_hash: str = ""):
        self.root = Path(root)
        self.keep_last = keep_last
        self.dist = dist
        self.config_hash = config_hash

    # -- saving ----------------------------------------------------------------------------
    def save(self, engine, state: TrainState, data_state: Optional[dict[str, Any]]) -> Path:
        tag = tag_for(state.step)
        path = self.root / tag
        if self.dist.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if (path / MARKER).exists():  # re-saving a step: invalidate the old copy first
                (path / MARKER).unlink()
        barrier()
        engine.save_checkpoint(str(self.root), tag=tag, save_latest=False)
        rank_state = {"state": state.to_dict(), "data": data_state, "rank": self.dist.rank}
        atomic_write_text(path / f"trainer_state_rank{self.dist.rank}.json", json.dumps(rank_state))
        barrier()  # every rank's files are on disk
        if self.dist.is_main:
            files = {
                str(p.relative_to(path)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.name != MARKER and not p.name.startswith(".")
            }
            marker = {
                "step": state.step,
                "tokens": state.tokens,
                "world_size": self.dist.world_size,
                "config_hash": self.config_hash,
                "version": __version__,
                "files": files,
            }
            atomic_write_text(path / MARKER, json.dumps(marker, indent=1))
            atomic_write_text(self.root / POINTER, tag + "\n")
            self._prune()
        barrier()
        return path

    def _prune(self) -> None:
        complete = self.complete_tags()
        for tag in complete[: -self.keep_last]:
            (self.root / tag / MARKER).unlink(missing_ok=True)
            shutil.rmtree(self.root / tag, ignore_errors=True)

    # -- finding and loading ---------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        tags = [p.name for p in self.root.iterdir() if TAG_RE.match(p.name) and (p / MARKER).is_file()]
        return sorted(tags, key=lambda t: int(TAG_RE.match(t).group(1)))

    def latest(self) -> Optional[str]:
        """The newest complete checkpoint (the pointer is a hint; the markers decide)."""
        tags = self.complete_tags()
        return tags[-1] if tags else None

    def verify(self, tag: str) -> list[str]:
        """Files of ``tag`` whose size or hash differs from its marker."""
        path = self.root / tag
        marker = json.loads((path / MARKER).read_text())
        bad = []
        for name, meta in marker["files"].items():
            f = path / name
            if not f.is_file() or f.stat().st_size != meta["bytes"] or _sha256(f) != meta["sha256"]:
                bad.append(str(f))
        return bad

    def load(self, engine, tag: str) -> dict[str, Any]:
        """Load weights and optimizer state of ``tag``; return this rank's trainer state."""
        path = (self.root / tag).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"checkpoint {tag!r} is outside the checkpoint directory {self.root}")
        load_path, _ = engine.load_checkpoint(
            str(self.root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
        rank_file = path / f"trainer_state_rank{self.dist.rank}.json"
        if not rank_file.is_file():
            raise RuntimeError(
                f"{rank_file} not found: checkpoint {tag} was saved by "
                f"{json.loads((path / MARKER).read_text())['world_size']} ranks, this run has {self.dist.world_size}"
            )
        return json.loads(rank_file.read_text())
