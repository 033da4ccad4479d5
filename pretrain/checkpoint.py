"""Checkpoints you can trust, on top of DeepSpeed's ``save_checkpoint``.

Layout under the checkpoint directory::

    step_00000100/                          one checkpoint ("tag")
        mp_rank_00_model_states.pt, *_optim_states.pt    DeepSpeed's (ZeRO-partitioned) files
        trainer_state_rank{R}.json          per rank: step, tokens, data-loader position, RNG states
        config.yaml                         the resolved run config that wrote it
        MANIFEST.json                       size and sha256 of every file above
        COMPLETE                            written last: step, config hash, version, world size
    latest                                  name of the newest complete checkpoint (a hint)

The commit runs after a barrier, once every rank has finished writing: the
manifest, then the marker, then the pointer, each written to a temporary name,
fsynced and renamed. DeepSpeed's own ``latest`` file is never written (rank 0
writes it before the other ranks are done). A checkpoint without its marker is
never loaded; one whose files differ from its manifest is skipped with a
warning naming the file, for the previous complete one. Pruning keeps the
newest ``keep_last`` plus the permanent ones, and deletes a checkpoint's marker
before its files.

DeepSpeed loads its files with ``torch.load(weights_only=False)``; we load
them with ``weights_only=True``, allowing only the three DeepSpeed classes its
files contain.

Reading is :class:`CheckpointDir` (read-only: list, verify, find the newest
sound one, resolve a tag or a path safely, load into an engine); writing is
:class:`CheckpointSaver`. Where a run's checkpoints live is decided in one
place, :meth:`CheckpointConfig.root`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from data_prep.fsutil import atomic_write_bytes, sha256_file

from . import faults
from ._version import __version__
from .distributed import DistInfo, barrier, gather_to_main
from .errors import CheckpointError, UnsafeCheckpoint  # noqa: F401  (re-exported)

MARKER = "COMPLETE"
MANIFEST = "MANIFEST.json"
POINTER = "latest"
TAG_RE = re.compile(r"^step_(\d{8,})$")
SAVE_PHASES = ("engine_save", "rank_state", "manifest", "marker", "pointer", "prune")

Verify = Literal["hash", "size", "none"]


@dataclass
class CheckpointConfig:
    dir: str | None = None  # default: <run_dir>/checkpoints
    interval: int = 0  # save every N updates; 0: only at the end (and on preemption)
    interval_minutes: float = 0.0  # also save when this much time passed since the last save; 0: off
    keep_last: int = 2  # complete checkpoints kept besides the permanent ones (older ones are pruned)
    resume: bool = True  # continue from the newest sound checkpoint in `dir` if there is one
    verify: Verify = "hash"  # check files against the manifest before loading
    permanent: list[int] = field(default_factory=list)  # steps saved and never pruned (branch points)
    permanent_every: int = 0  # also every N steps, permanently (a grid of branch points); 0: off
    schedule_branch_points: bool = False  # also keep the schedule's own branch points (end of warmup, ...)
    branch_from: str | None = None  # start from another run's checkpoint dir (.../checkpoints/step_N)
    # A fresh run (step 0, a fresh optimizer of any kind and schedule) from other weights (also model.init_from):
    # "hf:DIR" Hugging Face Llama/Phi-3 weights, or PATH one of our checkpoints (RUN/checkpoints/step_N, or a merge's)
    init_from: str | None = None
    load_optimizer_state: bool = True  # false: a branch takes the parent's weights and counters, a fresh optimizer
    restore_rng: bool = True  # restore every rank's RNG states (False only to show what exactness needs)
    load_data_state: bool = True  # continue the saved data order; false: a fresh order (a branch onto new data)
    convert_workers: int = 0  # parallel workers converting a checkpoint for another world size; 0: the cores, at most 8

    def validate(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("interval", "permanent_every", "convert_workers"):
            if getattr(self, name) < 0:
                problems.append((name, "an integer >= 0"))
        if self.interval_minutes < 0:
            problems.append(("interval_minutes", "a number of minutes >= 0"))
        if self.keep_last < 1:
            problems.append(("keep_last", "an integer >= 1"))
        if any(s < 1 for s in self.permanent):
            problems.append(("permanent", "steps >= 1"))
        if self.init_from is not None and self.init_from.removeprefix("hf:").strip() == "":
            problems.append(("init_from", "'hf:DIR' (a Hugging Face Llama or Phi-3 directory), the path of one of our "
                                          "checkpoints (RUN/checkpoints/step_NNNNNNNN, or a merged one), or null"))
        if self.init_from is not None and self.branch_from is not None:
            problems.append(("init_from", "null when branch_from is set (a run starts from one of them)"))
        if not self.load_optimizer_state and self.branch_from is None and self.init_from is None:
            problems.append(("load_optimizer_state", "true unless checkpoint.branch_from is set (false: the branch "
                                                     "starts with a fresh optimizer state)"))
        return problems

    @property
    def init_checkpoint(self) -> str | None:
        """``init_from`` when it names one of our checkpoints (not ``hf:``); else None."""
        if self.init_from is None or self.init_from.startswith("hf:"):
            return None
        return self.init_from

    def root(self, run_dir: Path) -> Path:
        """Where the run's checkpoints live: ``dir`` (relative to the working directory, or else to the
        run directory when only that exists), or ``<run_dir>/checkpoints``. The one rule, for writers and readers."""
        if not self.dir:
            return Path(run_dir) / "checkpoints"
        path = Path(self.dir)
        if not path.is_absolute() and not path.is_dir() and (Path(run_dir) / path).is_dir():
            return Path(run_dir) / path
        return path

    def permanent_steps(self, schedule, max_steps: int) -> list[int]:
        steps = set(self.permanent)
        if self.permanent_every:
            steps.update(range(self.permanent_every, max_steps + 1, self.permanent_every))
        if self.schedule_branch_points:
            steps.update(schedule.branch_points(max_steps))
        return sorted(s for s in steps if 1 <= s <= max_steps)




WEIGHTS = "model.safetensors"  # a merged checkpoint's fp32 weights (pretrain.merge); no DeepSpeed files


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    m = TAG_RE.match(tag)
    if not m:
        raise CheckpointError(f"{tag!r} is not a checkpoint name (expected step_NNNNNNNN)")
    return int(m.group(1))


def atomic_write_text(path: Path, text: str) -> None:
    """Temp file, fsync, rename, then fsync the directory so the rename itself is durable."""
    atomic_write_bytes(path, text.encode())
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# DeepSpeed's checkpoint files hold these classes besides tensors and plain data.
def _deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Within the block, every ``torch.load`` (DeepSpeed's included) runs with ``weights_only=True``."""
    import torch

    original = torch.load
    allowed = _deepspeed_safe_globals()

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        with torch.serialization.safe_globals(allowed):
            try:
                return original(*args, **kwargs)
            except pickle.UnpicklingError as e:
                where = args[0] if args else kwargs.get("f", "?")
                found = next((l.strip() for l in str(e).splitlines() if "Unsupported global" in l or "GLOBAL" in l),
                             str(e).splitlines()[0] if str(e) else "an object that is not weights")
                raise UnsafeCheckpoint(
                    f"{where}: refused: it holds a pickled object that is not weights ({found}); nothing in it was "
                    "executed. Do not load it with weights_only=False: that would run it"
                ) from None

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original


class CheckpointDir:
    """The checkpoints under one root, read-only: list, verify, find, resolve, load."""

    def __init__(self, root: Path, verify: Verify = "hash"):
        self.root = Path(root)
        self.verify_mode = verify

    @classmethod
    def open(cls, path: Path, verify: Verify = "hash") -> tuple[CheckpointDir, str]:
        """(its directory, tag) of one complete checkpoint given by its path; CheckpointError for anything else.

        The one check of a checkpoint named by a user (``--branch-from``, ``evaluate``, ``export``, ...).
        """
        path = Path(path).resolve()
        if not TAG_RE.match(path.name) or not (path / MARKER).is_file():
            raise CheckpointError(f"{path}: not a complete checkpoint (expected a step_NNNNNNNN directory with a {MARKER} marker)")
        return cls(path.parent, verify), path.name

    def path(self, tag: str) -> Path:
        """``root/tag``, refusing a tag that is not a checkpoint name or leaves the root."""
        path = (self.root / tag).resolve()
        if not TAG_RE.match(tag) or self.root.resolve() not in path.parents:
            raise CheckpointError(f"checkpoint {tag!r} is outside the checkpoint directory {self.root}")
        return path

    def tag_of(self, tag: str | None = None) -> str:
        """``tag`` if it is complete (else CheckpointError naming the complete ones), or the newest complete one."""
        complete = self.complete_tags()
        if tag is None:
            if not complete:
                raise CheckpointError(f"no complete checkpoint (a step_* directory with a {MARKER} marker) in {self.root}")
            return complete[-1]
        if tag not in complete:
            state = "is incomplete (no COMPLETE marker)" if (self.root / tag).is_dir() else "does not exist"
            raise CheckpointError(f"checkpoint {self.root / tag} {state}; complete checkpoints: {', '.join(complete) or 'none'}")
        return tag

    # -- finding and checking --------------------------------------------------------------
    def complete_tags(self) -> list[str]:
        """Complete checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        tags = [p.name for p in self.root.iterdir() if TAG_RE.match(p.name) and (p / MARKER).is_file()]
        return sorted(tags, key=step_of)

    def marker(self, tag: str) -> dict[str, Any]:
        return json.loads((self.root / tag / MARKER).read_text())

    def verify(self, tag: str, mode: Verify | None = None) -> list[str]:
        """Problems with ``tag``'s files against its manifest: ``'<file>: <what>'``; [] if sound."""
        mode = mode or self.verify_mode
        path = self.root / tag
        try:
            marker = self.marker(tag)
            manifest_text = (path / MANIFEST).read_text()
        except (OSError, json.JSONDecodeError) as e:
            return [f"{path}: unreadable marker or manifest ({e})"]
        if hashlib.sha256(manifest_text.encode()).hexdigest() != marker.get("manifest_sha256"):
            return [f"{path / MANIFEST}: does not match its COMPLETE marker"]
        if mode == "none":
            return []
        bad = []
        for name, meta in json.loads(manifest_text)["files"].items():
            f = path / name
            if not f.is_file():
                bad.append(f"{f}: missing")
            elif f.stat().st_size != meta["bytes"]:
                bad.append(f"{f}: {f.stat().st_size} bytes, the manifest says {meta['bytes']}")
            elif mode == "hash" and sha256_file(f) != meta["sha256"]:
                bad.append(f"{f}: sha256 differs from the manifest")
        return bad

    def newest_sound(self) -> str | None:
        """The newest complete checkpoint whose files check out, warning about each one skipped.

        None when there is no complete checkpoint; CheckpointError when there are
        some but every one is damaged.
        """
        tags = self.complete_tags()
        for tag in reversed(tags):
            problems = self.verify(tag)
            if not problems:
                return tag
            print(f"warning: skipping checkpoint {self.root / tag}: {'; '.join(problems)}", file=sys.stderr, flush=True)
        if tags:
            raise CheckpointError(f"no loadable checkpoint in {self.root}: all {len(tags)} complete ones are damaged (see warnings)")
        return None

    def is_merged(self, tag: str) -> bool:
        return "merged" in self.marker(tag)

    def fp32_weights(self, tag: str) -> dict[str, Any]:
        """The model's fp32 state dict at ``tag``: a merged checkpoint's weights, or every ZeRO partition
        gathered (DeepSpeed's zero_to_fp32, loading with weights_only)."""
        path = self.path(tag)
        if self.is_merged(tag):
            from safetensors.torch import load_file

            return load_file(str(path / WEIGHTS))
        import torch

        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        # DeepSpeed's own loader would unpickle arbitrary objects; its progress chatter goes to stderr.
        with weights_only_loading(), contextlib.redirect_stdout(sys.stderr):
            sd = get_fp32_state_dict_from_zero_checkpoint(str(self.root), tag=tag)
        return {k.removeprefix("module."): v for k, v in sd.items()}

    def model(self, tag: str, config):
        """A GPT of ``config`` (the run's model config) holding ``tag``'s fp32 weights, in eval mode."""
        import torch

        from .model.gpt import GPT

        sd = self.fp32_weights(tag)
        with torch.device("meta"):
            model = GPT(config)
        if config.tie_embeddings:
            sd.setdefault("lm_head.weight", sd.get("tok_emb.weight"))
        missing, unexpected = set(model.state_dict()) - set(sd), set(sd) - set(model.state_dict())
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {self.root / tag} does not fit the run's model config: "
                                  f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        model.load_state_dict(sd, strict=True, assign=True)
        if config.tie_embeddings:
            model.lm_head.weight = model.tok_emb.weight
        return model.float().eval()

    def check(self, tag: str) -> None:
        """CheckpointError unless ``tag``'s files match its manifest."""
        problems = self.verify(tag)
        if problems:
            raise CheckpointError(f"checkpoint {self.root / tag}: files differ from its manifest: {'; '.join(problems)}")

    # -- loading -----------------------------------------------------------------------------
    def load(self, engine, tag: str, dist: DistInfo, load_dir: Path | None = None) -> dict[str, Any]:
        """Load weights and optimizer state of ``tag``; return this rank's trainer state.

        ``load_dir`` holds the DeepSpeed files when they were converted (universal
        checkpoint for another world size); the trainer state always comes from
        ``root/tag``. On a world size other than the saver's, a rank with no file
        of its own gets rank 0's (the data position is global; RNG states are not
        carried over then).
        """
        path = self.path(tag)
        with weights_only_loading():
            load_path, _ = engine.load_checkpoint(
                str(load_dir or self.root), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load checkpoint {path}")
        if load_dir is not None:  # a universal load leaves each state's step a CPU tensor
            optimizer_steps_to_device(engine.optimizer)
        return self.rank_state(tag, dist)

    def rank_state(self, tag: str, dist: DistInfo) -> dict[str, Any]:
        """This rank's trainer state at ``tag`` (step, tokens, data position, RNG)."""
        path = self.path(tag)
        rank_file = path / f"trainer_state_rank{dist.rank}.json"
        same_world = self.marker(tag)["world_size"] == dist.world_size
        if not same_world or not rank_file.is_file():
            rank_file = path / "trainer_state_rank0.json"
        saved = json.loads(rank_file.read_text())
        if not same_world:
            saved.pop("rng", None)
        return saved


def manifest_names(path: Path) -> list[str]:
    """The files a manifest of ``path`` covers (relative names, sorted): all but the marker, the manifest itself
    and hidden files."""
    return [str(p.relative_to(path)) for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in (MARKER, MANIFEST) and not p.name.startswith(".")]


def hash_files(path: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each of ``names`` under ``path``: the manifest's entries."""
    return {name: {"bytes": (path / name).stat().st_size, "sha256": sha256_file(path / name)} for name in names}


_RANK_FILE_RE = re.compile(r"(?:zero_pp_rank_|trainer_state_rank)(\d+)")


def rank_share(names: list[str], rank: int, world_size: int) -> list[str]:
    """The files of ``names`` that ``rank`` hashes at a save: those it wrote (its ZeRO shards, its trainer
    state: still in its node's page cache), and every world_size-th one of the others (rank 0's model
    states, config.yaml): each file exactly once over the ranks."""
    share = []
    for i, name in enumerate(names):
        m = _RANK_FILE_RE.search(Path(name).name)
        if (int(m.group(1)) if m else i) % world_size == rank:
            share.append(name)
    return share


def merge_manifest(path: Path, parts: list[dict[str, dict[str, Any]]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The manifest's entries from the ranks' partial ones, checked against ``path`` as this rank sees it: every
    file listed once, with its current size; a file no rank hashed (or hashed at another size) is hashed here.
    Returns the entries and the names hashed here."""
    names = manifest_names(path)
    got: dict[str, dict[str, Any]] = {}
    for part in parts:
        got.update(part or {})
    redo = [n for n in names if n not in got or got[n]["bytes"] != (path / n).stat().st_size]
    files = {n: got[n] for n in names if n not in redo}
    files.update(hash_files(path, redo))
    return {n: files[n] for n in names}, redo


def optimizer_steps_to_device(optimizer) -> int:
    """Put each optimizer state's ``step`` where torch's AdamW keeps it: on the parameter's device for a fused or
    capturable group (fused AdamW on CUDA refuses a CPU step), on the CPU otherwise (read on the host). A
    universal load leaves every step a CPU tensor. ``optimizer``: DeepSpeed's (ZeRO wraps the torch one) or
    torch's. Returns how many were moved."""
    import torch

    base = getattr(optimizer, "optimizer", optimizer)
    moved = 0
    for group in base.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        for p in group["params"]:
            state = base.state.get(p)
            if not state or "step" not in state:
                continue
            step = state["step"]
            if not isinstance(step, torch.Tensor):
                step = torch.tensor(float(step), dtype=torch.float32)
            want = p.device if on_device else torch.device("cpu")
            if step.device != want or not step.is_floating_point():
                state["step"] = step.to(device=want, dtype=step.dtype if step.is_floating_point() else torch.float32)
                moved += 1
    return moved


def commit(path: Path, marker: dict[str, Any], pause=lambda phase: None,
           files: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Seal the files under ``path``: the manifest (size and sha256 of each; ``files`` when the ranks hashed them
    already), then the COMPLETE marker."""
    if files is None:
        files = hash_files(path, manifest_names(path))
    manifest_text = json.dumps({"files": files}, indent=1)
    atomic_write_text(path / MANIFEST, manifest_text)
    pause("manifest")
    marker = {**marker, "manifest_sha256": hashlib.sha256(manifest_text.encode()).hexdigest()}
    atomic_write_text(path / MARKER, json.dumps(marker, indent=1))
    pause("marker")
    return marker


class CheckpointSaver:
    """Writes a run's checkpoints: every rank's files, then the commit (manifest, marker, pointer), then pruning."""

    def __init__(self, root: Path, keep_last: int, dist: DistInfo, config_hash: str = "", config_yaml: str = ""):
        self.dir = CheckpointDir(root)
        self.root = self.dir.root
        self.keep_last = keep_last
        self.dist = dist
        self.config_hash = config_hash
        self.config_yaml = config_yaml

    # -- saving ----------------------------------------------------------------------------
    def save(self, engine, state, rank_state: dict[str, Any], permanent: bool = False) -> Path:
        """Save ``engine`` and this rank's ``rank_state``; commit once every rank is done."""
        tag = tag_for(state.step)
        path = self.root / tag
        rank = self.dist.rank
        if self.dist.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            (path / MARKER).unlink(missing_ok=True)  # re-saving a step: it is incomplete until committed
        barrier()
        faults.pause("engine_save", rank, self.root, state.step)
        from deepspeed.checkpoint.constants import UNIVERSAL_CHECKPOINT_INFO

        # The universal-checkpoint info lets ds_to_universal convert this checkpoint for another world size.
        client = {UNIVERSAL_CHECKPOINT_INFO: {"universal_checkpoint_version": 0.2}}
        engine.save_checkpoint(str(self.root), tag=tag, client_state=client, save_latest=False)
        full_state = {**rank_state, "state": state.to_dict(), "rank": rank, "world_size": self.dist.world_size}
        atomic_write_text(path / f"trainer_state_rank{rank}.json", json.dumps(full_state))
        if self.dist.is_main and self.config_yaml:
            atomic_write_text(path / "config.yaml", self.config_yaml)
        faults.pause("rank_state", rank, self.root, state.step)
        barrier()  # every rank's files are on disk
        # Every rank hashes its own share of the files at once (a partial manifest); rank 0 checks and merges them.
        part = hash_files(path, rank_share(manifest_names(path), rank, self.dist.world_size))
        parts = gather_to_main(part)
        if self.dist.is_main:
            files, redone = merge_manifest(path, parts)
            if redone:
                print(f"warning: {path}: rank 0 hashed {len(redone)} file(s) the ranks' partial manifests did not "
                      f"cover as it sees them: {', '.join(redone[:5])}", file=sys.stderr, flush=True)
            self._commit(path, state, permanent, files)
        barrier()
        return path

    def _commit(self, path: Path, state, permanent: bool, files: dict[str, dict[str, Any]] | None = None) -> None:
        rank = self.dist.rank
        marker = {
            "step": state.step,
            "tokens": state.tokens,
            "world_size": self.dist.world_size,
            "config_hash": self.config_hash,
            "version": __version__,
            "permanent": permanent,
        }
        commit(path, marker, lambda phase: faults.pause(phase, rank, self.root, state.step), files)
        atomic_write_text(self.root / POINTER, path.name + "\n")
        faults.pause("pointer", rank, self.root, state.step)
        self._prune(state.step)

    def _prune(self, step: int = 0) -> None:
        removable = [t for t in self.dir.complete_tags() if not self.dir.marker(t).get("permanent")]
        for tag in removable[: -self.keep_last]:
            (self.root / tag / MARKER).unlink(missing_ok=True)
            faults.pause("prune", self.dist.rank, self.root, step)
            shutil.rmtree(self.root / tag, ignore_errors=True)
        # Incomplete leftovers older than the newest complete checkpoint (a save killed midway).
        complete = self.dir.complete_tags()
        if complete:
            newest = step_of(complete[-1])
            for p in self.root.iterdir():
                if TAG_RE.match(p.name) and p.name not in complete and step_of(p.name) < newest:
                    shutil.rmtree(p, ignore_errors=True)
            # Conversions for another world size (pretrain.convert) of older steps: a resume starts from a newer one.
            universal = self.root / ".universal"
            if universal.is_dir():
                for p in universal.iterdir():
                    if TAG_RE.match(p.name) and step_of(p.name) < newest:
                        shutil.rmtree(p, ignore_errors=True)

