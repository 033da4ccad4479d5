"""Where a launch starts: fresh, resumed from the run's own newest sound checkpoint, or
branched from another run's checkpoint (e.g. a WSD cooldown from a stable-phase step).

Rank 0 decides and the other ranks follow. A checkpoint saved by another world
size is converted to DeepSpeed's universal format first (into this run's own
checkpoint directory: the source is never written to).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import MARKER, CheckpointDir, CheckpointError, step_of
from .distributed import DistInfo, barrier

# Model fields a resume may change; any other model change cannot load the saved weights.
MODEL_FIELDS_FREE = {"activation_checkpointing", "dropout"}


@dataclass
class StartPoint:
    root: Path  # checkpoint directory holding ``tag`` (this run's, or the parent's for a branch)
    tag: str
    marker: dict[str, Any]
    branch: bool  # from another run's checkpoint
    load_dir: Path | None = None  # DeepSpeed files converted for another world size
    universal: bool = False

    @property
    def path(self) -> Path:
        return self.root / self.tag

    @property
    def step(self) -> int:
        return step_of(self.tag)


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def locate_start(cfg) -> StartPoint | None:
    """Where a launch of ``cfg`` starts: this run's newest sound checkpoint; else ``checkpoint.branch_from``;
    else None (fresh). Reads only (no collective, nothing written); CheckpointError for a start that cannot be used."""
    own = CheckpointDir(cfg.checkpoint_dir, cfg.checkpoint.verify)
    tag = own.newest_sound() if cfg.checkpoint.resume else None
    if tag is not None:
        root, branch = own.root, False
    elif cfg.checkpoint.branch_from:
        parent, tag = CheckpointDir.open(Path(cfg.checkpoint.branch_from), cfg.checkpoint.verify)
        problems = parent.verify(tag)
        if problems:
            raise CheckpointError(f"cannot branch from {parent.root / tag}: {'; '.join(problems)}")
        root, branch = parent.root, True
    else:
        return None
    try:
        marker = json.loads((root / tag / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{root / tag / MARKER}: not a readable checkpoint marker ({e})") from None
    return StartPoint(Path(root), tag, marker, branch=branch)


def check_start(cfg) -> StartPoint | None:
    """The start checks of a launch, without the launch: where it starts and whether that start fits ``cfg``
    (``pretrain.py --dry-run``). Writes nothing; CheckpointError as the launch would raise it."""
    start = locate_start(cfg)
    if start is not None:
        check_compatible(start, cfg)
    return start


def find_start(cfg, dist: DistInfo) -> StartPoint | None:
    """:func:`locate_start` decided by rank 0, the same StartPoint (or CheckpointError) on every rank."""
    found: Any = None
    if dist.is_main:
        try:
            start = locate_start(cfg)
            found = None if start is None else ("own" if not start.branch else "branch", str(start.root), start.tag)
        except CheckpointError as e:
            found = ("error", str(e), "")
    found = _broadcast(found)
    if found is None:
        return None
    kind, root, tag = found
    if kind == "error":
        raise CheckpointError(root)
    marker = json.loads((Path(root) / tag / MARKER).read_text())
    return StartPoint(Path(root), tag, marker, branch=(kind == "branch"))


def _saved_config(path: Path) -> dict[str, Any] | None:
    """The run config saved with the checkpoint ``path`` (None when it has none); CheckpointError if unreadable."""
    saved_cfg_path = path / "config.yaml"
    if not saved_cfg_path.is_file():
        return None
    try:
        saved = yaml.safe_load(saved_cfg_path.read_text())
        saved["model"], saved["train"]["global_batch_size"]  # noqa: B018  (the keys compared below)
    except (OSError, ValueError, yaml.YAMLError, TypeError, KeyError) as e:
        raise CheckpointError(f"cannot start from {path}: its config.yaml is not a run config this "
                              f"version wrote ({type(e).__name__}: {e})") from None
    return saved


def model_differences(path: Path, cfg) -> list[str]:
    """How ``cfg``'s model differs from the one saved with the checkpoint ``path`` (``model.K: saved -> now``),
    leaving out the fields a start may change (dropout, activation checkpointing); [] when its weights fit."""
    saved = _saved_config(path)
    if saved is None:
        return []
    now = cfg.to_dict()
    changed = sorted(
        k for k in set(saved["model"]) | set(now["model"])
        if k not in MODEL_FIELDS_FREE and saved["model"].get(k) != now["model"].get(k)
    )
    return [f"model.{k}: {saved['model'].get(k)!r} -> {now['model'].get(k)!r}" for k in changed]


def check_compatible(start: StartPoint, cfg) -> None:
    """Refuse a start that cannot work, saying why."""
    saved = _saved_config(start.path)
    if saved is None:
        return
    now = cfg.to_dict()
    diffs = model_differences(start.path, cfg)
    if diffs:
        raise CheckpointError(f"cannot start from {start.path}: the model differs from the one saved ({', '.join(diffs)})")
    if saved["train"]["global_batch_size"] != now["train"]["global_batch_size"]:
        raise CheckpointError(
            f"cannot start from {start.path}: train.global_batch_size {saved['train']['global_batch_size']} -> "
            f"{now['train']['global_batch_size']} changes the data order from the resume point on "
            "(mosaicml-streaming's deterministic resume needs the same global batch)"
        )
    if start.step > cfg.train.max_steps:  # equal: nothing to train, said by the Trainer
        raise CheckpointError(f"cannot start from {start.path}: its step {start.step} is past train.max_steps = {cfg.train.max_steps}")


def weights_only(start: StartPoint | None, cfg) -> bool:
    """Whether ``start`` gives the run its weights (and counters) only, with a fresh optimizer state: a merged
    checkpoint (it has no optimizer state), or a branch with ``checkpoint.load_optimizer_state: false``."""
    return start is not None and ("merged" in start.marker or (start.branch and not cfg.checkpoint.load_optimizer_state))


def open_init_checkpoint(path: Path, cfg, verify: bool = True) -> StartPoint:
    """The checkpoint ``checkpoint.init_from`` names (one of ours: a step directory or a merged one), checked:
    complete, its files as its manifest says (sha256 unless ``verify`` is false), a model that fits ``cfg``.
    CheckpointError naming it otherwise. Reads only."""
    ckpts, tag = CheckpointDir.open(path, cfg.checkpoint.verify)
    if verify:
        problems = ckpts.verify(tag)
        if problems:
            raise CheckpointError(f"cannot initialize from {ckpts.root / tag}: {'; '.join(problems)}")
    diffs = model_differences(ckpts.root / tag, cfg)
    if diffs:
        raise CheckpointError(f"cannot initialize from {ckpts.root / tag}: the model differs from the one saved "
                              f"({', '.join(diffs)})")
    try:
        marker = json.loads((ckpts.root / tag / MARKER).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpts.root / tag / MARKER}: not a readable checkpoint marker ({e})") from None
    return StartPoint(ckpts.root, tag, marker, branch=True)


def find_init_checkpoint(cfg, dist: DistInfo) -> StartPoint:
    """:func:`open_init_checkpoint` on rank 0 (it hashes the files), the same StartPoint (or CheckpointError) on
    every rank."""
    found: Any = None
    if dist.is_main:
        try:
            start = open_init_checkpoint(Path(cfg.checkpoint.init_checkpoint), cfg)
            found = ("ok", str(start.root), start.tag)
        except CheckpointError as e:
            found = ("error", str(e), "")
    kind, root, tag = _broadcast(found)
    if kind == "error":
        raise CheckpointError(root)
    return open_init_checkpoint(Path(root) / tag, cfg, verify=False)


def write_init_lineage(start: StartPoint, cfg, out_dir: Path) -> dict[str, Any]:
    """Record a weights-only start (``checkpoint.init_from`` one of our checkpoints): the checkpoint, its step and
    tokens (the run itself starts at step 0 with a fresh optimizer and schedule), what the config changed."""
    from .checkpoint import atomic_write_text

    parent_cfg_path = start.path / "config.yaml"
    parent = yaml.safe_load(parent_cfg_path.read_text()) if parent_cfg_path.is_file() else {}
    a, b = _flatten(parent), _flatten(cfg.to_dict())
    lineage = {
        "init_from": str(start.path.resolve()),
        "step": start.step,  # the parent's step; this run counts from 0
        "tokens": start.marker.get("tokens"),
        "weights_only": True,
        "merged": start.marker.get("merged"),  # the merge's method, sources and weights, or null
        # not "parent_run_dir": this run's curve starts at its own step 0 and does not continue the parent's
        "init_run_dir": parent.get("run_dir") or str(start.root.parent),
        "parent_config_hash": start.marker.get("config_hash"),
        "parent_manifest_sha256": start.marker.get("manifest_sha256"),
        "parent_optimizer": (parent.get("optimizer") or {}).get("name"),
        "optimizer": cfg.optimizer.name,
        "config_diff": {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)},
    }
    atomic_write_text(out_dir / "lineage.json", json.dumps(lineage, indent=1))
    return lineage


def prepare_world_size(start: StartPoint, own_root: Path, dist: DistInfo, ds_config: dict, workers: int = 0,
                       poll_s: float = 2.0, weights_only: bool = False) -> StartPoint:
    """Use a checkpoint saved by another world size through DeepSpeed's universal format.

    A conversion made before (``python -m pretrain.convert``, or an earlier launch) is reused. Otherwise
    rank 0 converts it with ``workers`` parallel workers while the other ranks wait for its marker file,
    polling the filesystem: no collective is open during the conversion, whose length no collective
    timeout bounds (a ZeRO-3 optimizer state of tens of GB takes longer than the default 10 minutes).
    """
    from .convert import UNIVERSAL, convert, is_converted

    saved_world = start.marker["world_size"]
    # A merge holds no DeepSpeed files; weights alone are gathered from any world size's files (zero_to_fp32).
    if saved_world == dist.world_size or "merged" in start.marker or weights_only:
        return start
    out_root = own_root / UNIVERSAL
    out = out_root / start.tag
    # One quick collective before the wait: this launch's name for a failure, so that no rank takes a failure
    # file left by an earlier launch for its own.
    launch_id = _broadcast(secrets.token_hex(8) if dist.is_main else None)
    failed = out_root / f".failed-{start.tag}-{launch_id}"
    if dist.is_main:
        if is_converted(out, start.path):
            print(f"using the universal checkpoint {out} made before", flush=True)
        else:
            print(f"converting {start.path} ({saved_world} ranks) to a universal checkpoint for "
                  f"{dist.world_size} ranks", flush=True)
            for old in out_root.glob(f".failed-{start.tag}-*"):  # earlier launches' (their ranks are gone)
                old.unlink(missing_ok=True)
            try:
                convert(start.path, out_root, workers, log=lambda msg: print(msg, flush=True))
            except Exception as e:
                from .checkpoint import atomic_write_text

                atomic_write_text(failed, str(e))  # the other ranks stop polling and fail the same way
                raise
    else:
        while not is_converted(out, start.path):
            if failed.is_file():
                raise CheckpointError(failed.read_text())
            time.sleep(poll_s)
    barrier()  # every rank is here once the conversion is done: a short wait
    ds_config.setdefault("checkpoint", {})["load_universal"] = True
    return StartPoint(start.root, start.tag, start.marker, start.branch, load_dir=out_root, universal=True)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def write_lineage(start: StartPoint, cfg, out_dir: Path, applied: list[str] = (), data_state: str = "restored",
                  optimizer_state: str = "restored") -> dict[str, Any]:
    """Record where a branch came from: parent run, step, what its config changed, which of the
    checkpoint's optimizer settings the config replaced (``applied``), and whether the optimizer state
    was the checkpoint's (``restored``) or fresh (``fresh``: checkpoint.load_optimizer_state false, or a merge)."""
    from .checkpoint import atomic_write_text

    parent_cfg_path = start.path / "config.yaml"
    parent = yaml.safe_load(parent_cfg_path.read_text()) if parent_cfg_path.is_file() else {}
    a, b = _flatten(parent), _flatten(cfg.to_dict())
    diff = {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    lineage = {
        "parent_checkpoint": str(start.path.resolve()),
        "parent_run_dir": parent.get("run_dir") or str(start.root.parent),
        "parent_config_hash": start.marker.get("config_hash"),
        "step": start.step,
        "tokens": start.marker.get("tokens"),
        "config_diff": diff,
        "optimizer_applied_over_checkpoint": list(applied),
        "data_state": data_state,  # restored: the parent's data order continues; fresh: a new seeded order
        "optimizer_state": optimizer_state,  # restored: the parent's; fresh: a new optimizer (of any kind)
        "weights_only": optimizer_state == "fresh",
        "data_changed": {k: v for k, v in diff.items() if k.startswith("data.")},
    }
    atomic_write_text(out_dir / "lineage.json", json.dumps(lineage, indent=1))
    return lineage
