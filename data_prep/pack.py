"""Packing: concatenate documents (each followed by EOS) and cut fixed-length samples."""

from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import numpy as np


def token_dtype(vocab_size: int) -> str:
    """Smallest unsigned dtype that holds every id of a vocabulary of ``vocab_size``."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class Packer:
    """Turns a stream of token sequences into samples of exactly ``sample_len`` tokens.

    ``add_documents`` appends each document's ids followed by ``eos_id``; ``drain`` yields every
    complete sample accumulated so far (contiguous rows, in order); the remainder is kept for
    the next call, and whatever is left at the end is the dropped tail (``pending``).
    """

    def __init__(self, sample_len: int, eos_id: int, dtype: str) -> None:
        if sample_len < 2:
            raise ValueError(f"sample_len must be >= 2, got {sample_len}")
        self.sample_len = sample_len
        self.eos_id = eos_id
        self.dtype = np.dtype(dtype)
        self._parts: list[np.ndarray] = []
        self.pending = 0  # tokens waiting for the next sample
        self.documents = 0
        self.tokens = 0  # all tokens added, EOS included
        self.samples = 0

    def add_documents(self, docs: Iterable[Sequence[int]]) -> int:
        """Append documents; returns the number of tokens added (EOS included)."""
        flat: list[int] = []
        n_docs = 0
        for ids in docs:
            flat.extend(ids)
            flat.append(self.eos_id)
            n_docs += 1
        if not flat:
            return 0
        arr = np.asarray(flat, dtype=np.int64)
        if arr.min() < 0 or arr.max() > np.iinfo(self.dtype).max:
            raise ValueError(f"token id out of range for {self.dtype}: [{arr.min()}, {arr.max()}]")
        self._parts.append(arr.astype(self.dtype))
        self.pending += len(arr)
        self.tokens += len(arr)
        self.documents += n_docs
        return len(arr)

    def drain(self) -> Iterator[np.ndarray]:
        if self.pending < self.sample_len:
            return
        buf = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        k = len(buf) // self.sample_len
        rows = buf[: k * self.sample_len].reshape(k, self.sample_len)
        rest = buf[k * self.sample_len:].copy()
        self._parts = [rest] if len(rest) else []
        self.pending = len(rest)
        for row in rows:
            self.samples += 1
            yield row

    @property
    def dropped_tail_tokens(self) -> int:
        """Tokens that did not fill a final sample (meaningful once all documents are added)."""
        return self.pending
