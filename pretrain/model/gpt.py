"""Decoder-only transformer (GPT / Llama family).

One small, dependency-free file in the spirit of nanoGPT's ``model.py``: the
modules in forward order. The typed config dataclass, :class:`GPTConfig`, lives
in :mod:`pretrain.model.config` (no torch there) and is re-exported here.

* Weight initialization lives in :mod:`pretrain.model.init` (``GPT.__init__``
  only calls into it); optimizer groups live in :mod:`pretrain.model.param_groups`.
* No DeepSpeed, no loss here: ``GPT.forward`` maps token ids to logits (the loss,
  with the optional z-loss, is :func:`pretrain.model.loss.lm_loss`).
* muP lives beside this file (:mod:`pretrain.model.mup`). Here it is only a config
  field (``GPTConfig.mup``) and three generic forward-pass knobs (embedding multiplier,
  logit multiplier, attention scale) that muP sets: see :meth:`GPTConfig.multipliers`.
* Precision: the model runs in plain fp32, or with every parameter cast to bf16
  (what DeepSpeed's bf16 mode does). It registers **no buffers**: RoPE tables
  and the ALiBi bias are built in fp32 on the fly (and cached in plain dicts,
  invisible to ``.to()``/DeepSpeed), so casting the module never degrades them.
  Norms and RoPE compute in fp32 and cast back to the activation dtype.

Shape legend: B batch, T sequence, D d_model, H query heads, K kv heads,
Dh head_dim, F ffn_dim, V vocab_size.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.model.config import GPTConfig, MuPConfig, check_buildable  # noqa: F401 (re-exported)
from pretrain.model.init import init_weights


# ---- normalization -------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm with a gain only; computed in fp32, returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim] -> [..., dim]
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm with a gain and no bias; computed in fp32, returned in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim] -> [..., dim]
        return F.layer_norm(x.float(), (x.shape[-1],), self.weight.float(), None, self.eps).to(x.dtype)


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    cls = RMSNorm if config.norm == "rmsnorm" else LayerNorm
    return cls(dim, config.norm_eps)


# ---- positions: RoPE and ALiBi (fp32, never registered as buffers) -----------------------


def rope_tables(seq_len: int, head_dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``(cos, sin)``, each [T, Dh], "rotate-half" layout (GPT-NeoX / HF Llama)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # [T, Dh/2]
    angles = torch.cat([angles, angles], dim=-1)  # [T, Dh]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, T, H, Dh] by position; math in fp32, result in ``x.dtype``."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # [T, 1, Dh] broadcasts over B and H
    return (xf * cos + rotated * sin).to(x.dtype)


def alibi_slopes(n_heads: int) -> list[float]:
    """Per-head ALiBi slopes (Press et al. 2022): geometric sequence starting at
    2^(-8/n) for power-of-2 n; otherwise the closest power of 2 plus every other
    slope of the 2x sequence (the paper's reference implementation)."""

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2(n_heads)
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_heads - closest]


def alibi_bias(seq_len: int, n_heads: int, device: torch.device) -> torch.Tensor:
    """fp32 additive attention bias [1, H, T, T]: -slope*(i-j) for j <= i, -inf above the diagonal."""
    slopes = torch.tensor(alibi_slopes(n_heads), device=device, dtype=torch.float32)
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    distance = pos[None, :] - pos[:, None]  # [T, T], (j - i) <= 0 on and below the diagonal
    bias = slopes[:, None, None] * distance  # [H, T, T]
    causal = torch.ones(seq_len, seq_len, device=device, dtype=torch.bool).triu(1)
    return bias.masked_fill(causal, float("-inf"))[None]


# ---- blocks --------------------------------------------------------------------------------


class Attention(nn.Module):
    """Causal self-attention via SDPA, with GQA, optional QK-norm, RoPE or ALiBi.

    Scores are ``scale * q.k`` with ``scale = config.multipliers()[2]``
    (1/sqrt(head_dim) by default, 1/head_dim under muP)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = config.n_heads, config.n_kv, config.head_dim
        self.scale = config.multipliers()[2]
        D, Dh = config.d_model, config.head_dim
        self.wq = nn.Linear(D, self.n_heads * Dh, bias=config.bias)
        self.wk = nn.Linear(D, self.n_kv * Dh, bias=config.bias)
        self.wv = nn.Linear(D, self.n_kv * Dh, bias=config.bias)
        self.wo = nn.Linear(self.n_heads * Dh, D, bias=config.bias)  # residual output projection
        self.q_norm = RMSNorm(Dh, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(Dh, config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, D]
        rope: Optional[tuple[torch.Tensor, torch.Tensor]],  # fp32 (cos, sin) [T, Dh], or None
        attn_bias: Optional[torch.Tensor],  # [1, H, T, T] additive causal bias in x.dtype, or None
    ) -> torch.Tensor:  # [B, T, D]
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # [B, T, H, Dh]
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim)  # [B, T, K, Dh]
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim)  # [B, T, K, Dh]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H|K, T, Dh]
        if self.n_kv != self.n_heads:  # GQA: query head h reads kv head h // (H/K)
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)  # [B, H, T, Dh]
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_bias,
            is_causal=attn_bias is None,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale,
        )  # [B, H, T, Dh]
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # [B, T, H*Dh]
        return self.resid_dropout(self.wo(y))


class MLP(nn.Module):
    """SwiGLU (w1 gate, w3 up, w2 down) or GELU (w1 up, w2 down); w2 is the residual projection."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        D, F_ = config.d_model, config.ffn_dim
        self.swiglu = config.mlp == "swiglu"
        self.w1 = nn.Linear(D, F_, bias=config.bias)
        self.w3 = nn.Linear(D, F_, bias=config.bias) if self.swiglu else None
        self.w2 = nn.Linear(F_, D, bias=config.bias)  # residual output projection
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, D] -> [B, T, D]
        if self.swiglu:
            h = F.silu(self.w1(x)) * self.w3(x)  # [B, T, F]
        else:
            h = F.gelu(self.w1(x))  # [B, T, F]
        return self.dropout(self.w2(h))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = make_norm(config, config.d_model)
        self.attn = Attention(config)
        self.mlp_norm = make_norm(config, config.d_model)
        self.mlp = MLP(config)

    def forward(self, x, rope, attn_bias):  # [B, T, D] -> [B, T, D]
        x = x + self.attn(self.attn_norm(x), rope, attn_bias)
        return x + self.mlp(self.mlp_norm(x))


class GPT(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, V] (no loss; the trainer computes it)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        check_buildable(config)
        self.config = config
        self.emb_mult, self.logit_mult, _ = config.multipliers()  # 1.0, 1.0 unless muP / set
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = make_norm(config, config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # Plain-dict caches (NOT buffers: DeepSpeed bf16 would cast buffers to bf16).
        self._rope_cache: dict = {}  # (T, device) -> fp32 (cos, sin)
        self._alibi_cache: dict = {}  # (T, device, dtype) -> [1, H, T, T]
        init_weights(self, config)

    def compile(self, *args, **kwargs) -> None:
        """``nn.Module.compile`` (in place), with the table caches looked up outside the graph: traced,
        the first call's insertion would invalidate the guards and force a second compilation."""
        self.rope = torch.compiler.disable(self.rope)  # instance attributes shadow the methods
        self.alibi = torch.compiler.disable(self.alibi)
        super().compile(*args, **kwargs)

    def rope(self, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 RoPE tables [T, Dh] for this model, cached per (seq_len, device)."""
        key = (seq_len, torch.device(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_tables(seq_len, self.config.head_dim, self.config.rope_base, device)
        return self._rope_cache[key]

    def alibi(self, seq_len: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Causal ALiBi bias [1, H, T, T], built in fp32 then cast to ``dtype`` (SDPA wants q's dtype)."""
        key = (seq_len, torch.device(device), dtype)
        if key not in self._alibi_cache:
            self._alibi_cache[key] = alibi_bias(seq_len, self.config.n_heads, device).to(dtype)
        return self._alibi_cache[key]

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # [B, T] int64 -> [B, T, V]
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        x = self.tok_emb(idx)  # [B, T, D], parameter dtype
        if self.emb_mult != 1.0:
            x = x * self.emb_mult
        x = self.emb_dropout(x)
        rope = self.rope(T, idx.device) if self.config.pos == "rope" else None
        attn_bias = self.alibi(T, idx.device, x.dtype) if self.config.pos == "alibi" else None
        use_ckpt = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_ckpt:
                x = checkpoint(block, x, rope, attn_bias, use_reentrant=False)
            else:
                x = block(x, rope, attn_bias)
        logits = self.lm_head(self.norm(x))  # [B, T, V]
        if self.logit_mult != 1.0:
            logits = logits * self.logit_mult
        return logits
