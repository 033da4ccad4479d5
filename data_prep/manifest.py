"""``DIR/manifest.json``: the contract between ``data_prep tokenize`` and the trainer.

Layout of a tokenized dataset directory::

    DIR/manifest.json      written last (atomically); its presence means DIR is complete
    DIR/train/             mosaicml-streaming MDS: index.json over all of the split's shards
                           (basenames like part-00003/shard.00000.mds.zstd)
    DIR/train/part-NNNNN/  layout "single": the part written by work unit NNNNN (its own index.json)
    DIR/train/<source>/    layout "per-source": one MDS dataset per source (own index.json over
                           <source>/part-NNNNN/...); DIR/train/index.json still covers all sources
    DIR/val/               same, for the held-out split
    DIR/skipped.jsonl      every skipped input record: {"reason", "path", "line", "detail", "count"}

Manifest fields (format ``mds-packed-tokens``, version 1)::

    format, version        "mds-packed-tokens", 1
    seq_len                model context length N
    sample_len             N + 1 (each sample is N inputs + 1 shifted target)
    dtype                  "uint16" if vocab_size <= 65536 else "uint32" (e.g. Llama-3's 128256)
    column                 MDS column holding the samples ("tokens", ndarray:<dtype>:<N+1>)
    vocab_size, eos_id     from the tokenizer (every id < vocab_size); EOS is appended after every
                           document
    tokenizer              {"path": absolute path, "sha256": hex digest of the file, "kind":
                           "sentencepiece" (a .model) or "tokenizers" (a tokenizer.json); no kind
                           in older manifests: sentencepiece}
    layout                 "single" or "per-source" (absent in older manifests: "single")
    splits.<name>          {"documents", "tokens", "samples", "dropped_tail_tokens", "text_bytes",
                           "sources"} where tokens (incl. EOS) == samples * sample_len +
                           dropped_tail_tokens
    splits.<name>.sources.<source>
                           single: {"documents", "tokens", "text_bytes"} (counts only);
                           per-source: also {"samples", "dropped_tail_tokens", "dir"} with dir
                           the source's MDS dataset relative to DIR (e.g. "train/RedPajamaC4");
                           both splits list the same sources (some possibly with 0 samples)
    documents_read         valid documents read (train + val)
    skipped                {reason: count} of bad records that were skipped; skipped_total;
                           skipped_log ("skipped.jsonl")
    inputs                 [{"path": absolute path, "bytes": size}] in processing order;
                           input_bytes (their sum), text_bytes (UTF-8 text of valid documents)
    val_fraction           fraction of documents routed to "val" by a stable text hash
    split_hash             how the split is decided (see ``data_prep.split.split_of``)
    packing                how samples are cut (per work unit; see ``data_prep.units``)
    text_field, source_field, compression, shard_size_limit, unit_size, units
    wall_time_s, tokens_per_s  this run: reading, tokenizing and writing (start-up excluded)
    run                    this run: workers, startup_s, units_processed/units_reused, and
                           documents/tokens/input MB/text MB per second (differs between runs)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ManifestError
from .fsutil import atomic_write_json

MANIFEST_NAME = "manifest.json"
FORMAT = "mds-packed-tokens"
VERSION = 1
SPLITS = ("train", "val")

# key -> required type(s) of the value
_REQUIRED: dict[str, Any] = {
    "format": str,
    "version": int,
    "seq_len": int,
    "sample_len": int,
    "dtype": str,
    "column": str,
    "vocab_size": int,
    "eos_id": int,
    "tokenizer": dict,
    "splits": dict,
    "documents_read": int,
    "skipped": dict,
    "inputs": list,
    "val_fraction": (int, float),
}
_SPLIT_KEYS = ("documents", "tokens", "samples", "dropped_tail_tokens")

# Settings that define *which* dataset a directory holds. A rerun with identical settings may
# rebuild the directory in place; anything else is refused unless --overwrite is given.
IDENTITY_KEYS = (
    "format",
    "version",
    "seq_len",
    "dtype",
    "column",
    "vocab_size",
    "eos_id",
    "tokenizer.sha256",
    "inputs",
    "val_fraction",
    "split_hash",
    "text_field",
    "compression",
    "shard_size_limit",
    "layout",
    "source_field",
    "unit_size",
)
LAYOUTS = ("single", "per-source")


def manifest_path(directory: str | os.PathLike[str]) -> Path:
    return Path(directory) / MANIFEST_NAME


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``<directory>/manifest.json``.

    Raises:
        FileNotFoundError: the manifest does not exist (the message names the path).
        ValueError (``ManifestError``): it is not valid JSON, not a ``mds-packed-tokens`` v1
            manifest, or required fields are missing / of the wrong type.
    """
    path = manifest_path(directory)
    if not path.is_file():
        hint = ""
        if Path(directory).is_dir():
            hint = " (the directory exists; was `python -m data_prep tokenize` interrupted?)"
        raise FileNotFoundError(f"no dataset manifest at {path}{hint}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON: {e}") from e
    validate_manifest(obj, str(path))
    return obj


def validate_manifest(obj: Any, where: str = MANIFEST_NAME) -> None:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise ManifestError(f"{where}: expected format {FORMAT!r}, got {obj.get('format')!r}")
    if obj.get("version") != VERSION:
        raise ManifestError(
            f"{where}: unsupported version {obj.get('version')!r} (this code reads {VERSION})"
        )
    for key, typ in _REQUIRED.items():
        if key not in obj:
            raise ManifestError(f"{where}: missing required field {key!r}")
        value = obj[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ManifestError(
                f"{where}: field {key!r} should be {_type_name(typ)}, got {value!r}"
            )
    if obj["sample_len"] != obj["seq_len"] + 1:
        raise ManifestError(
            f"{where}: sample_len ({obj['sample_len']}) must equal seq_len + 1 ({obj['seq_len'] + 1})"
        )
    if obj["dtype"] not in ("uint16", "uint32"):
        raise ManifestError(f"{where}: dtype should be 'uint16' or 'uint32', got {obj['dtype']!r}")
    for key in ("path", "sha256"):
        if not isinstance(obj["tokenizer"].get(key), str):
            raise ManifestError(f"{where}: field 'tokenizer.{key}' should be a string")
    for split in SPLITS:
        info = obj["splits"].get(split)
        if not isinstance(info, dict):
            raise ManifestError(f"{where}: missing split {split!r} in 'splits'")
        for key in _SPLIT_KEYS:
            if not isinstance(info.get(key), int):
                raise ManifestError(f"{where}: field 'splits.{split}.{key}' should be an integer")
    layout = obj.get("layout", "single")
    if layout not in LAYOUTS:
        raise ManifestError(f"{where}: layout should be one of {LAYOUTS}, got {layout!r}")
    if layout == "per-source":
        for split in SPLITS:
            sources = obj["splits"][split].get("sources")
            if not isinstance(sources, dict):
                raise ManifestError(f"{where}: layout 'per-source' needs 'splits.{split}.sources'")
            for name, info in sources.items():
                if not isinstance(info, dict) or not isinstance(info.get("dir"), str):
                    raise ManifestError(f"{where}: 'splits.{split}.sources.{name}.dir' should be a string")
                for key in _SPLIT_KEYS:
                    if not isinstance(info.get(key), int):
                        raise ManifestError(
                            f"{where}: field 'splits.{split}.sources.{name}.{key}' should be an integer"
                        )


def write_manifest(directory: str | os.PathLike[str], obj: Mapping[str, Any]) -> Path:
    """Validate and atomically write ``<directory>/manifest.json``."""
    obj = dict(obj)
    validate_manifest(obj, "manifest to write")
    path = manifest_path(directory)
    atomic_write_json(path, obj)
    return path


def identity(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The subset of manifest fields that identify the dataset (see ``IDENTITY_KEYS``)."""
    out: dict[str, Any] = {}
    for key in IDENTITY_KEYS:
        value: Any = obj
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        out[key] = value
    return out


def identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between two manifests' identities (empty if the same)."""
    a, b = identity(old), identity(new)
    diffs = []
    for key in IDENTITY_KEYS:
        if a[key] != b[key]:
            if key == "inputs":
                diffs.append(f"inputs: existing has {_summ_inputs(a[key])}, requested {_summ_inputs(b[key])}")
            else:
                diffs.append(f"{key}: existing {a[key]!r}, requested {b[key]!r}")
    return diffs


def _summ_inputs(inputs: Any) -> str:
    if not isinstance(inputs, list):
        return repr(inputs)
    total = sum(int(i.get("bytes", 0)) for i in inputs if isinstance(i, dict))
    first = inputs[0].get("path") if inputs and isinstance(inputs[0], dict) else None
    return f"{len(inputs)} files / {total} bytes (first: {first})"


def _type_name(typ: Any) -> str:
    if isinstance(typ, tuple):
        return " or ".join(t.__name__ for t in typ)
    return typ.__name__
