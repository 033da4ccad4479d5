"""One optimizer update: forward/backward over the micro-batches, then DeepSpeed's step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import split_batch
from ..model.loss import lm_loss


@dataclass
class StepOutput:
    loss: float  # mean cross-entropy over this rank's micro-batches (comparable to val_loss)
    z_loss: float  # mean weighted z-loss term (0 when off)
    grad_norm: float  # global norm before clipping, as DeepSpeed reports it
    skipped: bool = False  # DeepSpeed skipped the update (non-finite gradients)


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
    norm = float(norm) if norm is not None else float("nan")
    n = len(micro_batches)
    skipped = engine.skipped_steps > skipped_before
    return StepOutput(loss=(ce_sum / n).item(), z_loss=(z_sum / n).item(), grad_norm=norm, skipped=skipped)


@torch.no_grad()
def eval_loss(engine, batches, seq_len: int, device: str) -> tuple[float, int]:
    """(sum of token losses, number of tokens) over ``batches`` on this rank (``engine``: DeepSpeed's, or a module)."""
    module = getattr(engine, "module", engine)
    was_training = module.training
    module.eval()
    loss_sum, count = 0.0, 0
    for tokens in batches:
        inputs, targets = split_batch(tokens.to(device), seq_len)
        logits = engine(inputs)
        loss_sum += F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="sum"
        ).item()
        count += targets.numel()
    module.train(was_training)
    return loss_sum, count
