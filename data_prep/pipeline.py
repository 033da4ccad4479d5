"""``tokenize``: documents -> sentencepiece ids (+EOS) -> packed samples -> MDS train/val.

Seams: ``readers.iter_records`` (documents or bad records) -> ``split_of`` (train/val by a
stable text hash) -> batch ``encode`` -> ``pack.Packer`` per split -> ``writer.MDSSplitWriter``
per split (temp dir) -> ``writer.publish`` (rename into place, manifest last).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .errors import DataPrepError
from .fsutil import sha256_file, unit_hash
from .manifest import FORMAT, MANIFEST_NAME, SPLITS, VERSION, identity_diff, read_manifest
from .pack import Packer, token_dtype
from .readers import BadRecord, Document, SkipLog, iter_records, resolve_inputs
from .tokenizer import load_tokenizer
from .writer import (
    COLUMN,
    LOCK_NAME,
    OLD_PREFIX,
    TMP_PREFIX,
    MDSSplitWriter,
    clean_leftovers,
    exclusive_lock,
    publish,
    tmp_dir_for,
)

log = logging.getLogger(__name__)

SPLIT_HASH = "blake2b(utf8(text), digest_size=8) as big-endian uint64 / 2**64 < val_fraction -> val"
COMPRESSIONS = ("zstd", "none")


@dataclass(frozen=True)
class TokenizeConfig:
    inputs: Sequence[str]
    output: Path
    tokenizer: Path
    seq_len: int
    val_fraction: float = 0.01
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    shard_size_limit: int = 1 << 26
    compression: str = "zstd"  # "zstd" or "none"
    text_field: str = "text"
    overwrite: bool = False
    progress: bool = True
    batch_docs: int = 1024  # documents per encode() call ...
    batch_bytes: int = 16 << 20  # ... or this many bytes of text, whichever comes first


def split_of(text_utf8: bytes, val_fraction: float) -> str:
    """'val' or 'train' for a document, from its UTF-8 bytes only (see ``SPLIT_HASH``)."""
    return "val" if unit_hash(text_utf8) < val_fraction else "train"


def _validate(cfg: TokenizeConfig) -> None:
    if cfg.seq_len < 1:
        raise DataPrepError(f"--seq-len must be >= 1, got {cfg.seq_len}")
    if not (0.0 <= cfg.val_fraction < 1.0):
        raise DataPrepError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    if cfg.workers < 1:
        raise DataPrepError(f"--workers must be >= 1, got {cfg.workers}")
    if cfg.compression not in COMPRESSIONS:
        raise DataPrepError(f"--compression must be one of {COMPRESSIONS}, got {cfg.compression!r}")
    if not (0 < cfg.shard_size_limit < 1 << 32):
        raise DataPrepError(
            f"--shard-size-limit must be in (0, 2**32) bytes (MDS uses uint32 offsets), "
            f"got {cfg.shard_size_limit}"
        )
    if not cfg.text_field:
        raise DataPrepError("--text-field must not be empty")


def _check_output_dir(out_dir: Path, planned: dict[str, Any], overwrite: bool) -> None:
    """Refuse to clobber a directory that holds something else, unless --overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataPrepError(f"--output {out_dir} exists and is not a directory")
    if not out_dir.exists():
        return
    mpath = out_dir / MANIFEST_NAME
    hint = "pass --overwrite to replace it, or choose another --output"
    if mpath.exists():
        try:
            old = read_manifest(out_dir)
        except ValueError as e:
            if overwrite:
                return
            raise DataPrepError(f"--output {out_dir}: existing {mpath} is unreadable ({e}); {hint}") from e
        diffs = identity_diff(old, planned)
        if diffs and not overwrite:
            raise DataPrepError(
                f"--output {out_dir} already holds a different dataset ({'; '.join(diffs)}); {hint}"
            )
        return
    others = sorted(
        e.name for e in out_dir.iterdir()
        if e.name != LOCK_NAME and not e.name.startswith((TMP_PREFIX, OLD_PREFIX))
    )
    if others and not overwrite:
        raise DataPrepError(
            f"--output {out_dir} is not empty and has no {MANIFEST_NAME} (found {others[:5]}); "
            f"pass --overwrite to replace its {'/'.join(SPLITS)} directories, or choose an empty directory"
        )


def run_tokenize(cfg: TokenizeConfig) -> dict[str, Any]:
    """Tokenize, pack and write the dataset; returns the manifest that was written."""
    _validate(cfg)
    out_dir = Path(cfg.output).expanduser().absolute()
    files = resolve_inputs(cfg.inputs)
    tok_path = Path(cfg.tokenizer).expanduser().absolute()
    sp = load_tokenizer(tok_path)
    vocab_size, eos_id = sp.vocab_size(), sp.eos_id()
    dtype = token_dtype(vocab_size)
    sample_len = cfg.seq_len + 1
    if sample_len * (4 if dtype == "uint32" else 2) + 8 > cfg.shard_size_limit:
        raise DataPrepError(
            f"--shard-size-limit {cfg.shard_size_limit} is smaller than one sample "
            f"({sample_len} x {dtype}); raise it"
        )

    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "seq_len": cfg.seq_len,
        "sample_len": sample_len,
        "dtype": dtype,
        "column": COLUMN,
        "vocab_size": vocab_size,
        "eos_id": eos_id,
        "tokenizer": {"path": str(tok_path), "sha256": sha256_file(tok_path)},
        "splits": {},
        "documents_read": 0,
        "skipped": {},
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in files],
        "val_fraction": cfg.val_fraction,
        "split_hash": SPLIT_HASH,
        "text_field": cfg.text_field,
        "compression": cfg.compression,
        "shard_size_limit": cfg.shard_size_limit,
    }
    _check_output_dir(out_dir, manifest, cfg.overwrite)
    importlib.import_module("streaming")  # slow first import (~3 s): keep it out of wall_time_s

    t0 = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir):
        _check_output_dir(out_dir, manifest, cfg.overwrite)  # again, now that we hold the lock
        clean_leftovers(out_dir)
        _write_dataset(cfg, sp, files, out_dir, manifest, t0)
    return manifest


def _write_dataset(cfg: TokenizeConfig, sp, files, out_dir: Path, manifest: dict[str, Any], t0: float) -> None:
    sample_len, dtype, eos_id = manifest["sample_len"], manifest["dtype"], manifest["eos_id"]
    compression = None if cfg.compression == "none" else cfg.compression
    packers = {s: Packer(sample_len, eos_id, dtype) for s in SPLITS}
    writers: dict[str, MDSSplitWriter] = {}
    skips = SkipLog()
    try:
        for s in SPLITS:
            writers[s] = MDSSplitWriter(
                tmp_dir_for(out_dir, s), sample_len, dtype, compression, cfg.shard_size_limit
            )
        _process(cfg, sp, files, packers, writers, skips)
        for s in SPLITS:
            writers[s].finish()
    except BaseException:
        for w in writers.values():
            w.abort()
        raise

    wall = time.time() - t0
    total_tokens = sum(p.tokens for p in packers.values())
    for s in SPLITS:
        p = packers[s]
        manifest["splits"][s] = {
            "documents": p.documents,
            "tokens": p.tokens,
            "samples": p.samples,
            "dropped_tail_tokens": p.dropped_tail_tokens,
        }
        if p.samples == 0:
            log.warning(
                "split %r has no samples (%d tokens < sample_len %d)%s", s, p.tokens, sample_len,
                "; raise --val-fraction or add data" if s == "val" and cfg.val_fraction > 0 else "",
            )
    manifest["documents_read"] = sum(p.documents for p in packers.values())
    manifest["skipped"] = skips.as_dict()
    manifest["wall_time_s"] = round(wall, 3)
    manifest["tokens_per_s"] = round(total_tokens / wall, 1) if wall > 0 else 0.0
    publish(out_dir, {s: tmp_dir_for(out_dir, s) for s in SPLITS}, manifest)


def _process(cfg, sp, files, packers, writers, skips) -> None:
    from tqdm import tqdm

    t0 = time.time()
    n_tokens = 0
    bar = tqdm(
        desc="tokenize", unit="doc", file=sys.stderr, disable=not cfg.progress,
        mininterval=1.0, dynamic_ncols=True,
    )
    batch_texts: list[str] = []
    batch_splits: list[str] = []
    batch_bytes = 0

    def flush() -> None:
        nonlocal batch_bytes, n_tokens
        if not batch_texts:
            return
        encoded = sp.encode(batch_texts, num_threads=cfg.workers)
        for s in SPLITS:
            added = packers[s].add_documents(ids for ids, sp_ in zip(encoded, batch_splits) if sp_ == s)
            n_tokens += added
            for sample in packers[s].drain():
                writers[s].write(sample)
        bar.update(len(batch_texts))
        elapsed = max(time.time() - t0, 1e-9)
        bar.set_postfix_str(f"{n_tokens / 1e6:.2f}M tok, {n_tokens / elapsed / 1e3:.1f}k tok/s", refresh=False)
        batch_texts.clear()
        batch_splits.clear()
        batch_bytes = 0

    try:
        for rec in iter_records(files, cfg.text_field):
            if isinstance(rec, BadRecord):
                skips.add(rec)
                continue
            assert isinstance(rec, Document)
            data = rec.text.encode("utf-8")
            batch_texts.append(rec.text)
            batch_splits.append(split_of(data, cfg.val_fraction))
            batch_bytes += len(data)
            if len(batch_texts) >= cfg.batch_docs or batch_bytes >= cfg.batch_bytes:
                flush()
        flush()
    finally:
        bar.close()
