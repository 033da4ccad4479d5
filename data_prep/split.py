"""The train/val split rule: the one place it is written (the worker routes every document with
:func:`split_of`; the manifest records :data:`SPLIT_HASH`, its description)."""

from __future__ import annotations

from .fsutil import unit_hash

SPLIT_HASH = "blake2b(utf8(text), digest_size=8) as big-endian uint64 / 2**64 < val_fraction -> val"


def split_of(text: str | bytes, val_fraction: float) -> str:
    """``"val"`` or ``"train"`` for a document, from its text only (str, or its UTF-8 bytes):
    see :data:`SPLIT_HASH`. Stable across platforms, Python versions, runs and worker counts."""
    if isinstance(text, str):
        text = text.encode("utf-8")
    return "val" if unit_hash(text) < val_fraction else "train"
