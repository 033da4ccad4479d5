"""Input discovery and per-format document readers.

Every reader yields, in file order, either a :class:`Document` or a :class:`BadRecord`
(a record that was skipped, with the reason and ``file:line``). Readers never raise for bad
data inside a file; a file that cannot be read any further (truncated/corrupt compressed
stream, broken parquet) ends with a single ``unreadable_file`` record.

Supported formats, chosen by file extension:

* ``.jsonl`` / ``.jsonl.zst`` / ``.jsonl.gz``: one JSON object per line, text in ``text_field``
  (default ``"text"``); the optional ``meta.redpajama_set_name`` becomes ``Document.source``.
* ``.txt``: the whole file (UTF-8) is one document.
* ``.parquet``: column ``text_field``, read one row group at a time.
"""

from __future__ import annotations

import glob
import gzip
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from .errors import DataPrepError

log = logging.getLogger(__name__)

# Longest suffix first: format detection takes the first match.
FORMATS: dict[str, str] = {
    ".jsonl.zst": "jsonl.zst",
    ".jsonl.gz": "jsonl.gz",
    ".jsonl": "jsonl",
    ".txt": "txt",
    ".parquet": "parquet",
}

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
UNREADABLE_FILE = "unreadable_file"  # the rest of the file could not be read

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Document:
    text: str
    path: str
    line: Optional[int]  # 1-based line (jsonl) or row (parquet); None for whole-file .txt
    source: Optional[str] = None


@dataclass(frozen=True)
class BadRecord:
    reason: str
    path: str
    line: Optional[int]
    detail: str = ""
    count: int = 1  # >1 only when a whole file's rows are skipped at once

    @property
    def location(self) -> str:
        return self.path if self.line is None else f"{self.path}:{self.line}"


Record = Union[Document, BadRecord]


def format_of(path: Union[str, Path]) -> Optional[str]:
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
            candidates = list(_walk_supported(p))
            if not candidates:
                raise DataPrepError(f"{flag} {spec}: directory has no files ending in {supported}")
        elif glob.has_magic(spec):
            candidates = []
            for match in sorted(glob.glob(os.path.expanduser(spec), recursive=True)):
                mp = Path(match)
                if mp.is_dir():
                    candidates.extend(_walk_supported(mp))
                elif mp.is_file() and format_of(mp) is not None:
                    candidates.append(mp)
            if not candidates:
                raise DataPrepError(f"{flag} {spec}: glob matched no files ending in {supported}")
        else:
            raise DataPrepError(f"{flag} {spec}: no such file or directory")
        for c in candidates:
            found.setdefault(os.path.realpath(c), Path(os.path.abspath(c)))
    return sorted(found.values(), key=lambda q: str(q))


def _walk_supported(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and format_of(name) is not None:
                yield Path(dirpath) / name


def iter_records(files: Iterable[Union[str, Path]], text_field: str = "text") -> Iterator[Record]:
    """Yield every record of every file, in order."""
    for path in files:
        yield from read_file(path, text_field)


def read_file(path: Union[str, Path], text_field: str = "text") -> Iterator[Record]:
    fmt = format_of(path)
    if fmt is None:
        raise DataPrepError(f"{path}: unsupported file type; expected one of {', '.join(FORMATS)}")
    reader = _READERS[fmt]
    return reader(str(path), text_field)


# --------------------------------------------------------------------------------------------
# JSONL (plain, zstd, gzip)


def _iter_chunks(path: str, fmt: str) -> Iterator[bytes]:
    """Decompressed bytes of a JSONL file, in blocks. Truncated/corrupt input raises."""
    if fmt == "jsonl.zst":
        yield from _iter_zstd_chunks(path)
        return
    opener = gzip.open if fmt == "jsonl.gz" else open
    with opener(path, "rb") as f:  # gzip raises EOFError/BadGzipFile on damaged input
        while True:
            block = f.read(_READ_CHUNK)
            if not block:
                return
            yield block


def _iter_zstd_chunks(path: str) -> Iterator[bytes]:
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


def _read_jsonl(path: str, text_field: str, fmt: str) -> Iterator[Record]:
    lineno = 0
    try:
        for lineno, raw in enumerate(_iter_lines(_iter_chunks(path, fmt)), start=1):
            yield _parse_jsonl_line(raw, path, lineno, text_field)
    except Exception as e:  # corrupt/truncated compressed stream, I/O error, ...
        yield BadRecord(UNREADABLE_FILE, path, lineno + 1, f"{type(e).__name__}: {e}")


def _parse_jsonl_line(raw: bytes, path: str, lineno: int, text_field: str) -> Record:
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
    if not isinstance(obj, dict):
        return BadRecord(NOT_OBJECT, path, lineno, f"got {type(obj).__name__}")
    if text_field not in obj:
        return BadRecord(MISSING_TEXT, path, lineno, f"no {text_field!r} field")
    source = None
    meta = obj.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("redpajama_set_name"), str):
        source = meta["redpajama_set_name"]
    return _check_text(obj[text_field], path, lineno, text_field, source)


def _check_text(value: Any, path: str, line: Optional[int], field: str, source: Optional[str]) -> Record:
    if value is None:
        return BadRecord(NULL_TEXT, path, line, f"{field!r} is null")
    if not isinstance(value, str):
        return BadRecord(NON_STRING_TEXT, path, line, f"{field!r} is {type(value).__name__}")
    if not value.strip():
        return BadRecord(EMPTY_TEXT, path, line, f"{field!r} is empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        return BadRecord(INVALID_UNICODE, path, line, str(e))
    return Document(value, path, line, source)


# --------------------------------------------------------------------------------------------
# Plain text and parquet


def _read_txt(path: str, text_field: str) -> Iterator[Record]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        yield BadRecord(UNREADABLE_FILE, path, None, f"{type(e).__name__}: {e}")
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        yield BadRecord(INVALID_UTF8, path, None, str(e))
        return
    yield _check_text(text, path, None, "file content", None)


def _read_parquet(path: str, text_field: str) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            n = pf.metadata.num_rows
            if n:
                yield BadRecord(
                    MISSING_TEXT, path, None,
                    f"no column {text_field!r} (columns: {pf.schema_arrow.names}); {n} rows skipped",
                    count=n,
                )
            return
        for rg in range(pf.num_row_groups):
            column = pf.read_row_group(rg, columns=[text_field]).column(0)
            typ = column.type
            if pa.types.is_string(typ) or pa.types.is_large_string(typ):
                # Arrow does not always validate UTF-8 on read: decode bytes ourselves.
                column = column.cast(pa.large_binary())
                binary = True
            else:
                binary = pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
            for value in column.to_pylist():
                row += 1
                if binary and value is not None:
                    try:
                        value = value.decode("utf-8")
                    except UnicodeDecodeError as e:
                        yield BadRecord(INVALID_UTF8, path, row, str(e))
                        continue
                yield _check_text(value, path, row, text_field, None)
    except Exception as e:  # corrupt file, unsupported encoding, ...
        yield BadRecord(UNREADABLE_FILE, path, row + 1, f"{type(e).__name__}: {e}")


_READERS: dict[str, Callable[[str, str], Iterator[Record]]] = {
    "jsonl": lambda p, f: _read_jsonl(p, f, "jsonl"),
    "jsonl.gz": lambda p, f: _read_jsonl(p, f, "jsonl.gz"),
    "jsonl.zst": lambda p, f: _read_jsonl(p, f, "jsonl.zst"),
    "txt": _read_txt,
    "parquet": _read_parquet,
}


# --------------------------------------------------------------------------------------------


class SkipLog:
    """Counts skipped records by reason and logs ``file:line`` warnings (rate-limited)."""

    def __init__(self, max_warnings_per_reason: int = 20, logger: logging.Logger = log) -> None:
        self.counts: Counter[str] = Counter()
        self.max_warnings = max_warnings_per_reason
        self.log = logger

    def add(self, bad: BadRecord) -> None:
        self.counts[bad.reason] += bad.count
        seen = self.counts[bad.reason]
        if seen - bad.count < self.max_warnings:
            self.log.warning("skipped record at %s: %s (%s)", bad.location, bad.reason, bad.detail)
            if seen >= self.max_warnings:
                self.log.warning(
                    "further %r warnings suppressed; totals are in the manifest", bad.reason
                )

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())
