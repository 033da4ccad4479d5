"""Data preparation for LLM pretraining: corpus -> tokenizer -> packed MDS token shards.

Subcommands (``python -m data_prep --help``):

* ``demo-corpus``      build a small real-text corpus (stdlib docstrings + Python reference
                       manual) in SlimPajama's ``train/chunkN/example_train_K.jsonl.zst`` layout;
* ``train-tokenizer``  train a byte-fallback sentencepiece model with an exact round trip, on a
                       bounded random sample of the inputs;
* ``tokenize``         tokenize documents (with a sentencepiece .model or a Hugging Face
                       tokenizer.json), pack them into fixed-length samples and write
                       mosaicml-streaming MDS shards plus ``manifest.json``: parallel (worker
                       processes over deterministic work units), resumable after a kill, with
                       optional per-source datasets (``--per-source``).

Python API for other components (imported lazily; importing this package is cheap and has no
side effects):

* :func:`read_manifest` (``data_prep.manifest``) -- read and validate ``DIR/manifest.json``;
* :func:`read_tokens` (``data_prep.dataset``) -- iterate the packed samples of a split in order
  (``source=`` for one source of a per-source dataset);
* :func:`token_counts` (``data_prep.dataset``) -- per-token-id counts of a split (unigram stats);
* :func:`load_tokenizer` (``data_prep.tokenizer``) -- a sentencepiece ``.model`` or a Hugging Face
  ``tokenizer.json`` behind one interface (encode, decode, vocab_size, eos_id).
"""

from __future__ import annotations

from typing import Any

__all__ = ["read_manifest", "read_tokens", "token_counts", "load_tokenizer", "DataPrepError"]

_LAZY = {
    "read_manifest": ("data_prep.manifest", "read_manifest"),
    "read_tokens": ("data_prep.dataset", "read_tokens"),
    "token_counts": ("data_prep.dataset", "token_counts"),
    "load_tokenizer": ("data_prep.tokenizer", "load_tokenizer"),
    "DataPrepError": ("data_prep.errors", "DataPrepError"),
}


def __getattr__(name: str) -> Any:  # PEP 562: keep `import data_prep` free of heavy imports
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'data_prep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
