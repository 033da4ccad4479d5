"""The training loss: next-token cross-entropy plus the optional z-loss.

z-loss (Chowdhery et al. 2022, PaLM, section 5; Wortsman et al. 2023) penalizes the
log of the softmax normalizer, ``z = logsumexp(logits)``, to keep the output
logits from drifting: ``z_loss * mean(z^2)``. PaLM uses a weight of 1e-4.
The weight is ``GPTConfig.z_loss`` (0 disables it).

Hot path (issue #24): the loss never makes a full fp32 copy of the logits and never
synchronizes with the host.

* fp32 logits: ``F.cross_entropy`` on them as they are (nothing to upcast), and the z-loss
  over the kept positions with a ``torch.where`` mask, not boolean indexing (which needs the
  number of kept rows on the host).
* bf16 / fp16 logits: :class:`_ChunkedLMLoss` computes ``logsumexp`` in fp32 over row chunks of
  at most ``CHUNK_ELEMENTS`` elements, keeps only the low-precision logits and the fp32
  ``logsumexp`` per row for backward, and there recomputes the softmax chunk by chunk, writing
  the gradient in the logits' dtype. Same math as upcasting the whole ``[N, V]`` tensor
  (fp32 arithmetic on the same bf16 values), different rounding order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # targets equal to this are left out of both terms (F.cross_entropy's default)
CHUNK_ELEMENTS = 1 << 26  # low-precision logits: fp32 temporaries of at most this many elements (256 MiB)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0,
            chunk_rows: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean next-token loss over the (non-ignored) target tokens, computed in fp32.

    Args:
        logits: ``[B, T, V]`` (any float dtype; fp32 arithmetic either way, see the module doc).
        targets: ``[B, T]`` int64 token ids; ``-100`` marks positions to ignore.
        z_loss: weight of the z-loss term; 0 skips it.
        chunk_rows: rows per fp32 chunk for low-precision logits; None = ``CHUNK_ELEMENTS // V``.

    Returns:
        ``(loss, parts)`` where ``loss = ce + z_loss * mean(logsumexp(logits)^2)`` is the
        scalar to backpropagate and ``parts = {"ce": ..., "z_loss": ...}`` holds the two
        terms, detached, for logging (``parts["z_loss"]`` is the weighted term, 0 when off).
    """
    logits = logits.reshape(-1, logits.size(-1))  # [N, V]
    targets = targets.reshape(-1)  # [N]
    if logits.dtype in (torch.float32, torch.float64):
        ce = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        if z_loss == 0.0:
            return ce, {"ce": ce.detach(), "z_loss": torch.zeros_like(ce).detach()}
        keep = targets != IGNORE_INDEX
        z = torch.logsumexp(logits, dim=-1)  # [N]
        z_term = z_loss * (torch.where(keep, z.square(), 0.0).sum() / keep.sum())  # = z_loss * mean over kept
    else:
        if chunk_rows is None:
            chunk_rows = max(1, CHUNK_ELEMENTS // logits.size(-1))
        if chunk_rows < 1:
            raise ValueError(f"lm_loss: chunk_rows must be >= 1, got {chunk_rows}")
        ce, z_term = _ChunkedLMLoss.apply(logits, targets, float(z_loss), int(chunk_rows))
    return ce + z_term, {"ce": ce.detach(), "z_loss": z_term.detach()}


class _ChunkedLMLoss(torch.autograd.Function):
    """``(ce, z_term)`` of low-precision logits ``[N, V]`` with fp32 arithmetic, chunked over rows.

    Forward: per chunk ``lse = logsumexp(chunk.float())``; ``ce = sum_kept(lse - x_target) / n_kept``,
    ``z_term = z_loss * sum_kept(lse^2) / n_kept``. Backward, per chunk and row ``i`` (kept):
    ``d/dx_ij = (softmax_ij * (g_ce + 2 z_loss lse_i g_z) - [j = target_i] g_ce) / n_kept``; ignored rows 0.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, z_loss: float, chunk_rows: int):
        N = logits.size(0)
        keep = targets != IGNORE_INDEX
        safe = torch.where(keep, targets, 0)  # ignored rows gather column 0, then drop out
        lse = torch.empty(N, dtype=torch.float32, device=logits.device)
        for s in range(0, N, chunk_rows):
            lse[s:s + chunk_rows] = torch.logsumexp(logits[s:s + chunk_rows].float(), dim=-1)
        target_logit = logits.gather(1, safe[:, None]).squeeze(1).float()
        n_kept = keep.sum()
        ce = torch.where(keep, lse - target_logit, 0.0).sum() / n_kept
        if z_loss != 0.0:
            z_term = z_loss * (torch.where(keep, lse.square(), 0.0).sum() / n_kept)
        else:
            z_term = torch.zeros_like(ce)
        ctx.save_for_backward(logits, safe, keep, lse, n_kept)
        ctx.z_loss, ctx.chunk_rows = z_loss, chunk_rows
        return ce, z_term

    @staticmethod
    def backward(ctx, g_ce: torch.Tensor, g_z: torch.Tensor):
        logits, safe, keep, lse, n_kept = ctx.saved_tensors
        weight = keep.float() / n_kept  # [N]
        soft_coef = weight * (g_ce + (2.0 * ctx.z_loss) * g_z * lse)  # [N]
        target_coef = -(weight * g_ce)  # [N]
        grad = torch.empty_like(logits)
        c = ctx.chunk_rows
        for s in range(0, logits.size(0), c):
            p = torch.exp(logits[s:s + c].float() - lse[s:s + c, None])  # softmax, fp32
            p.mul_(soft_coef[s:s + c, None])
            p.scatter_add_(1, safe[s:s + c, None], target_coef[s:s + c, None])
            grad[s:s + c] = p
        return grad, None, None, None
