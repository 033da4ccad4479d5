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
* Hot path (issue #24): RMSNorm is ``F.rms_norm`` (one fused kernel; fp32 accumulation),
  RoPE is ``x*cos + roll(x)*sin`` with a signed sin table (one fused kernel under compile),
  GQA goes through SDPA's ``enable_gqa`` (no ``repeat_interleave`` copies), ALiBi goes through
  FlexAttention on CUDA (a ``score_mod`` and a causal block mask: no dense [T, T] bias, causal
  blocks skipped) and falls back to the dense bias elsewhere (FlexAttention has no CPU backward);
  :meth:`GPT.compile` compiles each block separately (torchtitan's ``apply_compile``). No SDPA
  backend is pinned here: PyTorch picks cuDNN / flash / memory-efficient / math by itself.

Shape legend: B batch, T sequence, D d_model, H query heads, K kv heads,
Dh head_dim, F ffn_dim, V vocab_size.
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pretrain.model.config import GPTConfig, MuPConfig, check_buildable  # noqa: F401 (re-exported)
from pretrain.model.init import init_weights

# ---- normalization -------------------------------------------------------------------


class RMSNorm(nn.Module):
    """RMSNorm with a gain only; computed in fp32, returned in the input dtype.

    ``F.rms_norm``: one fused kernel that accumulates in fp32 and rounds once to the input dtype,
    the same math as ``(x.float() * rsqrt(mean(x.float()^2) + eps) * w.float()).to(x.dtype)``
    (bitwise on CPU, fp32 and bf16: tests/test_kernels.py). When the gain's dtype differs from the
    input's (fp32 gains under autocast) both are upcast explicitly, as the fused kernel wants one dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim] -> [..., dim]
        if x.dtype == self.weight.dtype:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


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
    """fp32 ``(cos, signed_sin)``, each [T, Dh], for the "rotate-half" layout (GPT-NeoX / HF Llama):
    dimension ``i`` pairs with ``i + Dh/2``. ``cos = [cos, cos]`` and ``signed_sin = [-sin, sin]``
    over the two halves, so that :func:`apply_rope` needs no negation and no ``cat``."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    pos = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(pos, inv_freq)  # [T, Dh/2]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, T, H, Dh] by position; math in fp32, result in ``x.dtype``.

    ``x * cos + roll(x, Dh/2) * signed_sin``: the first half gets ``x1*cos - x2*sin``, the second
    ``x2*cos + x1*sin``, the same products and sums as the rotate-half ``cat([-x2, x1])`` form
    (bitwise in fp32), in 4 eager kernels (roll, mul, mul, add) and one fused kernel under compile."""
    xf = x.float()
    rotated = xf.roll(x.shape[-1] // 2, dims=-1)  # [x2, x1]
    return (xf * cos[:, None, :] + rotated * signed_sin[:, None, :]).to(x.dtype)  # tables broadcast over B, H


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


# ALiBi through FlexAttention: a score_mod adds -slope*(i-j) to each score (in fp32, inside the kernel),
# a causal block mask skips the blocks above the diagonal; nothing [T, T] is materialized.
try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError:  # pragma: no cover - older torch: the dense bias only
    BlockMask = create_block_mask = flex_attention = None

_compiled_flex = None


def flex_available(device: torch.device) -> bool:
    """Whether ALiBi goes through FlexAttention on ``device`` when ``alibi_impl="auto"``: CUDA only
    (FlexAttention's CPU kernels have no backward, and its eager fallback computes the full T^2)."""
    return flex_attention is not None and torch.device(device).type == "cuda"


def flex_alibi_attention(q, k, v, slopes: torch.Tensor, block_mask, scale: float) -> torch.Tensor:
    """Causal ALiBi attention of q [B, H, T, Dh] over k, v [B, K, T, Dh] (GQA when K < H) with
    FlexAttention; ``slopes`` fp32 [H]. Eager callers get a ``torch.compile``d flex_attention (eager
    FlexAttention is a slow reference); inside a compiled block dynamo traces it either way."""
    global _compiled_flex

    def alibi_mod(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)  # -slope * distance; j <= i under the block mask

    fn = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        fn = _compiled_flex
    return fn(q, k, v, score_mod=alibi_mod, block_mask=block_mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


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
        rope: tuple[torch.Tensor, torch.Tensor] | None,  # fp32 (cos, signed_sin) [T, Dh], or None
        alibi,  # None, a dense [1, H, T, T] additive causal bias in x.dtype, or a FlexAlibi
    ) -> torch.Tensor:  # [B, T, D]
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # [B, T, H, Dh]
        k = self.wk(x).view(B, T, self.n_kv, self.head_dim)  # [B, T, K, Dh]
        v = self.wv(x).view(B, T, self.n_kv, self.head_dim)  # [B, T, K, Dh]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H|K, T, Dh]; GQA: query head h reads kv head h // (H/K)
        if isinstance(alibi, FlexAlibi):
            y = flex_alibi_attention(q, k, v, alibi.slopes, alibi.block_mask, self.scale)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=alibi,
                is_causal=alibi is None,
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.scale,
                enable_gqa=self.n_kv != self.n_heads,
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

    def forward(self, x, rope, alibi):  # [B, T, D] -> [B, T, D]
        x = x + self.attn(self.attn_norm(x), rope, alibi)
        return x + self.mlp(self.mlp_norm(x))


class FlexAlibi(NamedTuple):
    """What the blocks get for ALiBi on the FlexAttention path: fp32 slopes [H] and the causal block mask."""

    slopes: torch.Tensor
    block_mask: "BlockMask"


class GPT(nn.Module):
    """Token ids [B, T] -> next-token logits [B, T, V] (no loss; the trainer computes it).

    ``alibi_impl`` (an instance attribute, not a config field: it changes no result beyond
    rounding): ``"auto"`` uses FlexAttention where :func:`flex_available` (CUDA) unless attention
    dropout is active in training (FlexAttention has none), else the dense bias; ``"flex"`` /
    ``"dense"`` force one (tests compare them)."""

    alibi_impl: str = "auto"

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
        self._rope_cache: dict = {}  # (T, device) -> fp32 (cos, signed_sin)
        self._alibi_cache: dict = {}  # (T, device, dtype) -> [1, H, T, T]
        self._flex_cache: dict = {}  # (T, device) -> FlexAlibi
        init_weights(self, config)

    def compile(self, *args, **kwargs) -> None:
        """Compile each block separately, in place (torchtitan's ``apply_compile``): ``Block.compile``
        with ``fullgraph=True`` unless given. Identical blocks share one compiled graph (compile time
        does not grow with depth), activation checkpointing wraps the compiled blocks, the state dict
        keeps its names, and the embedding, table caches, final norm, lm_head and loss stay eager.
        ``args``/``kwargs`` go to ``torch.compile`` (``backend=``, ``mode=``, ...)."""
        kwargs.setdefault("fullgraph", True)
        for block in self.blocks:
            block.compile(*args, **kwargs)

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

    def flex_alibi(self, seq_len: int, device: torch.device) -> FlexAlibi:
        """fp32 ALiBi slopes [H] and the causal block mask for FlexAttention, cached per (seq_len, device)."""
        key = (seq_len, torch.device(device))
        if key not in self._flex_cache:
            slopes = torch.tensor(alibi_slopes(self.config.n_heads), device=device, dtype=torch.float32)
            mask = create_block_mask(_causal, None, None, seq_len, seq_len, device=device)
            self._flex_cache[key] = FlexAlibi(slopes, mask)
        return self._flex_cache[key]

    def use_flex(self, device: torch.device) -> bool:
        """Whether this forward takes ALiBi through FlexAttention (see ``alibi_impl``)."""
        if self.alibi_impl not in ("auto", "flex", "dense"):
            raise ValueError(f"GPT.alibi_impl: expected 'auto', 'flex' or 'dense', got {self.alibi_impl!r}")
        if self.alibi_impl == "flex":
            if flex_attention is None:
                raise RuntimeError(f"GPT.alibi_impl='flex': this torch ({torch.__version__}) has no FlexAttention")
            if self.training and self.config.dropout > 0:
                raise ValueError(f"GPT.alibi_impl='flex': FlexAttention has no attention dropout "
                                 f"(config.dropout={self.config.dropout}); use 'auto' or 'dense'")
            return True
        return (self.alibi_impl == "auto" and flex_available(device)
                and not (self.training and self.config.dropout > 0))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # [B, T] int64 -> [B, T, V]
        B, T = idx.shape
        if T > self.config.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds max_seq_len={self.config.max_seq_len}")
        x = self.tok_emb(idx)  # [B, T, D], parameter dtype
        if self.emb_mult != 1.0:
            x = x * self.emb_mult
        x = self.emb_dropout(x)
        rope = self.rope(T, idx.device) if self.config.pos == "rope" else None
        alibi = None
        if self.config.pos == "alibi":
            alibi = self.flex_alibi(T, idx.device) if self.use_flex(idx.device) else self.alibi(T, idx.device, x.dtype)
        use_ckpt = self.config.activation_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            if use_ckpt:
                x = checkpoint(block, x, rope, alibi, use_reentrant=False)
            else:
                x = block(x, rope, alibi)
        logits = self.lm_head(self.norm(x))  # [B, T, V]
        if self.logit_mult != 1.0:
            logits = logits * self.logit_mult
        return logits
