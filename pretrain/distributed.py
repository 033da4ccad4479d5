"""Process-group set-up for every launcher: ``deepspeed``, ``torchrun`` or plain ``python``.

The accelerator is picked automatically: CUDA (NCCL) when a GPU is visible,
otherwise CPU (gloo) with DeepSpeed's CPU accelerator.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: str  # "cuda:N" or "cpu"
    backend: str  # "nccl" or "gloo"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_from_env() -> tuple[int, int, int, int]:
    """(rank, world_size, local_rank, local_world_size) as the launcher set them.

    A plain ``python pretrain.py`` is a world of one; the variables are then
    filled in so that torch.distributed and mosaicml-streaming agree with it.
    DeepSpeed's launcher sets ``LOCAL_SIZE`` where torchrun sets
    ``LOCAL_WORLD_SIZE`` (which streaming reads), so the latter is derived.
    """
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        env.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"})
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    env.setdefault("LOCAL_RANK", "0")
    if "LOCAL_WORLD_SIZE" not in env:
        env["LOCAL_WORLD_SIZE"] = env.get("LOCAL_SIZE", env["WORLD_SIZE"])
    return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"])


def select_accelerator() -> str:
    """Tell DeepSpeed which accelerator to use before it is imported; returns it."""
    import torch

    accel = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("DS_ACCELERATOR", accel)
    return os.environ["DS_ACCELERATOR"]


def device_index(local_rank: int, device_count: int) -> int:
    """The GPU a rank uses among those it sees: a scheduler may show each rank only its own GPU(s)
    (CUDA_VISIBLE_DEVICES), so that local rank 3 sees one device, index 0."""
    if device_count < 1:
        raise RuntimeError("no CUDA device is visible to this rank (CUDA_VISIBLE_DEVICES?)")
    return local_rank % device_count


def init_distributed(threads: int = 0) -> DistInfo:
    """Initialise torch.distributed through DeepSpeed; set the device, and ``threads`` intra-op threads.

    ``threads`` 0: the cores divided among this node's ranks (``pretrain.hardware.plan_threads``).
    """
    import torch

    rank, world, local_rank, local_world = world_from_env()
    accel = select_accelerator()
    import deepspeed

    if not threads:
        from .hardware import detect, plan_threads

        threads = plan_threads(detect(), local_world).threads
    torch.set_num_threads(threads)  # share the cores among the ranks of this node instead of oversubscribing
    if accel == "cuda":
        count = torch.cuda.device_count()
        index = device_index(local_rank, count)
        if count > 1 and local_world > count and rank == 0:
            print(f"warning: {local_world} ranks on this node share {count} visible GPUs", flush=True)
        torch.cuda.set_device(index)
        device, backend = f"cuda:{index}", "nccl"
    else:
        device, backend = "cpu", "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)
    _make_host_group(backend)
    return DistInfo(rank, world, local_rank, local_world, device, backend)


# The group for the few host-side numbers the ranks agree on every update (stop and save flags): gloo, on CPU
# tensors. Over NCCL those would have to be device tensors, and reading the result back a device->host sync
# that waits for every kernel queued so far; a gloo all-reduce of two numbers waits only for the other ranks'
# hosts. None: the default group (already gloo).
_HOST_GROUP = None


def _make_host_group(backend: str) -> None:
    """Create the host group (a collective: every rank calls it, right after the default group exists)."""
    global _HOST_GROUP
    import torch.distributed as dist

    _HOST_GROUP = dist.new_group(backend="gloo") if backend != "gloo" and dist.get_world_size() > 1 else None


def host_all_reduce_sum(values: list[float]) -> list[float]:
    """Sum over ranks of a few host numbers (float64, CPU, gloo): no device sync on any backend."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, group=_HOST_GROUP)
    return t.tolist()


def gather_to_main(obj) -> list:
    """Every rank's ``obj`` (picklable) on rank 0, in rank order, over the host group; [] on the other ranks."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0, group=_HOST_GROUP)
    return out or []


def all_reduce_sum(values: list[float], device: str) -> list[float]:
    """Sum over ranks of a few scalars, in one collective (float64)."""
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def release_shared_memory(dist: DistInfo) -> None:
    """Remove DeepSpeed's CPU all-reduce buffers in /dev/shm (it never does; ~66 MB per rank).

    Called once every rank is past its last collective: unlinking is safe while
    the other ranks still have the buffer mapped.
    """
    if dist.device != "cpu" or dist.local_rank != 0:
        return
    import glob

    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_*"):
        try:
            os.unlink(path)
        except OSError:
            pass


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
