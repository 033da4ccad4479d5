"""Reading a tokenized dataset back (no shared memory, no files written; shards are
decompressed in memory). For training, use ``streaming.StreamingDataset(local=DIR/<split>)``,
or with layout "per-source" one ``streaming.Stream(local=DIR/<sources[s].dir>)`` per source.

Both layouts: ``source=None`` reads the whole split (per-source: every source, in sorted
order); ``source=NAME`` reads one source of a per-source dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataPrepError
from .manifest import read_manifest
from .writer import column_encoding


def read_tokens(
    directory: str | os.PathLike[str], split: str = "train", *, source: str | None = None,
    verify: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the samples of ``split`` in order, each a read-only ``(sample_len,)`` array.

    ``directory`` is the dataset dir holding ``manifest.json``. With ``verify=True`` the
    sha1 of every shard is checked against the MDS index.
    """
    for block in iter_shard_arrays(directory, split, source=source, verify=verify):
        yield from block


def split_dir(manifest: dict[str, Any], directory: str | os.PathLike[str], split: str,
              source: str | None = None) -> Path:
    """The MDS dataset directory of a split, or of one source of a per-source split."""
    if split not in manifest["splits"]:
        raise DataPrepError(f"{directory}: no split {split!r} (have {sorted(manifest['splits'])})")
    if source is None:
        return Path(directory) / split
    if manifest.get("layout", "single") != "per-source":
        raise DataPrepError(f"{directory}: source={source!r} needs a dataset written with --per-source")
    sources = manifest["splits"][split].get("sources", {})
    if source not in sources:
        raise DataPrepError(f"{directory}: split {split!r} has no source {source!r} (have {sorted(sources)})")
    return Path(directory) / sources[source]["dir"]


def iter_shard_arrays(
    directory: str | os.PathLike[str], split: str = "train", *, source: str | None = None,
    verify: bool = False,
) -> Iterator[np.ndarray]:
    """Yield one read-only ``(samples_in_shard, sample_len)`` array per MDS shard, in order."""
    manifest = read_manifest(directory)
    split_dir_ = split_dir(manifest, directory, split, source)
    yield from _iter_index(manifest, split_dir_, verify)


def _iter_index(manifest: dict[str, Any], split_dir: Path, verify: bool) -> Iterator[np.ndarray]:
    index_path = split_dir / "index.json"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no MDS index at {index_path}") from None
    dtype = np.dtype(manifest["dtype"])
    sample_len = manifest["sample_len"]
    sample_bytes = sample_len * dtype.itemsize
    expected_enc = column_encoding(manifest["dtype"], sample_len)
    for shard in index["shards"]:
        if shard.get("column_names") != [manifest["column"]] or shard.get("column_encodings") != [expected_enc]:
            raise DataPrepError(
                f"{index_path}: shard columns {shard.get('column_names')}/{shard.get('column_encodings')} "
                f"do not match the manifest ({manifest['column']}: {expected_enc})"
            )
        data = _load_shard(split_dir, shard, verify)
        n = int(np.frombuffer(data, np.uint32, count=1)[0])
        if n != shard["samples"]:
            raise DataPrepError(f"{split_dir}: shard has {n} samples, index says {shard['samples']}")
        offsets = np.frombuffer(data, np.uint32, count=n + 1, offset=4).astype(np.int64)
        # Fixed-size column, no per-sample size header: samples are back to back.
        if n and not np.all(np.diff(offsets) == sample_bytes):
            raise DataPrepError(f"{split_dir}: unexpected sample sizes in shard {shard['raw_data']['basename']}")
        if n:
            yield np.frombuffer(data, dtype, count=n * sample_len, offset=int(offsets[0])).reshape(n, sample_len)


def _load_shard(split_dir: Path, shard: dict[str, Any], verify: bool) -> bytes:
    raw_info = shard["raw_data"]
    zip_info = shard.get("zip_data")
    if zip_info:
        from streaming.base.compression import decompress

        zpath = split_dir / zip_info["basename"]
        zdata = zpath.read_bytes()
        if verify:
            _check_sha1(zpath, zdata, zip_info)
        data = decompress(shard["compression"], zdata)
        where = zpath
    else:
        where = split_dir / raw_info["basename"]
        data = where.read_bytes()
    if verify:
        _check_sha1(where, data, raw_info)
    return data


def _check_sha1(path: Path, data: bytes, info: dict[str, Any]) -> None:
    want = info.get("hashes", {}).get("sha1")
    if want is not None and hashlib.sha1(data).hexdigest() != want:
        raise DataPrepError(f"{path}: sha1 mismatch (corrupt shard?)")
    if len(data) != info.get("bytes", len(data)):
        raise DataPrepError(f"{path}: size {len(data)} != {info['bytes']} in index.json")


def token_counts(
    directory: str | os.PathLike[str], split: str = "train", *, source: str | None = None
) -> np.ndarray:
    """Occurrences of every token id (length ``vocab_size``, int64) over all samples of a split.

    E.g. the unigram cross-entropy baseline in nats/token is
    ``-(p[p > 0] * np.log(p[p > 0])).sum()`` with ``p = counts / counts.sum()``.
    """
    vocab = read_manifest(directory)["vocab_size"]
    counts = np.zeros(vocab, dtype=np.int64)
    for block in iter_shard_arrays(directory, split, source=source):
        counts += np.bincount(block.ravel(), minlength=vocab)[:vocab]
    return counts
