"""MDS output: per-unit part datasets in a work area, merged indexes, atomic publishing.

Work area of an output directory ``DIR`` (only while a run is unfinished)::

    DIR/.work/plan.json                 identity + units of the run (written first)
    DIR/.work/stage/<split>/part-NNNNN/             single layout: unit NNNNN's MDS part
    DIR/.work/stage/<split>/<source>/part-NNNNN/    per-source layout
    DIR/.work/skipped/unit-NNNNN.jsonl  skipped records of a unit
    DIR/.work/done/unit-NNNNN.json      a unit's statistics; written last (atomically), it marks
                                        the unit complete; units without it are redone
    DIR/.work/publish.json              the manifest to publish; present = publishing started

Publishing moves ``stage/<split>`` to ``DIR/<split>`` (an older split is moved aside first),
then writes ``DIR/manifest.json`` last, then removes the work area.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataPrepError
from .fsutil import atomic_write_bytes, atomic_write_json
from .manifest import MANIFEST_NAME, SPLITS, write_manifest

log = logging.getLogger(__name__)

COLUMN = "tokens"
TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
LOCK_NAME = ".lock"
WORK_NAME = ".work"
SKIPPED_NAME = "skipped.jsonl"
INDEX_NAME = "index.json"
PART_PREFIX = "part-"


def column_encoding(dtype: str, sample_len: int) -> str:
    """MDS fixed-dtype, fixed-shape ndarray encoding, e.g. ``ndarray:uint16:257``."""
    return f"ndarray:{dtype}:{sample_len}"


def source_dirname(source: str) -> str:
    """Directory name of a source: the name itself when it is a plain, safe file name.

    Otherwise percent-encoded (``/`` -> ``%2F``, a leading ``.`` -> ``%2E``); names that would
    clash with ``index.json`` or are very long are escaped or shortened with a hash suffix.
    """
    name = urllib.parse.quote(source, safe="")
    if name.startswith(".") or name == INDEX_NAME or not name:
        name = f"%{ord(name[0]):02X}" + name[1:] if name else "%00"
    if len(name) > 120:
        import hashlib

        name = name[:100] + "-" + hashlib.sha1(source.encode("utf-8")).hexdigest()[:16]
    return name


def part_name(unit: int, width: int) -> str:
    return f"{PART_PREFIX}{unit:0{width}d}"


def part_width(n_units: int) -> int:
    return max(5, len(str(max(0, n_units - 1))))


class WorkArea:
    """Paths of ``DIR/.work``."""

    def __init__(self, out_dir: Path) -> None:
        self.root = Path(out_dir) / WORK_NAME
        self.plan = self.root / "plan.json"
        self.stage = self.root / "stage"
        self.done = self.root / "done"
        self.skipped = self.root / "skipped"
        self.publish = self.root / "publish.json"

    def marker(self, unit: int) -> Path:
        return self.done / f"unit-{unit:06d}.json"

    def skipped_log(self, unit: int) -> Path:
        return self.skipped / f"unit-{unit:06d}.jsonl"

    def part_dirs(self, unit: int, width: int, per_source: bool) -> list[Path]:
        """Every part directory that unit ``unit`` may have left in the stage."""
        name = part_name(unit, width)
        out = []
        for split in SPLITS:
            base = self.stage / split
            if not base.is_dir():
                continue
            if per_source:
                out += [d / name for d in sorted(base.iterdir()) if d.is_dir() and (d / name).exists()]
            elif (base / name).exists():
                out.append(base / name)
        return out

    def clear_unit(self, unit: int, width: int, per_source: bool) -> None:
        for d in self.part_dirs(unit, width, per_source):
            shutil.rmtree(d)
        for p in (self.marker(unit), self.skipped_log(unit)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


class PartWriter:
    """Writes fixed-length token samples of one (unit, split[, source]) with ``MDSWriter``.

    The directory is created on the first sample; ``finish`` writes the part's index.json and
    fsyncs every file, so a done marker written afterwards only ever vouches for durable shards.
    """

    def __init__(self, out: Path, sample_len: int, dtype: str, compression: str | None, size_limit: int) -> None:
        self.out = Path(out)
        self.sample_len = sample_len
        self.dtype = np.dtype(dtype)
        self.compression = compression
        self.size_limit = size_limit
        self.samples = 0
        self._writer = None

    def write_rows(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.sample_len or rows.dtype != self.dtype:
            raise ValueError(
                f"samples have shape {rows.shape} / dtype {rows.dtype}, expected "
                f"(n, {self.sample_len}) / {self.dtype}"
            )
        if not len(rows):
            return
        if self._writer is None:
            from streaming import MDSWriter

            if self.out.exists():
                shutil.rmtree(self.out)
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self._writer = MDSWriter(
                out=str(self.out),
                columns={COLUMN: column_encoding(self.dtype.name, self.sample_len)},
                compression=self.compression,
                hashes=["sha1"],
                size_limit=self.size_limit,
                max_workers=1,
            )
        _write_fixed_rows(self._writer, rows)
        self.samples += len(rows)

    @property
    def written(self) -> bool:
        return self._writer is not None

    def finish(self) -> None:
        if self._writer is None:
            return
        # MDSWriter.finish flushes the last shard, then sleeps a whole second whenever its
        # (here no-op, local-only) upload queue is not empty yet; that queue drains in
        # microseconds: flush ourselves (as finish would) and wait for it first.
        w = self._writer
        if w.new_samples and not w.event.is_set():
            w.flush_shard()
            w._reset_cache()
        queue = getattr(getattr(w, "executor", None), "_work_queue", None)
        deadline = time.monotonic() + 60
        while queue is not None and queue.qsize() > 0 and time.monotonic() < deadline:
            time.sleep(0.0005)
        self._writer.finish()
        fsync_tree(self.out)

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.cancel_future_jobs()


def _write_fixed_rows(writer, rows: np.ndarray) -> None:
    """``MDSWriter.write({COLUMN: row})`` for every row, without its per-sample overhead.

    For a single fixed-size ``ndarray:<dtype>:<n>`` column, ``MDSWriter.encode_sample`` is the
    row's raw bytes (no size header), so this is ``Writer.write`` with the encoding done once
    for all rows; the shards and index are byte-identical (tested against ``MDSWriter.write``).
    """
    if writer.event.is_set():  # a failed background job, as in Writer.write
        writer.cancel_future_jobs()
        raise RuntimeError("an MDS writer thread failed")
    data = np.ascontiguousarray(rows).tobytes()
    size = rows.shape[1] * rows.dtype.itemsize
    extra = writer.extra_bytes_per_sample
    limit = writer.size_limit
    for start in range(0, len(data), size):
        if limit and limit < writer.new_shard_size + size + extra:
            writer.flush_shard()
            writer._reset_cache()
        writer.new_samples.append(data[start:start + size])
        writer.new_shard_size += size + extra


def fsync_tree(root: Path) -> None:
    for p in sorted(Path(root).iterdir()):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(root)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# merging


def read_index(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_index(path: Path, index: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(index, sort_keys=True).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# locking, leftovers, publishing


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


def clean_leftovers(out_dir: Path) -> None:
    """Remove temp/old entries left by an interrupted run (only our own names)."""
    if not Path(out_dir).is_dir():
        return
    for entry in sorted(Path(out_dir).iterdir()):
        if entry.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            log.info("removing leftover %s from an interrupted run", entry)
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


PUBLISHED = (*SPLITS, SKIPPED_NAME)


def publish(out_dir: Path, work: WorkArea) -> dict[str, Any]:
    """Move the staged splits into place, write the manifest last, remove the work area.

    Idempotent: after a kill at any point, calling it again (with ``work.publish`` present)
    finishes the job. The old manifest is removed first, so at no point does a manifest
    describe shards that are not (all) there.
    """
    out_dir = Path(out_dir)
    manifest = json.loads(work.publish.read_text(encoding="utf-8"))
    mpath = out_dir / MANIFEST_NAME
    if mpath.exists():
        mpath.unlink()
    for name in PUBLISHED:
        src, dst = work.stage / name, out_dir / name
        if src.exists():
            if dst.exists() or dst.is_symlink():
                old = out_dir / f"{OLD_PREFIX}{name}"
                if old.exists():
                    _remove(old)
                os.replace(dst, old)
            os.replace(src, dst)
        elif not dst.exists():
            raise DataPrepError(f"{work.root}: staged {name} is missing; rerun with --overwrite to start over")
    fsync_dir(out_dir)
    write_manifest(out_dir, manifest)
    fsync_dir(out_dir)
    for name in PUBLISHED:
        old = out_dir / f"{OLD_PREFIX}{name}"
        if old.exists():
            _remove(old)
    shutil.rmtree(work.root, ignore_errors=True)
    return manifest


_MARKER_RE = re.compile(r"^unit-(\d{6})\.json$")


def done_units(work: WorkArea) -> set[int]:
    if not work.done.is_dir():
        return set()
    return {int(m.group(1)) for p in work.done.iterdir() if (m := _MARKER_RE.match(p.name))}


def write_marker(work: WorkArea, unit: int, stats: dict[str, Any]) -> None:
    atomic_write_json(work.marker(unit), stats)
    fsync_dir(work.done)
