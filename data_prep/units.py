"""Work units: the inputs cut into deterministic, independently processed parts.

Rule (depends only on the sorted input list, the files' sizes / parquet metadata and the unit
size ``U``; never on the number of workers):

1. Each input file is cut into *pieces*: a plain ``.jsonl`` file into byte ranges of ``U``
   (each piece holds the lines that start in its range), a parquet file into runs of
   consecutive row groups of at most ``U`` compressed bytes (a larger row group is a piece on
   its own); any other file (compressed JSONL, .txt, an unreadable parquet file) is one piece.
2. Consecutive pieces, in file order, are grouped into units: a unit is closed as soon as it
   holds ``U`` bytes or more (so small files are grouped and big files are spread out).

Each unit is tokenized, packed and written on its own (its partial last sample per split and
source is dropped), so units can run in any order on any worker and be resumed one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .readers import Piece, format_of, parquet_row_group_bytes

log = logging.getLogger(__name__)

MiB = 1 << 20
AUTO_MIN = 1 * MiB
AUTO_MAX = 64 * MiB
AUTO_UNITS = 512


@dataclass(frozen=True)
class Unit:
    index: int
    pieces: tuple[Piece, ...]

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.pieces)

    def describe(self) -> str:
        first, last = self.pieces[0], self.pieces[-1]
        if len(self.pieces) == 1:
            rng = "" if first.whole_file else f" [{first.start}:{'' if first.stop is None else first.stop}]"
            return f"{first.path}{rng}"
        return f"{len(self.pieces)} pieces {first.path} .. {last.path}"

    def to_json(self) -> list:
        return [p.to_json() for p in self.pieces]

    @classmethod
    def from_json(cls, index: int, obj: Sequence) -> Unit:
        return cls(index, tuple(Piece.from_json(p) for p in obj))


def default_workers() -> int:
    """All cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def auto_unit_size(total_bytes: int) -> int:
    """Default unit size: total/512, rounded down to whole MiB, between 1 and 64 MiB."""
    return max(AUTO_MIN, min(AUTO_MAX, (total_bytes // AUTO_UNITS) // MiB * MiB))


def file_pieces(path: Path, size: int, unit_size: int) -> list[Piece]:
    fmt = format_of(path)
    assert fmt is not None, path
    p = str(path)
    if fmt == "jsonl" and size > unit_size:
        return [Piece(p, fmt, min(unit_size, size - s), s, s + unit_size if s + unit_size < size else None)
                for s in range(0, size, unit_size)]
    if fmt == "parquet":
        return _parquet_pieces(p, size, unit_size)
    return [Piece(p, fmt, size)]


def _parquet_pieces(path: str, size: int, unit_size: int) -> list[Piece]:
    import pyarrow.parquet as pq

    try:
        md = pq.ParquetFile(path).metadata
        groups = [(md.row_group(g).num_rows, parquet_row_group_bytes(md, g)) for g in range(md.num_row_groups)]
    except Exception as e:  # unreadable: one piece; the reader reports it as a skipped record
        log.debug("cannot read parquet metadata of %s: %s", path, e)
        return [Piece(path, "parquet", size)]
    if len(groups) <= 1:
        return [Piece(path, "parquet", size)]
    pieces: list[Piece] = []
    start, acc, row, first_row = 0, 0, 1, 1
    for g, (rows, nbytes) in enumerate(groups):
        if g > start and acc + nbytes > unit_size:
            pieces.append(Piece(path, "parquet", acc, start, g, first_row))
            start, acc, first_row = g, 0, row
        acc += nbytes
        row += rows
    pieces.append(Piece(path, "parquet", acc, start, None if start == 0 else len(groups), first_row))
    if len(pieces) == 1:
        return [Piece(path, "parquet", size)]
    # the footer and page indexes belong to no row group: count them in the last piece
    last = pieces[-1]
    pieces[-1] = Piece(path, "parquet", last.bytes + max(0, size - sum(p.bytes for p in pieces)),
                       last.start, last.stop, last.first_row)
    return pieces


def plan_units(files: Sequence[Path], sizes: Sequence[int], unit_size: int) -> list[Unit]:
    units: list[Unit] = []
    current: list[Piece] = []
    acc = 0
    for path, size in zip(files, sizes, strict=True):
        for piece in file_pieces(path, size, unit_size):
            current.append(piece)
            acc += piece.bytes
            if acc >= unit_size:
                units.append(Unit(len(units), tuple(current)))
                current, acc = [], 0
    if current:
        units.append(Unit(len(units), tuple(current)))
    return units


def plan_to_json(units: Sequence[Unit]) -> list[Any]:
    return [u.to_json() for u in units]


def plan_from_json(obj: Sequence[Any]) -> list[Unit]:
    return [Unit.from_json(i, u) for i, u in enumerate(obj)]
