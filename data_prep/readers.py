"""Input discovery and per-format document readers.

Every reader yields, in input order, either a :class:`Document` or a :class:`BadRecord`
(a record that was skipped, with the reason and ``file:line``). Readers never raise for bad
data inside a file; a file that cannot be read any further (truncated/corrupt compressed
stream, broken parquet) ends with a single ``unreadable_file`` record (for parquet: the rest of
that row group; later row groups are still read).

Supported formats, chosen by file extension:

* ``.jsonl`` / ``.jsonl.zst`` / ``.jsonl.gz`` / ``.json.gz``: one JSON object per line (JSON
  Lines), text in ``text_field`` (default ``"text"``). zstd and gzip are decompressed
  incrementally (constant memory).
* ``.txt``: the whole file (UTF-8) is one document.
* ``.parquet``: column ``text_field``, read one row group at a time in record batches.

A document's *source* is the value at ``source_field`` (a dotted path into the JSON object,
default ``meta.redpajama_set_name`` as in SlimPajama; for parquet a column, or a struct
column's field), or :data:`UNKNOWN_SOURCE` when it is absent.

Files can be read in *pieces* (:class:`Piece`): a byte range of a plain ``.jsonl`` file (the
lines that start inside it) or a range of row groups of a parquet file; see ``data_prep.units``.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataPrepError

log = logging.getLogger(__name__)

# Longest suffix first: format detection takes the first match.
FORMATS: dict[str, str] = {
    ".jsonl.zst": "jsonl.zst",
    ".jsonl.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",  # JSON Lines, gzip-compressed (the usual meaning for corpora)
    ".jsonl": "jsonl",
    ".txt": "txt",
    ".parquet": "parquet",
}

DEFAULT_SOURCE_FIELD = "meta.redpajama_set_name"
UNKNOWN_SOURCE = "unknown"  # source of documents without a (string/number) source value

# Reasons a record is skipped (keys of the manifest's "skipped" mapping).
MALFORMED_JSON = "malformed_json"  # the line is not valid JSON
NOT_OBJECT = "not_object"  # valid JSON but not an object ({...})
MISSING_TEXT = "missing_text"  # no text field (or parquet file without the column)
NULL_TEXT = "null_text"  # text is null
NON_STRING_TEXT = "non_string_text"  # text is a number, list, ...
EMPTY_TEXT = "empty_text"  # text is empty or whitespace only
BLANK_LINE = "blank_line"  # an empty or whitespace-only line in a JSONL file
INVALID_UTF8 = "invalid_utf8"  # the raw bytes are not UTF-8
INVALID_UNICODE = "invalid_unicode"  # decodes but holds lone surrogates (e.g. "\ud800")
UNREADABLE_FILE = "unreadable_file"  # the rest of the file (or parquet row group) could not be read
REASONS = (MALFORMED_JSON, NOT_OBJECT, MISSING_TEXT, NULL_TEXT, NON_STRING_TEXT, EMPTY_TEXT,
           BLANK_LINE, INVALID_UTF8, INVALID_UNICODE, UNREADABLE_FILE)

_READ_CHUNK = 1 << 20
_PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True, slots=True)
class Document:
    text: str
    path: str
    line: int | None  # 1-based line (jsonl) or row (parquet); None for whole-file .txt
    source: str | None = None
    utf8: bytes = b""  # text.encode("utf-8"), computed once by the reader


@dataclass(frozen=True)
class BadRecord:
    reason: str
    path: str
    line: int | None
    detail: str = ""
    count: int = 1  # >1 only when a whole file's rows are skipped at once

    @property
    def location(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "path": self.path, "line": self.line, "detail": self.detail,
                "count": self.count}


Record = Document | BadRecord


@dataclass(frozen=True)
class Piece:
    """A part of one input file that can be read on its own.

    ``jsonl``: the lines that *start* in bytes ``[start, stop)`` (``stop=None``: to the end).
    ``parquet``: row groups ``[start, stop)``; ``first_row`` is the 1-based file row number of
    the first row of row group ``start``. Other formats: always the whole file.
    ``bytes``: on-disk bytes the piece covers (for unit sizes and progress).
    """

    path: str
    fmt: str
    bytes: int
    start: int = 0
    stop: int | None = None
    first_row: int = 1

    def to_json(self) -> list:
        return [self.path, self.fmt, self.bytes, self.start, self.stop, self.first_row]

    @classmethod
    def from_json(cls, obj: Sequence) -> Piece:
        return cls(*obj)

    @property
    def whole_file(self) -> bool:
        return self.start == 0 and self.stop is None


class ByteCounter:
    """On-disk bytes consumed so far by a reader (for progress; updated once a block's lines
    have been consumed)."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0


def format_of(path: str | Path) -> str | None:
    name = str(path).lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def resolve_inputs(specs: Sequence[str], flag: str = "--input") -> list[Path]:
    """Expand files, directories (recursively) and globs into a sorted, de-duplicated list.

    Hidden files and directories (name starting with '.') found while expanding a directory
    are ignored. Raises ``DataPrepError`` naming the spec when it matches nothing usable.
    """
    if not specs:
        raise DataPrepError(f"{flag}: at least one file, directory or glob is required")
    found: dict[str, Path] = {}
    supported = ", ".join(FORMATS)
    for spec in specs:
        p = Path(spec).expanduser()
        if p.is_file():
            if format_of(p) is None:
                raise DataPrepError(
                    f"{flag} {spec}: unsupported file type; expected a file ending in {supported}"
                )
            candidates = [p]
        elif p.is_dir():
            candidates = list(_walk_supported(p, flag))
            if not candidates:
                raise DataPrepError(f"{flag} {spec}: directory has no files ending in {supported}")
        elif glob.has_magic(spec):
            candidates = []
            for match in sorted(glob.glob(os.path.expanduser(spec), recursive=True)):
                mp = Path(match)
                if mp.is_dir():
                    candidates.extend(_walk_supported(mp, flag))
                elif mp.is_file() and format_of(mp) is not None:
                    candidates.append(mp)
            if not candidates:
                raise DataPrepError(f"{flag} {spec}: glob matched no files ending in {supported}")
        else:
            raise DataPrepError(f"{flag} {spec}: no such file or directory")
        for c in candidates:
            found.setdefault(os.path.realpath(c), Path(os.path.abspath(c)))
    return sorted(found.values(), key=lambda q: str(q))


def _walk_supported(root: Path, flag: str = "--input") -> Iterator[Path]:
    """Supported files below ``root``, in sorted order, following links to directories (each directory once).

    A directory that cannot be listed (no permission, an I/O error, removed while walking) is an error
    naming it: its documents would otherwise vanish from the dataset without a trace.
    """
    def fail(e: OSError) -> None:
        where = e.filename or root
        raise DataPrepError(f"{flag} {root}: cannot read the directory {where} ({e.strerror or e}); "
                            "its files would be missing from the output: fix its permissions or leave it out")

    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as e:
            fail(e)
        if (st.st_dev, st.st_ino) in seen:  # a link back to a directory already walked: no loop
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and format_of(name) is not None:
                yield Path(dirpath) / name


def input_paths(specs: Sequence[str], files: Sequence[Path] = ()) -> list[tuple[str, Path]]:
    """Every path an output must stay clear of: the ``--input`` paths given, what their globs match, and
    the input files found (``[("input", path)]``, for :func:`pretrain.outputs.check_disjoint`)."""
    out: list[tuple[str, Path]] = []
    for spec in specs:
        p = Path(spec).expanduser()
        if p.exists():
            out.append(("input", p))
        elif glob.has_magic(spec):
            out += [("input", Path(m)) for m in sorted(glob.glob(os.path.expanduser(spec), recursive=True))]
    out += [("input file", Path(f)) for f in files]
    return out


def iter_records(
    files: Iterable[str | Path], text_field: str = "text", source_field: str = DEFAULT_SOURCE_FIELD
) -> Iterator[Record]:
    """Yield every record of every file, in order."""
    for path in files:
        yield from read_file(path, text_field, source_field)


def read_file(
    path: str | Path, text_field: str = "text", source_field: str = DEFAULT_SOURCE_FIELD
) -> Iterator[Record]:
    fmt = format_of(path)
    if fmt is None:
        raise DataPrepError(f"{path}: unsupported file type; expected one of {', '.join(FORMATS)}")
    return read_piece(Piece(str(path), fmt, 0), text_field, source_field)


def read_piece(
    piece: Piece,
    text_field: str = "text",
    source_field: str = DEFAULT_SOURCE_FIELD,
    counter: ByteCounter | None = None,
) -> Iterator[Record]:
    """Yield the records of one piece of a file, in order."""
    counter = counter if counter is not None else ByteCounter()
    if piece.fmt in ("jsonl", "jsonl.gz", "jsonl.zst"):
        return _read_jsonl(piece, text_field, _source_path(source_field), counter)
    if piece.fmt == "txt":
        return _read_txt(piece.path, counter)
    if piece.fmt == "parquet":
        return _read_parquet(piece, text_field, source_field, counter)
    raise DataPrepError(f"{piece.path}: unsupported format {piece.fmt!r}")


def _source_path(source_field: str) -> tuple[str, ...]:
    return tuple(source_field.split(".")) if source_field else ()


def source_name(value: Any) -> str:
    """A document's source from the raw value found at the source field."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return UNKNOWN_SOURCE


# --------------------------------------------------------------------------------------------
# JSONL (plain, zstd, gzip)


def _iter_chunks(piece: Piece, counter: ByteCounter) -> Iterator[bytes]:
    """Decompressed bytes of a JSONL file, in blocks. Truncated/corrupt input raises."""
    if piece.fmt == "jsonl.zst":
        yield from _iter_zstd_chunks(piece.path, counter)
        return
    with open(piece.path, "rb") as raw:
        if piece.fmt == "jsonl.gz":
            f = gzip.GzipFile(fileobj=raw, mode="rb")  # raises EOFError/BadGzipFile on damage
            while True:
                block = f.read(_READ_CHUNK)
                if not block:
                    counter.n = raw.tell()
                    return
                yield block
                counter.n = raw.tell()  # counted once the block's lines were consumed
        raw.seek(piece.start)
        while True:
            block = raw.read(_READ_CHUNK)
            if not block:
                return
            yield block
            counter.n += len(block)


def _iter_zstd_chunks(path: str, counter: ByteCounter) -> Iterator[bytes]:
    # zstandard's stream_reader silently stops at a truncated frame; decompressobj exposes
    # ``eof`` so truncation is detected. Concatenated frames are supported.
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    dobj = dctx.decompressobj()
    fed = False
    with open(path, "rb") as f:
        while True:
            block = f.read(_READ_CHUNK)
            if not block:
                break
            n_in = len(block)
            while block:
                fed = True
                out = dobj.decompress(block)
                if out:
                    yield out
                if dobj.eof:
                    block = dobj.unused_data
                    dobj = dctx.decompressobj()
                    fed = False
                else:
                    block = b""
            counter.n += n_in  # counted once the block's lines were consumed
    if fed and not dobj.eof:
        raise EOFError("zstd stream is truncated (frame not complete)")


def _iter_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Split a stream of byte blocks on newline bytes (lines keep no terminator)."""
    pending: list[bytes] = []
    for block in chunks:
        if b"\n" not in block:
            pending.append(block)  # a long line spanning blocks: no quadratic re-joining
            continue
        parts = block.split(b"\n")
        if pending:
            pending.append(parts[0])
            parts[0] = b"".join(pending)
        pending = [parts.pop()]
        yield from parts
    tail = b"".join(pending)
    if tail:
        yield tail


def _count_newlines(path: str, stop: int) -> int:
    n = 0
    with open(path, "rb") as f:
        left = stop
        while left > 0:
            block = f.read(min(_READ_CHUNK, left))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def _range_lines(piece: Piece, counter: ByteCounter) -> Iterator[tuple[int, bytes]]:
    """(start offset, line) of the lines of a plain file that start in [start, stop)."""
    start, stop = piece.start, piece.stop
    offset = start
    lines = _iter_lines(_iter_chunks(piece, counter))
    if start > 0:
        with open(piece.path, "rb") as f:
            f.seek(start - 1)
            at_line_start = f.read(1) == b"\n"
        if not at_line_start:  # the first bytes finish a line that started in an earlier piece
            first = next(lines, None)
            if first is None:
                return
            offset += len(first) + 1
    for line in lines:
        if stop is not None and offset >= stop:
            return
        yield offset, line
        offset += len(line) + 1


def _read_jsonl(piece: Piece, text_field: str, source_path: tuple[str, ...], counter: ByteCounter) -> Iterator[Record]:
    path = piece.path
    ranged = piece.fmt == "jsonl" and not piece.whole_file
    base: int | None = 0 if piece.start == 0 else None  # lines before the piece's first line (lazy)
    first_offset = piece.start
    k = 0

    def lineno() -> int:
        nonlocal base
        if base is None:  # only needed to report a bad record of a piece that starts mid-file
            base = _count_newlines(path, first_offset)
        return base + k

    try:
        source = _range_lines(piece, counter) if ranged else enumerate(_iter_lines(_iter_chunks(piece, counter)))
        for offset, raw in source:
            if k == 0 and ranged:
                first_offset = offset
            k += 1
            rec = _parse_jsonl_line(raw, path, k if base == 0 else -1, text_field, source_path)
            if isinstance(rec, BadRecord) and base != 0:
                rec = BadRecord(rec.reason, path, lineno(), rec.detail, rec.count)
            elif isinstance(rec, Document) and base != 0:
                rec = Document(rec.text, path, None, rec.source, rec.utf8)  # line computed only on demand
            yield rec
    except Exception as e:  # corrupt/truncated compressed stream, I/O error, ...
        k += 1
        yield BadRecord(UNREADABLE_FILE, path, lineno(), f"{type(e).__name__}: {e}")


def _parse_jsonl_line(raw: bytes, path: str, lineno: int, text_field: str, source_path: tuple[str, ...]) -> Record:
    if not raw.strip():
        # A blank line is not a record; count it (it usually means a damaged/odd file).
        return BadRecord(BLANK_LINE, path, lineno, "blank line")
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return BadRecord(INVALID_UTF8, path, lineno, str(e))
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return BadRecord(MALFORMED_JSON, path, lineno, str(e))
    if type(obj) is not dict:
        return BadRecord(NOT_OBJECT, path, lineno, f"got {type(obj).__name__}")
    try:
        value = obj[text_field]
    except KeyError:
        return BadRecord(MISSING_TEXT, path, lineno, f"no {text_field!r} field")
    src: Any = obj
    for part in source_path:
        src = src.get(part) if type(src) is dict else None
    return _check_text(value, path, lineno, text_field, source_name(src) if source_path else UNKNOWN_SOURCE)


def _check_text(value: Any, path: str, line: int | None, field: str, source: str | None) -> Record:
    if type(value) is not str:
        if value is None:
            return BadRecord(NULL_TEXT, path, line, f"{field!r} is null")
        return BadRecord(NON_STRING_TEXT, path, line, f"{field!r} is {type(value).__name__}")
    if not value or value.isspace():
        return BadRecord(EMPTY_TEXT, path, line, f"{field!r} is empty")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as e:
        return BadRecord(INVALID_UNICODE, path, line, str(e))
    return Document(value, path, line, source, data)


# --------------------------------------------------------------------------------------------
# Plain text and parquet


def _read_txt(path: str, counter: ByteCounter) -> Iterator[Record]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        yield BadRecord(UNREADABLE_FILE, path, None, f"{type(e).__name__}: {e}")
        return
    counter.n += len(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield BadRecord(INVALID_UTF8, path, None, str(e))
        return
    yield _check_text(text, path, None, "file content", UNKNOWN_SOURCE)


def parquet_row_group_bytes(md, rg: int) -> int:
    """On-disk (compressed) bytes of one row group, from the file metadata."""
    g = md.row_group(rg)
    return sum(g.column(c).total_compressed_size for c in range(g.num_columns))


def _parquet_source_column(schema, source_field: str):
    """(column to read, struct path inside it) for the source, or (None, ()) if absent."""
    import pyarrow as pa

    if not source_field:
        return None, ()
    if source_field in schema.names:
        return source_field, ()
    parts = source_field.split(".")
    if parts[0] in schema.names:
        typ = schema.field(parts[0]).type
        for p in parts[1:]:
            if not pa.types.is_struct(typ) or typ.get_field_index(p) < 0:
                return None, ()
            typ = typ.field(p).type
        return parts[0], tuple(parts[1:])
    return None, ()


def _read_parquet(piece: Piece, text_field: str, source_field: str, counter: ByteCounter) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = piece.path
    try:
        pf = pq.ParquetFile(path)
        md = pf.metadata
        names = pf.schema_arrow.names
    except Exception as e:  # not a parquet file, truncated footer, I/O error
        yield BadRecord(UNREADABLE_FILE, path, None, f"{type(e).__name__}: {e}")
        return
    stop = md.num_row_groups if piece.stop is None else min(piece.stop, md.num_row_groups)
    groups = range(piece.start, stop)
    row = piece.first_row - 1  # rows before the current one
    if text_field not in names:
        n = sum(md.row_group(g).num_rows for g in groups)
        counter.n += sum(parquet_row_group_bytes(md, g) for g in groups)
        if n:
            yield BadRecord(
                MISSING_TEXT, path, None,
                f"no column {text_field!r} (columns: {names}); {n} rows skipped", count=n,
            )
        return
    src_col, src_path = _parquet_source_column(pf.schema_arrow, source_field)
    columns = [text_field] + ([src_col] if src_col is not None and src_col != text_field else [])
    for g in groups:
        g_rows = md.row_group(g).num_rows
        g_end = row + g_rows
        try:
            for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, row_groups=[g], columns=columns, use_threads=False):
                column = batch.column(0)
                typ = column.type
                if pa.types.is_string(typ) or pa.types.is_large_string(typ):
                    # Arrow does not always validate UTF-8 on read: decode bytes ourselves.
                    column = column.cast(pa.large_binary())
                    binary = True
                else:
                    binary = pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
                if src_col is None:
                    sources: Sequence[Any] = [UNKNOWN_SOURCE] * batch.num_rows
                else:
                    scol = batch.column(columns.index(src_col))
                    for p in src_path:
                        scol = pc.struct_field(scol, [p])
                    sources = [source_name(v) for v in scol.to_pylist()]
                for value, source in zip(column.to_pylist(), sources, strict=True):
                    row += 1
                    if binary and value is not None:
                        try:
                            value = value.decode("utf-8")
                        except UnicodeDecodeError as e:
                            yield BadRecord(INVALID_UTF8, path, row, str(e))
                            continue
                    yield _check_text(value, path, row, text_field, source)
        except Exception as e:  # corrupt page, unsupported encoding, ...: skip the rest of the group
            yield BadRecord(UNREADABLE_FILE, path, row + 1, f"row group {g}: {type(e).__name__}: {e}")
        row = g_end
        counter.n += parquet_row_group_bytes(md, g)


# --------------------------------------------------------------------------------------------


class SkipLog:
    """Counts skipped records by reason and logs ``file:line`` warnings (rate-limited)."""

    def __init__(self, max_warnings_per_reason: int = 20, logger: logging.Logger = log) -> None:
        self.counts: Counter[str] = Counter()
        self.warned: Counter[str] = Counter()
        self.max_warnings = max_warnings_per_reason
        self.log = logger

    def add(self, bad: BadRecord) -> None:
        self.counts[bad.reason] += bad.count
        self.warn(bad.reason, bad.location, bad.detail)

    def add_counts(self, counts: dict[str, int]) -> None:
        self.counts.update(counts)

    def warn(self, reason: str, location: str, detail: str) -> None:
        if self.warned[reason] < self.max_warnings:
            self.warned[reason] += 1
            self.log.warning("skipped record at %s: %s (%s)", location, reason, detail)
            if self.warned[reason] == self.max_warnings:
                self.log.warning(
                    "further %r warnings suppressed; all are listed in skipped.jsonl", reason
                )

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
