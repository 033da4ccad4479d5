"""``DIR/manifest.json``: the contract between ``data_prep tokenize`` and the trainer.

Layout of a tokenized dataset directory::

    DIR/manifest.json      written last (atomically); its presence means DIR is complete
    DIR/train/             mosaicml-streaming MDS (index.json + shard.NNNNN.mds[.zstd])
    DIR/val/               same, for the held-out split

Manifest fields (format ``mds-packed-tokens``, version 1)::

    format, version        "mds-packed-tokens", 1
    seq_len                model context length N
    sample_len             N + 1 (each sample is N inputs + 1 shifted target)
    dtype                  "uint16" if vocab_size <= 65536 else "uint32"
    column                 MDS column holding the samples ("tokens", ndarray:<dtype>:<N+1>)
    vocab_size, eos_id     from the sentencepiece model; EOS is appended after every document
    tokenizer              {"path": absolute path, "sha256": hex digest of the .model file}
    splits.<name>          {"documents", "tokens", "samples", "dropped_tail_tokens"} where
                           tokens (incl. EOS) == samples * sample_len + dropped_tail_tokens
    documents_read         valid documents read (train + val)
    skipped                {reason: count} of bad records that were skipped
    inputs                 [{"path": absolute path, "bytes": size}] in processing order
    val_fraction           fraction of documents routed to "val" by a stable text hash
    split_hash             how the split is decided (see ``data_prep.pipeline.split_of``)
    text_field, compression, shard_size_limit
    wall_time_s, tokens_per_s  reading, tokenizing and writing (setup/imports excluded)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Union

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
)


def manifest_path(directory: Union[str, "os.PathLike[str]"]) -> Path:
    return Path(directory) / MANIFEST_NAME


def read_manifest(directory: Union[str, "os.PathLike[str]"]) -> dict[str, Any]:
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


def write_manifest(directory: Union[str, "os.PathLike[str]"], obj: Mapping[str, Any]) -> Path:
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
