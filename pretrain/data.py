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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPLITS = ("train", "val")


SHM_LOCK_ENV = "PRETRAIN_SHM_LOCK"
SHM_LOCK_NAME = "pretrain-streaming-shm.lock"


def shm_lock_path() -> str:
    """The machine-wide lock every run on this machine takes around its use of streaming's shared-memory names:
    ``$PRETRAIN_SHM_LOCK`` when set, else ``/dev/shm/pretrain-streaming-shm.lock`` (the directory that holds the
    names themselves, so every user and process that can collide shares it), or the temporary directory."""
    import os
    import tempfile

    path = os.environ.get(SHM_LOCK_ENV)
    if path:
        return path
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK) else tempfile.gettempdir()
    return os.path.join(base, SHM_LOCK_NAME)


@contextlib.contextmanager
def _machine_lock(timeout: float | None = None) -> Iterator[bool]:
    """Holds the machine-wide lock; yields whether it is held (False only when ``timeout`` seconds passed first)."""
    import fcntl
    import os
    import time

    path = shm_lock_path()
    try:
        fd = os.open(path, os.O_RDONLY)  # an existing lock file, whoever made it (a read-only open is enough)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = True
        else:
            deadline, held = time.monotonic() + timeout, False
            while not held:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held = True
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _mapped_shm_names() -> set[str] | None:
    """Names of the /dev/shm segments some live process on this machine has mapped; None if that cannot be told
    for a process that might be a run (a Python process of ours whose memory map cannot be read): then
    nothing is cleaned."""
    import os

    names: set[str] = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find("/dev/shm/")
                    if i >= 0:
                        names.add(line[i + len("/dev/shm/"):].rstrip("\n").removesuffix(" (deleted)"))
        except FileNotFoundError:  # it ended meanwhile
            continue
        except OSError:  # its memory map is not ours to read
            try:
                if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                    continue  # another user's process cannot map our segments (streaming creates them 0600)
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue  # it ended meanwhile
            if comm.startswith(("python", "pt_", "deepspeed", "torchrun")):
                return None  # it might be a run: clean nothing
    return names


def _clean_unmapped_segments() -> int:
    """Unlink streaming's shared-memory segments (``NNNNNN_<name>`` in /dev/shm) that no live process maps: what
    killed runs left behind. Segments of live runs, on any machine user's behalf, are never touched (streaming's
    own ``clean_stale_shared_memory`` unlinks every segment it finds, live ones included). Returns how many."""
    import os
    import re

    from streaming.base.constant import SHM_TO_CLEAN

    if not os.path.isdir("/dev/shm"):
        return 0
    names = "|".join(re.escape(n.lstrip("_")) for n in SHM_TO_CLEAN)
    pattern = re.compile(rf"^\d{{6}}_({names})$")
    uid = os.getuid()
    candidates = []
    for name in os.listdir("/dev/shm"):
        if pattern.match(name):
            try:
                if uid == 0 or os.stat(os.path.join("/dev/shm", name)).st_uid == uid:
                    candidates.append(name)
            except OSError:
                pass
    if not candidates:
        return 0
    mapped = _mapped_shm_names()
    if mapped is None:
        return 0
    removed = 0
    for name in candidates:
        if name not in mapped:
            try:
                os.unlink(os.path.join("/dev/shm", name))
                removed += 1
            except OSError:  # another user's, or gone meanwhile
                pass
    return removed


def clean_stale_shared_memory() -> None:
    """Remove the shared memory that killed data loaders left (collective: local rank 0 cleans, all wait), unless
    ``PRETRAIN_CLEAN_STALE_SHM=0``.

    Only segments that no live process maps are removed, under the machine-wide lock of
    :func:`shared_memory_lock`: runs started side by side on one machine never remove each other's.
    """
    import os

    if os.environ.get("PRETRAIN_CLEAN_STALE_SHM", "1") != "0":
        from streaming.base.distributed import get_local_rank

        if get_local_rank() == 0:
            with _machine_lock():
                _clean_unmapped_segments()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# How long a multi-rank run's local leader waits for the machine-wide lock before it creates its loaders without it
# (with a warning): two multi-node jobs sharing the same nodes could otherwise wait on each other's leaders.
LEADER_LOCK_TIMEOUT_S = 300.0


@contextlib.contextmanager
def shared_memory_lock(world_size: int, local_rank: int = 0) -> Iterator[None]:
    """Holds the machine-wide lock (:func:`shm_lock_path`) while a run creates its loaders.

    mosaicml-streaming names a loader's shared memory by the first prefix it finds free; two processes
    creating loaders at the same moment can pick the same name (``FileExistsError: /000874_locals``), and the
    ranks of a multi-rank run can read another run's name as their leader's (``shared memory registered does not
    match local leader``). Every run takes this lock, so runs started together on one machine never collide,
    whoever started them (``$PRETRAIN_SHM_LOCK`` names another lock file). In a multi-rank run each node's local
    rank 0 takes it for its node, the ranks meet at a barrier, create their loaders together (streaming's own
    leader/follower handshake) and meet again before the leader lets it go. The leader waits at most
    :data:`LEADER_LOCK_TIMEOUT_S` for it, then goes on without it and says so.
    """
    if world_size <= 1:
        with _machine_lock():
            yield
        return
    from .distributed import barrier

    with contextlib.ExitStack() as stack:
        if local_rank == 0 and not stack.enter_context(_machine_lock(LEADER_LOCK_TIMEOUT_S)):
            print(f"warning: the machine-wide loader lock {shm_lock_path()} stayed taken for "
                  f"{LEADER_LOCK_TIMEOUT_S:.0f} s: creating this node's loaders without it", flush=True)
        barrier()  # every node's leader holds its node's lock
        yield
        barrier()  # every rank has created its loaders: streaming's names are registered


def _streaming_objects() -> list[Any]:
    """Streaming's shared-memory blocks and datasets alive now (one walk over the heap)."""
    import gc

    from streaming.base.dataset import StreamingDataset
    from streaming.base.shared.memory import SharedMemory

    # issubclass(type(o)) rather than isinstance(o): isinstance reads o.__class__, and some objects warn on any
    # attribute read (torch.distributed.reduce_op prints a FutureWarning for each walk)
    return [o for o in gc.get_objects() if issubclass(type(o), (SharedMemory, StreamingDataset))]


def streaming_memory_ids() -> set[int]:
    """The ids of streaming's shared-memory blocks and datasets alive now."""
    return {id(o) for o in _streaming_objects()}


def release_streaming_memory(before: set[int]) -> None:
    """Close (and, for those this process created, unlink) the streaming shared-memory blocks made since
    ``before`` (:func:`streaming_memory_ids`): streaming registers each with ``atexit``, which would keep them, and
    their file descriptors, until the process ends. A run's close and every in-process evaluation call it."""
    import atexit

    from streaming.base.dataset import StreamingDataset
    from streaming.base.shared.memory import SharedMemory

    new = [obj for obj in _streaming_objects() if id(obj) not in before]
    for obj in new:  # first the datasets' threads, which still read the blocks
        if isinstance(obj, StreamingDataset):
            # A run that stops mid-epoch leaves its epoch's two threads (prepare, ready) waiting for samples
            # nobody will ask for: they hold the dataset, and would stay until the process ends.
            iterator = getattr(obj, "_iterator", None)
            if iterator is not None:
                iterator.non_blocking_exit()  # they see it within a tick (a thread that failed has ended already)
            executor = getattr(obj, "_executor", None)
            if executor is not None:
                executor.shutdown(wait=True)
    for obj in new:
        if isinstance(obj, SharedMemory):
            atexit.unregister(obj.cleanup)
            obj.cleanup()


def is_remote(path: str) -> bool:
    return "://" in path


@dataclass
class DataConfig:
    path: str  # directory written by `python -m data_prep tokenize`: local, or a URL (s3://, gs://, ...)
    tokenizer: str | None = None  # sentencepiece .model or tokenizer.json; default: the one the manifest names
    seq_len: int | None = None  # training context; default (and maximum): the shards' seq_len
    shuffle: bool = True
    num_workers: int = 0  # DataLoader worker processes per rank
    validate_hash: bool = True  # check each shard's sha1 on first read (corruption is an error)
    mix: dict[str, float] = field(default_factory=dict)  # per-source data: {source: proportion} summing to 1; {} = natural
    cache_dir: str | None = None  # local copy of remote data (default ~/.cache/pretrain/<hash of path>); set it
    # for a local path too to stream from a shared filesystem into a local disk
    download_timeout: float = 120.0  # seconds per file fetched from the remote
    # data.tokenizer may differ from the file the data was tokenized with (its sha256 in the manifest) only when
    # this says it is deliberate (e.g. the same model re-saved); its vocabulary size and EOS id must still agree
    tokenizer_mismatch_ok: bool = False

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        if self.mix and (any(p < 0 for p in self.mix.values()) or not math.isclose(sum(self.mix.values()), 1.0, abs_tol=1e-6)):
            problems.append(("mix", f"proportions >= 0 that sum to 1 (they sum to {sum(self.mix.values()):.6g})"))
        if self.seq_len is not None and self.seq_len < 1:
            problems.append(("seq_len", "an integer >= 1"))
        if self.num_workers < 0:
            problems.append(("num_workers", "an integer >= 0"))
        if not (math.isfinite(self.download_timeout) and self.download_timeout > 0):
            problems.append(("download_timeout", "a finite number of seconds > 0"))
        if self.mix and not all(math.isfinite(p) for p in self.mix.values()):
            problems.append(("mix", "finite proportions"))
        return problems

    def build(self) -> DataSource:
        """What reads the data this config names."""
        return DataSource(self)


class DataSource:
    """The data a :class:`DataConfig` names: where its files are (local or a cache of remote data), the
    checks run before any work, and the training and validation loaders."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self._prepared = False  # decompress_shards ran (its hashes checked) in this process

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

    def _remote(self, rel: str) -> str | None:
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
        else:
            problems += self._check_tokenizer(manifest, Path(tok), mpath)
        problems += self._check_splits(manifest, mpath)
        if not problems:
            problems += self._check_shards(manifest, mpath)
        return problems

    def _check_tokenizer(self, manifest: dict[str, Any], tok: Path, mpath: Any) -> list[tuple[str, Any, str]]:
        """The tokenizer is the one the data was made with (the manifest's sha256 of it), or, with
        ``tokenizer_mismatch_ok``, one with the same vocabulary size and EOS id."""
        from data_prep.fsutil import sha256_file

        key, value = ("tokenizer", self.cfg.tokenizer) if self.cfg.tokenizer else ("path", self.cfg.path)
        want = manifest["tokenizer"].get("sha256")
        try:
            got = sha256_file(tok)
        except OSError as e:
            return [(key, value, f"a readable tokenizer file ({tok}: {e})")]
        if got == want:
            return []
        made_with = manifest["tokenizer"].get("path")
        if not self.cfg.tokenizer_mismatch_ok:
            what = ("the tokenizer the data was made with" if self.cfg.tokenizer else
                    f"the tokenizer the data was made with, unchanged since ({tok} was replaced after tokenizing)")
            return [(key, value, f"{what}: {made_with} with sha256 {want} (from {mpath}); {tok} has sha256 {got}. "
                     "Tokens of one tokenizer decoded with another are garbage, and an export would ship the wrong "
                     "vocabulary. Point data.tokenizer at the right file, or set data.tokenizer_mismatch_ok=true if "
                     "the difference is deliberate (the vocabulary size and EOS id must still agree)")]
        from data_prep.errors import DataPrepError
        from data_prep.tokenizer import load_tokenizer

        try:
            t = load_tokenizer(tok)
        except DataPrepError as e:
            return [(key, value, f"a tokenizer file ({e})")]
        problems = []
        if t.vocab_size != manifest["vocab_size"]:
            problems.append((key, value, f"a tokenizer with the data's vocabulary size {manifest['vocab_size']} (from "
                             f"{mpath}; {tok} has {t.vocab_size}), even with tokenizer_mismatch_ok"))
        if t.eos_id != manifest["eos_id"]:
            problems.append((key, value, f"a tokenizer with the data's EOS id {manifest['eos_id']} (from {mpath}; "
                             f"{tok} has {t.eos_id}), even with tokenizer_mismatch_ok"))
        return problems

    def _check_splits(self, manifest: dict[str, Any], mpath: Any) -> list[tuple[str, Any, str]]:
        """Every split has samples (a loader over an empty split fails deep inside streaming)."""
        problems = []
        for split in SPLITS:
            n = manifest["splits"][split]["samples"]
            if not (isinstance(n, int) and n > 0):
                hint = ("raise --val-fraction" if split == "val" else "add data or lower --seq-len")
                problems.append(("path", self.cfg.path, f"a dataset whose {split!r} split has samples ({mpath} "
                                 f"says {n} samples, {manifest['splits'][split]['tokens']} tokens: re-run "
                                 f"`data_prep tokenize` and {hint})"))
        return problems

    def _check_shards(self, manifest: dict[str, Any], mpath: Any, samples: int = 8) -> list[tuple[str, Any, str]]:
        """The shards are what the manifest says: their column is ``ndarray:<dtype>:<sample_len>`` and the first
        ``samples`` samples of each split's first shard hold token ids below ``vocab_size``. Cheap: one shard
        per split is read (decompressed in memory if need be), never the dataset."""
        import numpy as np

        want = f"ndarray:{manifest['dtype']}:{manifest['sample_len']}"
        column = manifest.get("column", "tokens")
        vocab = manifest["vocab_size"]
        problems = []
        for split in SPLITS:
            for d in self.split_dirs(manifest, split):
                index_path = d / "index.json"
                try:
                    shards = json.loads(index_path.read_text())["shards"]
                except (OSError, ValueError, KeyError, TypeError) as e:
                    problems.append(("path", self.cfg.path, f"a readable MDS index at {index_path} ({e})"))
                    continue
                if not shards:
                    problems.append(("path", self.cfg.path, f"shards in {index_path} ({mpath} says the split has "
                                     "samples, the index lists none)"))
                    continue
                bad = [sh.get("raw_data", {}).get("basename") for sh in shards
                       if sh.get("column_encodings") != [want] or sh.get("column_names") != [column]]
                if bad:
                    sh = next(x for x in shards if x.get("raw_data", {}).get("basename") == bad[0])
                    problems.append(("path", self.cfg.path, f"shards of column {column!r} = {want} as {mpath} says "
                                     f"(dtype {manifest['dtype']}, seq_len {manifest['seq_len']}); {d / bad[0]} has "
                                     f"{sh.get('column_names')} = {sh.get('column_encodings')} ({len(bad)} such shards)"))
                    continue
                try:
                    rows = _first_samples(d, shards[0], samples)
                except (OSError, ValueError) as e:
                    problems.append(("path", self.cfg.path, f"a readable first shard in {d} ({e})"))
                    continue
                tokens = np.frombuffer(b"".join(rows), dtype=manifest["dtype"])
                if tokens.size and int(tokens.max()) >= vocab:
                    problems.append(("path", self.cfg.path, f"token ids below the vocab_size {vocab} of {mpath}; "
                                     f"{d / shards[0]['raw_data']['basename']} holds id {int(tokens.max())} in its "
                                     f"first {len(rows)} samples (the manifest does not describe these shards)"))
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

    def tokenizer_path(self, manifest: dict[str, Any] | None = None) -> str | None:
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
        """Verify every shard against its index's sha1 and decompress those with no raw copy; returns how many
        raw shards were written.

        Every path from disk to a batch checks the hashes (``data.validate_hash``): mosaicml-streaming checks a
        compressed shard only when it decompresses it itself, never a raw shard that is already there (data
        written with ``--compression none``, or decompressed by an earlier run). Here a compressed shard is
        checked before it is decompressed, the raw data before it is written (atomically, under a unique
        temporary name: nodes sharing the directory only repeat work), and a raw shard already present is
        checked too: one that fails is written again from its verified compressed copy, or refused by name
        (:class:`ShardError`) when there is none. Each node's local rank 0 calls this before the datasets are
        built. Streamed data: cached files that fail their hash are removed (fetched again on first read).
        """
        self._prepared = True
        if self.streamed:
            return self._verify_cache()
        manifest = self.manifest()
        dirs = [d for split in SPLITS for d in self.split_dirs(manifest, split)]
        return sum(self._prepare_dir(d) for d in dirs)

    def verify_split(self, split: str) -> int:
        """:meth:`decompress_shards` for one split, in a process where no rank did it (``pretrain.evaluate``);
        a no-op after :meth:`decompress_shards` or on a rank other than its node's first."""
        import os

        if self._prepared or os.environ.get("LOCAL_RANK", "0") != "0":
            return 0
        if self.streamed:
            return self._verify_cache()
        return sum(self._prepare_dir(d) for d in self.split_dirs(self.manifest(), split))

    def _prepare_dir(self, d: Path) -> int:
        from concurrent.futures import ThreadPoolExecutor

        index = d / "index.json"
        try:
            shards = json.loads(index.read_text())["shards"]
        except (OSError, ValueError, KeyError) as e:
            raise ShardError(f"{index}: not a readable MDS index ({e})") from e
        validate = self.cfg.validate_hash
        import os

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return sum(pool.map(lambda shard: _prepare_shard(d, index, shard, validate), shards))

    def _verify_cache(self) -> int:
        """Remove cached shards (raw or compressed) that fail their hash: streaming fetches them again."""
        import logging

        if not self.cfg.validate_hash:
            return 0
        log = logging.getLogger(__name__)
        try:
            manifest = self.manifest()
        except (OSError, ValueError):
            return 0
        for split in SPLITS:
            for d in self.split_dirs(manifest, split):
                try:
                    shards = json.loads((d / "index.json").read_text())["shards"]
                except (OSError, ValueError, KeyError):
                    continue
                for shard in shards:
                    for key in ("raw_data", "zip_data"):
                        info = shard.get(key)
                        path = d / info["basename"] if info else None
                        if path is not None and path.is_file() and _sha1(path.read_bytes()) != _want_sha1(info, path, d / "index.json"):
                            log.warning("%s fails its sha1 (corrupt cache); removed, it is fetched again", path)
                            path.unlink(missing_ok=True)
        return 0

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

        self.verify_split("val")

        return {
            name: StreamingDataset(local=str(self.local_root / d), remote=self._remote(d.as_posix()), shuffle=False,
                                   batch_size=1, validate_hash="sha1" if self.cfg.validate_hash else None)
            for name, d in self.sources(self.manifest(), "val").items()
        }

    def build_val_dataset(self):
        from streaming import StreamingDataset

        self.verify_split("val")

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


class ShardError(ValueError):
    """A shard that fails its hash (or is missing) with no verified copy to restore it from: names the file."""


def _sha1(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(data).hexdigest()


def _want_sha1(info: dict[str, Any], path: Path, index: Path) -> str:
    want = (info.get("hashes") or {}).get("sha1")
    if not isinstance(want, str):
        raise ShardError(f"{index}: no sha1 for {path.name} (hashes: {sorted(info.get('hashes') or {})}); data "
                         "written by `data_prep tokenize` always has one: re-run it, or set data.validate_hash=false")
    return want


def _prepare_shard(d: Path, index: Path, shard: dict[str, Any], validate: bool) -> int:
    """Check (and if need be write) one shard's raw file; 1 if it was written."""
    import logging
    import os
    import socket
    import threading

    raw_info, zip_info = shard["raw_data"], shard.get("zip_data")
    raw = d / raw_info["basename"]
    if raw.is_file():
        if not validate:
            return 0
        want = _want_sha1(raw_info, raw, index)
        if _sha1(raw.read_bytes()) == want:
            return 0
        if not zip_info:
            raise ShardError(f"{raw}: corrupt shard: its sha1 differs from {index}'s {want}, and there is no "
                             "compressed copy to restore it from; restore the file or re-run `data_prep tokenize`")
        logging.getLogger(__name__).warning("%s fails its sha1 (from %s): written again from %s", raw, index,
                                            zip_info["basename"])
    elif not zip_info:
        raise ShardError(f"{raw}: missing shard (listed in {index}, with no compressed copy); restore the "
                         "file or re-run `data_prep tokenize`")
    from streaming.base.compression import decompress

    zpath = d / zip_info["basename"]
    try:
        packed = zpath.read_bytes()
    except FileNotFoundError:
        raise ShardError(f"{zpath}: missing shard (listed in {index}, with no raw copy {raw.name}); restore "
                         "the file or re-run `data_prep tokenize`") from None
    if validate and _sha1(packed) != _want_sha1(zip_info, zpath, index):
        raise ShardError(f"{zpath}: corrupt shard: its sha1 differs from {index}'s "
                         f"{_want_sha1(zip_info, zpath, index)}; restore the file or re-run `data_prep tokenize`")
    try:
        data = decompress(shard["compression"], packed)
    except Exception as e:  # the codec's own error
        raise ShardError(f"{zpath}: cannot be decompressed ({shard['compression']}: {e})") from e
    if validate and _sha1(data) != _want_sha1(raw_info, raw, index):
        raise ShardError(f"{zpath}: decompresses to data whose sha1 differs from {index}'s for {raw.name}; "
                         "restore the file or re-run `data_prep tokenize`")
    tmp = raw.with_name(f"{raw.name}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, raw)
    finally:
        tmp.unlink(missing_ok=True)
    return 1


def _first_samples(d: Path, shard: dict[str, Any], n: int) -> list[bytes]:
    """The first ``n`` samples of an MDS shard (its raw file, or its compressed one decompressed in memory)."""
    import numpy as np

    raw = d / shard["raw_data"]["basename"]
    if raw.is_file():
        data = raw.read_bytes()
    elif shard.get("zip_data"):
        from streaming.base.compression import decompress

        data = decompress(shard["compression"], (d / shard["zip_data"]["basename"]).read_bytes())
    else:
        raise ValueError(f"{raw} not found")
    count = int(np.frombuffer(data[:4], np.uint32)[0]) if len(data) >= 4 else 0
    k = min(n, count, shard.get("samples", count))
    offsets = np.frombuffer(data[4:4 + 4 * (k + 1)], np.uint32)
    if len(offsets) < k + 1 or any(int(offsets[i]) > int(offsets[i + 1]) or int(offsets[i + 1]) > len(data) for i in range(k)):
        raise ValueError(f"{raw}: not an MDS shard (bad sample offsets)")
    return [data[int(offsets[i]):int(offsets[i + 1])] for i in range(k)]

