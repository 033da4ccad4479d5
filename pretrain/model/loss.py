"""The training loss: next-token cross-entropy plus the optional z-loss.

z-loss (Chowdhery et al. 2022, PaLM, section 5; Wortsman et al. 2023) penalizes the
log of the softmax normalizer, ``z = logsumexp(logits)``, to keep the output
logits from drifting: ``z_loss * mean(z^2)``. PaLM uses a weight of 1e-4.
The weight is ``GPTConfig.z_loss`` (0 disables it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets equal to this are left out of both terms (F.cross_entropy's default)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token loss over the (non-ignored) target tokens, computed in fp32.

    Args:
        logits: ``[B, T, V]`` (any float dtype; upcast to fp32 here).
        targets: ``[B, T]`` int64 token ids; ``-100`` marks positions to ignore.
        z_loss: weight of the z-loss term; 0 skips it.

    Returns:
        ``(loss, parts)`` where ``loss = ce + z_loss * mean(logsumexp(logits)^2)`` is the
        scalar to backpropagate and ``parts = {"ce": ..., "z_loss": ...}`` holds the two
        terms, detached, for logging (``parts["z_loss"]`` is the weighted term, 0 when off).
    """
    logits = logits.float().reshape(-1, logits.size(-1))  # [N, V]
    targets = targets.reshape(-1)  # [N]
    ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    if z_loss == 0.0:
        return ce, {"ce": ce.detach(), "z_loss": torch.zeros_like(ce).detach()}
    keep = targets != IGNORE_INDEX
    z = torch.logsumexp(logits[keep], dim=-1)  # [N_kept]
    z_term = z_loss * z.pow(2).mean()
    loss = ce + z_term
    return loss, {"ce": ce.detach(), "z_loss": z_term.detach()}
