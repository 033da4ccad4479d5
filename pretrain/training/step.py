"""One optimizer update: forward/backward over the micro-batches, then DeepSpeed's step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data import split_batch
from ..model.loss import lm_loss


@dataclass
class StepOutput:
    """One update's results. The losses and the norm stay where they were computed (0-d tensors on the
    device): reading them is a device->host sync, which the loop makes once per logging interval
    (:class:`StepBuffer`), not once per update."""

    loss: Any  # 0-d tensor (or a float): mean cross-entropy over this rank's micro-batches (comparable to val_loss)
    z_loss: Any  # 0-d tensor (or a float): mean weighted z-loss term (0 when off)
    grad_norm: Any  # global norm before clipping as DeepSpeed reports it: a 0-d tensor, a float, or None
    skipped: bool = False  # DeepSpeed skipped the update (non-finite gradients; a host value DeepSpeed keeps)


def train_step(
    engine, micro_batches: list[torch.Tensor], seq_len: int, device: str, z_loss: float = 0.0, poison: bool = False
) -> StepOutput:
    """Accumulate gradients over ``micro_batches`` and apply one update.

    DeepSpeed scales each micro-batch loss by 1/grad_accum and steps the
    optimizer at the accumulation boundary (the last micro-batch); it skips the
    update when the gradients are not finite. ``poison`` (tests only) makes the
    loss NaN.
    """
    skipped_before = engine.skipped_steps
    ce_sum = torch.zeros((), dtype=torch.float32, device=device)
    z_sum = torch.zeros((), dtype=torch.float32, device=device)
    for tokens in micro_batches:
        inputs, targets = split_batch(tokens.to(device, non_blocking=True), seq_len)
        loss, parts = lm_loss(engine(inputs), targets, z_loss)
        if poison:
            loss = loss * float("nan")
            parts = {k: v * float("nan") for k, v in parts.items()}
        engine.backward(loss)
        engine.step()
        ce_sum += parts["ce"]
        z_sum += parts["z_loss"]
    norm = engine.get_global_grad_norm()
    if isinstance(norm, torch.Tensor):  # kept on the device; DeepSpeed replaces (not updates) it next step
        norm = norm.detach()
    n = len(micro_batches)
    skipped = engine.skipped_steps > skipped_before
    return StepOutput(loss=ce_sum / n, z_loss=z_sum / n, grad_norm=norm, skipped=skipped)


@dataclass
class StepBuffer:
    """The updates since the last host sync: their loss terms and norms as device tensors, read together.

    :meth:`read` makes one all-reduce (the loss terms summed over ranks, the global norm taken from
    rank 0: every rank has the same) and one device->host copy for all of them, in float64: the same
    numbers, bit for bit, as reading each float32 value with ``.item()`` and all-reducing it in float64.
    """

    device: str
    rank: int = 0
    world_size: int = 1
    rows: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, out: StepOutput) -> None:
        norm = out.grad_norm
        if norm is None:
            norm = float("nan")
        # Only rank 0 contributes the norm to the sum (x + 0 + ... + 0 == x exactly, NaN and inf included).
        if self.rank != 0:
            norm = 0.0
        self.rows.append([_as_f64(v, self.device) for v in (out.loss, out.z_loss, norm)])

    def read(self) -> list[tuple[float, float, float]]:
        """(loss, z_loss, grad_norm) of each buffered update, in order, averaged over ranks; empties the buffer."""
        import torch.distributed as dist

        if not self.rows:
            return []
        t = torch.stack([torch.stack(r) for r in self.rows])
        self.rows = []
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t)
        return [(loss / self.world_size, z / self.world_size, norm) for loss, z, norm in t.tolist()]


def _as_f64(value, device: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().reshape(()).to(device=device, dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64, device=device)


@torch.no_grad()
def eval_loss(engine, batches, seq_len: int, device: str) -> tuple[float, int]:
    """(sum of token losses, number of tokens) over ``batches`` on this rank (``engine``: DeepSpeed's, or a module)."""
    module = getattr(engine, "module", engine)
    was_training = module.training
    module.eval()
    # Summed on the device in float64 (each float32 batch sum widened exactly, as .item() would): one sync at the end.
    loss_sum, count = torch.zeros((), dtype=torch.float64, device=device), 0
    for tokens in batches:
        inputs, targets = split_batch(tokens.to(device), seq_len)
        logits = engine(inputs)
        loss_sum += F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
        ).double()
        count += targets.numel()
    module.train(was_training)
    return loss_sum.item(), count
