"""Packing: concatenate documents (each followed by EOS) and cut fixed-length samples.

:class:`Packer` is the packer of ``tokenize``: a worker (``data_prep.worker``) keeps one per
split (and per source with ``--per-source``) of the unit it processes.
"""

from __future__ import annotations

from itertools import chain
from typing import Protocol

import numpy as np

FLUSH_TOKENS = 1 << 18  # default: pack + hand samples to the writer every this many new tokens


def token_dtype(vocab_size: int) -> str:
    """Smallest unsigned dtype that holds every id of a vocabulary of ``vocab_size``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class RowWriter(Protocol):
    def write_rows(self, rows: np.ndarray) -> None: ...  # rows: (k, sample_len), contiguous, in order


class Packer:
    """Packs one stream of documents into rows of exactly ``sample_len`` tokens for ``writer``.

    :meth:`add` appends a document's ids followed by ``eos_id``; once ``flush_tokens`` new tokens
    are waiting it packs them (:meth:`flush`): every complete row so far goes to
    ``writer.write_rows`` in order, the remainder waits for the next documents. Whatever is
    left after the last :meth:`flush` is the dropped tail (:attr:`dropped_tail_tokens`).
    Where the flushes happen does not change the rows.
    """

    __slots__ = ("writer", "dtype", "sample_len", "eos_id", "flush_tokens", "lists", "n_new", "head",
                 "documents", "tokens", "samples")

    def __init__(self, writer: RowWriter, dtype, sample_len: int, eos_id: int,
                 flush_tokens: int = FLUSH_TOKENS) -> None:
        if sample_len < 2:
            raise ValueError(f"sample_len must be >= 2, got {sample_len}")
        self.writer = writer
        self.dtype = np.dtype(dtype)
        self.sample_len = sample_len
        self.eos_id = eos_id
        self.flush_tokens = flush_tokens
        self.lists: list[list[int]] = []
        self.n_new = 0  # tokens in ``lists``, not packed yet
        self.head = np.empty(0, self.dtype)  # packed tokens short of a full row
        self.documents = 0
        self.tokens = 0  # all tokens added, EOS included
        self.samples = 0

    def add(self, ids: list[int]) -> int:
        """Append one document (``ids`` is taken over: EOS is appended to it); returns its
        number of tokens, EOS included."""
        ids.append(self.eos_id)
        n = len(ids)
        self.lists.append(ids)
        self.n_new += n
        self.documents += 1
        self.tokens += n
        if self.n_new >= self.flush_tokens:
            self.flush()
        return n

    def flush(self) -> None:
        """Hand every complete row so far to the writer."""
        if self.n_new:
            body = np.fromiter(chain.from_iterable(self.lists), dtype=self.dtype, count=self.n_new)
            buf = np.concatenate((self.head, body)) if self.head.size else body
            self.lists, self.n_new = [], 0
        else:
            buf = self.head
        k = len(buf) // self.sample_len
        if k:
            self.writer.write_rows(buf[: k * self.sample_len].reshape(k, self.sample_len))
            self.samples += k
            buf = buf[k * self.sample_len:].copy()
        self.head = buf

    @property
    def dropped_tail_tokens(self) -> int:
        """Tokens that did not fill a row (the dropped tail, once the last flush is done)."""
        return int(self.head.size) + self.n_new
