"""MDS output: one split written into a temp directory, then published atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator, Mapping, Optional

import numpy as np

from .errors import DataPrepError
from .manifest import MANIFEST_NAME, write_manifest

log = logging.getLogger(__name__)

COLUMN = "tokens"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
LOCK_NAME = ".lock"


def column_encoding(dtype: str, sample_len: int) -> str:
    """MDS fixed-dtype, fixed-shape ndarray encoding, e.g. ``ndarray:uint16:257``."""
    return f"ndarray:{dtype}:{sample_len}"


class MDSSplitWriter:
    """Writes fixed-length token samples of one split into ``tmp_dir`` with ``MDSWriter``."""

    def __init__(
        self,
        tmp_dir: Path,
        sample_len: int,
        dtype: str,
        compression: Optional[str],
        size_limit: int,
    ) -> None:
        from streaming import MDSWriter

        self.tmp_dir = Path(tmp_dir)
        if self.tmp_dir.exists():
            shutil.rmtree(self.tmp_dir)
        self.sample_len = sample_len
        self.dtype = np.dtype(dtype)
        self.samples = 0
        self._writer = MDSWriter(
            out=str(self.tmp_dir),
            columns={COLUMN: column_encoding(dtype, sample_len)},
            compression=compression,
            hashes=["sha1"],
            size_limit=size_limit,
        )

    def write(self, sample: np.ndarray) -> None:
        if sample.shape != (self.sample_len,) or sample.dtype != self.dtype:
            raise ValueError(
                f"sample has shape {sample.shape} / dtype {sample.dtype}, expected "
                f"({self.sample_len},) / {self.dtype}"
            )
        self._writer.write({COLUMN: sample})
        self.samples += 1

    def finish(self) -> None:
        self._writer.finish()

    def abort(self) -> None:
        try:
            self._writer.cancel_future_jobs()
        finally:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)


@contextlib.contextmanager
def exclusive_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``out_dir/.lock`` so two runs never interleave writes.

    The (empty) lock file is left in place: removing it would race with a waiting run.
    """
    import fcntl

    path = Path(out_dir) / LOCK_NAME
    with open(path, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataPrepError(
                f"--output {out_dir} is being written by another process (lock {path} is held)"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def tmp_dir_for(out_dir: Path, split: str) -> Path:
    return Path(out_dir) / f"{TMP_PREFIX}{split}"


def clean_leftovers(out_dir: Path) -> None:
    """Remove temp/old directories left by an interrupted run (only our own names)."""
    if not Path(out_dir).is_dir():
        return
    for entry in sorted(Path(out_dir).iterdir()):
        if entry.is_dir() and entry.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            log.info("removing leftover %s from an interrupted run", entry)
            shutil.rmtree(entry)


def publish(out_dir: Path, finished: Mapping[str, Path], manifest: Mapping) -> Path:
    """Move finished split dirs into place, then write the manifest last.

    The old manifest is removed first, so at no point does a manifest describe shards that
    are not (all) there: readers treat a directory without manifest as incomplete.
    """
    out_dir = Path(out_dir)
    mpath = out_dir / MANIFEST_NAME
    if mpath.exists():
        mpath.unlink()
    olds = []
    for split, tmp in finished.items():
        final = out_dir / split
        if final.exists():
            old = out_dir / f"{OLD_PREFIX}{split}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            olds.append(old)
        os.replace(tmp, final)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    return write_manifest(out_dir, manifest)
