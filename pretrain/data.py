"""Training and validation data: packed token sequences from MDS shards.

The data directory is what ``python -m data_prep tokenize`` writes:
``manifest.json`` plus MDS datasets ``train/`` and ``val/`` whose samples hold
``seq_len + 1`` token ids each. A training sample of length ``L`` gives inputs
``tokens[:L]`` and targets ``tokens[1:L+1]``.

With per-source output (``tokenize --per-source``) each split holds one MDS
dataset per source (``train/RedPajamaC4/``, ...); training mixes them by the
proportions in ``data.mix`` (or in their natural proportions), as
mosaicml-streaming ``Stream``s.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

SPLITS = ("train", "val")


def clean_stale_shared_memory() -> None:
    """mosaicml-streaming's ``clean_stale_shared_memory`` (collective), unless ``PRETRAIN_CLEAN_STALE_SHM=0``.

    Streaming's cleanup unlinks every segment it knows the name of, including those of live loaders in other
    processes: whoever starts several runs at once on one machine (``python -m experiments --slots K``) cleans
    once before them and sets the variable to 0 for each run.
    """
    import os

    if os.environ.get("PRETRAIN_CLEAN_STALE_SHM", "1") == "0":
        return
    from streaming.base.util import clean_stale_shared_memory as clean

    clean()


@contextlib.contextmanager
def shared_memory_lock(world_size: int) -> Iterator[None]:
    """Holds ``$PRETRAIN_SHM_LOCK`` (an exclusive file lock) while a single-process run creates its loaders.

    mosaicml-streaming names a loader's shared memory by the first prefix it finds free; two processes
    creating loaders at the same moment can pick the same name (``FileExistsError: /000874_locals``).
    Whoever starts several runs at once on one machine (``python -m experiments --slots K``) sets the
    variable to one path for all of them. Unset, or in a multi-rank run (whose ranks create their loaders
    together), it does nothing.
    """
    import os

    path = os.environ.get("PRETRAIN_SHM_LOCK")
    if not path or world_size > 1:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_remote(path: str) -> bool:
    return "://" in path


@dataclass
class DataConfig:
    path: str  # directory written by `python -m data_prep tokenize`: local, or a URL (s3://, gs://, ...)
    tokenizer: Optional[str] = None  # sentencepiece .model or tokenizer.json; default: the one the manifest names
    seq_len: Optional[int] = None  # training context; default (and maximum): the shards' seq_len
    shuffle: bool = True
    num_workers: int = 0  # DataLoader worker processes per rank
    validate_hash: bool = True  # check each shard's sha1 on first read (corruption is an error)
    mix: dict[str, float] = field(default_factory=dict)  # per-source data: {source: proportion} summing to 1; {} = natural
    cache_dir: Optional[str] = None  # local copy of remote data (default ~/.cache/pretrain/<hash of path>); set it
    # for a local path too to stream from a shared filesystem into a local disk
    download_timeout: float = 120.0  # seconds per file fetched from the remote

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.mix and (any(p < 0 for p in self.mix.values()) or not math.isclose(sum(self.mix.values()), 1.0, abs_tol=1e-6)):
            problems.append(("mix", f"proportions >= 0 that sum to 1 (they sum to {sum(self.mix.values()):.6g})"))
        if self.seq_len is not None and self.seq_len < 1:
            problems.append(("seq_len", "an integer >= 1"))
        if self.num_workers < 0:
            problems.append(("num_workers", "an integer >= 0"))
        return problems

    def build(self) -> "DataSource":
        """What reads the data this config names."""
        return DataSource(self)


class DataSource:
    """The data a :class:`DataConfig` names: where its files are (local or a cache of remote data), the
    checks run before any work, and the training and validation loaders."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg

    # -- where the data is -----------------------------------------------------------------
    @property
    def streamed(self) -> bool:
        """Read through a local cache (remote data, or a cache_dir given for local data)."""
        return is_remote(self.cfg.path) or self.cfg.cache_dir is not None

    @property
    def local_root(self) -> Path:
        """Where the files are read from: the data directory itself, or its cache."""
        if not self.streamed:
            return Path(self.cfg.path)
        if self.cfg.cache_dir:
            return Path(self.cfg.cache_dir)
        import hashlib

        return Path.home() / ".cache" / "pretrain" / hashlib.sha256(self.cfg.path.encode()).hexdigest()[:16]

    def _remote(self, rel: str) -> Optional[str]:
        return f"{self.cfg.path.rstrip('/')}/{rel}" if self.streamed else None

    def fetch(self, rel: str) -> Path:
        """The local copy of ``path/rel``, downloaded into the cache first when streamed (fresh each run)."""
        local = self.local_root / rel
        if self.streamed:
            from streaming.base.storage.download import CloudDownloader

            local.parent.mkdir(parents=True, exist_ok=True)
            local.unlink(missing_ok=True)
            CloudDownloader.direct_download(self._remote(rel), str(local), timeout=self.cfg.download_timeout)
        return local

    # -- checks against the files, run before any work ------------------------------------
    def manifest(self) -> dict[str, Any]:
        from data_prep.manifest import read_manifest

        return read_manifest(self.local_root)

    def check_files(self) -> list[tuple[str, Any, str]]:
        """(key, value, expected) problems with the data directory and tokenizer."""
        if self.streamed:
            return self._check_remote()
        root = Path(self.cfg.path)
        if not root.is_dir():
            return [("path", self.cfg.path, "an existing directory written by `python -m data_prep tokenize` (not found)")]
        mpath = root / "manifest.json"
        try:
            manifest = self.manifest()
        except FileNotFoundError:
            return [("path", self.cfg.path, f"a data directory with manifest.json ({mpath} not found; run `python -m data_prep tokenize`)")]
        except (ValueError, OSError) as e:
            return [("path", self.cfg.path, f"a valid dataset manifest ({e})")]
        problems = []
        for split in SPLITS:
            for d in self.split_dirs(manifest, split):
                if not (d / "index.json").is_file():
                    problems.append(("path", self.cfg.path, f"an MDS dataset at {d}/index.json (not found)"))
        sources = list(self.sources(manifest, "train"))
        if self.cfg.mix and not sources:
            problems.append(("mix", self.cfg.mix, "{} for single-layout data (mixing needs `data_prep tokenize --per-source`)"))
        unknown = sorted(set(self.cfg.mix) - set(sources)) if sources else []
        if unknown:
            problems.append(("mix", self.cfg.mix, f"sources of {self.cfg.path}: {', '.join(sources)} (unknown: {', '.join(unknown)})"))
        shard_len = manifest.get("seq_len")
        if self.cfg.seq_len is not None and isinstance(shard_len, int) and self.cfg.seq_len > shard_len:
            problems.append(("seq_len", self.cfg.seq_len, f"at most the shards' seq_len {shard_len} (from {mpath})"))
        tok = self.tokenizer_path(manifest)
        if tok is None or not Path(tok).is_file():
            key = "tokenizer" if self.cfg.tokenizer else "path"
            problems.append((key, self.cfg.tokenizer or self.cfg.path, f"an existing tokenizer file: a sentencepiece model (.model) or a tokenizer.json ({tok} not found)"))
        return problems

    def _check_remote(self) -> list[tuple[str, Any, str]]:
        """Fetch the manifest and the split indexes into the cache: unreachable data fails here, before any step."""
        try:
            self.fetch("manifest.json")
            manifest = self.manifest()
            for split in SPLITS:
                for d in self.split_dirs(manifest, split):
                    self.fetch(f"{d.relative_to(self.local_root).as_posix()}/index.json")
        except Exception as e:  # any storage backend's error: credentials, network, missing object
            return [("path", self.cfg.path, f"reachable data with a manifest.json ({type(e).__name__}: {str(e)[:300]})")]
        problems = []
        shard_len = manifest.get("seq_len")
        if self.cfg.seq_len is not None and isinstance(shard_len, int) and self.cfg.seq_len > shard_len:
            problems.append(("seq_len", self.cfg.seq_len, f"at most the shards' seq_len {shard_len} (from {self.cfg.path}/manifest.json)"))
        if self.cfg.tokenizer and not Path(self.cfg.tokenizer).is_file():  # training itself needs only the vocabulary size
            problems.append(("tokenizer", self.cfg.tokenizer, "an existing tokenizer file: a sentencepiece model (.model) or a tokenizer.json (not found)"))
        return problems

    def tokenizer_path(self, manifest: Optional[dict[str, Any]] = None) -> Optional[str]:
        if self.cfg.tokenizer:
            return self.cfg.tokenizer
        manifest = manifest if manifest is not None else self.manifest()
        tok = manifest.get("tokenizer", {})
        return tok.get("path") if isinstance(tok, dict) else None

    # -- layout ----------------------------------------------------------------------------
    @staticmethod
    def sources(manifest: dict[str, Any], split: str) -> dict[str, Path]:
        """{source: its MDS directory (relative)} of a per-source split, sources with samples only; {} if single."""
        if manifest.get("layout") != "per-source":
            return {}
        entries = manifest["splits"][split].get("sources", {})
        return {name: Path(v["dir"]) for name, v in sorted(entries.items()) if v.get("samples", 0) > 0}

    def split_dirs(self, manifest: dict[str, Any], split: str) -> list[Path]:
        sources = self.sources(manifest, split)
        root = self.local_root
        return [root / d for d in sources.values()] if sources else [root / split]

    def _dataset_kwargs(self, split: str, proportions: bool) -> dict[str, Any]:
        """``local=``/``remote=`` for a single dataset (or natural mixing), ``streams=`` to mix sources by proportion."""
        sources = self.sources(self.manifest(), split)
        if not (proportions and self.cfg.mix and sources):  # the split's merged index covers every source
            return {"local": str(self.local_root / split), "remote": self._remote(split)}
        from streaming import Stream

        return {
            "streams": [
                Stream(local=str(self.local_root / d), remote=self._remote(d.as_posix()), proportion=self.cfg.mix[name])
                for name, d in sources.items()
                if self.cfg.mix.get(name, 0) > 0
            ]
        }

    def decompress_shards(self) -> int:
        """Decompress every compressed shard of local data that has no raw copy yet; returns how many.

        mosaicml-streaming decompresses a shard on its first read into ``shard.N.mds.tmp``,
        coordinated within one node only: two nodes on a shared filesystem collide. Each node's
        local rank 0 calls this before the datasets are built (unique temporary names, atomic
        renames: nodes doing it at once only repeat work). Streamed data has a cache per node.
        """
        if self.streamed:
            return 0
        import os
        import socket

        from streaming.base.compression import decompress

        manifest, done = self.manifest(), 0
        for split in SPLITS:
            for d in self.split_dirs(manifest, split):
                index = json.loads((d / "index.json").read_text())
                for shard in index.get("shards", []):
                    raw = d / shard["raw_data"]["basename"]
                    if raw.exists() or not shard.get("zip_data"):
                        continue
                    data = decompress(shard["compression"], (d / shard["zip_data"]["basename"]).read_bytes())
                    tmp = raw.with_name(f"{raw.name}.{socket.gethostname()}.{os.getpid()}.tmp")
                    tmp.write_bytes(data)
                    os.replace(tmp, raw)
                    done += 1
        return done

    # -- loaders ---------------------------------------------------------------------------
    def build_train_loader(self, micro_batch_size: int, seed: int):
        """A StreamingDataLoader over the train split, sharded over ranks, shuffled by ``seed``.

        Its ``state_dict()`` is the data position to checkpoint; load it into a
        loader built by this same method to resume.
        """
        from streaming import StreamingDataLoader, StreamingDataset

        ds = StreamingDataset(
            **self._dataset_kwargs("train", proportions=True),
            shuffle=self.cfg.shuffle,
            shuffle_seed=seed,
            batch_size=micro_batch_size,
            validate_hash="sha1" if self.cfg.validate_hash else None,
            replication=None,
        )
        import torch

        return StreamingDataLoader(
            ds,
            batch_size=micro_batch_size,
            num_workers=self.cfg.num_workers,
            collate_fn=collate_tokens,
            drop_last=True,
            persistent_workers=False,
            # Its own generator: starting an epoch must not draw from the global RNG (dropout's),
            # or a resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(seed),
        )

    def build_val_datasets_per_source(self) -> dict[str, Any]:
        """{source: its validation dataset} of per-source data; {} for single-layout data."""
        from streaming import StreamingDataset

        return {
            name: StreamingDataset(local=str(self.local_root / d), remote=self._remote(d.as_posix()), shuffle=False,
                                   batch_size=1, validate_hash="sha1" if self.cfg.validate_hash else None)
            for name, d in self.sources(self.manifest(), "val").items()
        }

    def build_val_dataset(self):
        from streaming import StreamingDataset

        return StreamingDataset(
            **self._dataset_kwargs("val", proportions=False),
            shuffle=False,
            batch_size=1,
            validate_hash="sha1" if self.cfg.validate_hash else None,
        )


def collate_tokens(samples: list[dict[str, Any]]):
    """Stack samples' ``tokens`` into one int64 tensor [B, seq_len + 1]."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack([s["tokens"] for s in samples]).astype(np.int64))


def endless(loader) -> Iterator[Any]:
    """Batches from ``loader``, epoch after epoch."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the training split yields no batch for this rank: too few samples for the batch size and world size")


def split_batch(tokens, seq_len: int):
    """(inputs, targets), each [B, seq_len], from packed samples [B, >= seq_len + 1]."""
    return tokens[:, :seq_len], tokens[:, 1 : seq_len + 1]
