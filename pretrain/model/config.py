"""The model's configuration: :class:`GPTConfig` and :class:`MuPConfig`.

A leaf module: it imports no torch (and nothing from :mod:`pretrain.model.gpt`,
``init`` or ``mup``) at import time, so the run config, the launch scripts and
the presets can read, validate and size a model without loading torch.
:meth:`GPTConfig.build` imports :mod:`pretrain.model.gpt` when called.

muP itself (the parameterization, its conventions and its references) is
described in :mod:`pretrain.model.mup`; here are only its hyper-parameters.
"""

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Literal, get_args, get_type_hints

if TYPE_CHECKING:
    import torch

    from pretrain.model.gpt import GPT
    from pretrain.model.init import ParamKind

# Table 4 of the D2Z paper (tuned on the 39M proxy of width 256); the base LR
# (1.6e-2) is the optimizer's `lr`, not a model field.
D2Z_SIGMA_BASE = 8.67e-2
D2Z_ALPHA_INPUT = 9.17
D2Z_ALPHA_OUTPUT = 1.095
D2Z_BASE_WIDTH = 256
D2Z_BASE_LR = 1.6e-2


@dataclass(frozen=True)
class MuPConfig:
    """muP hyper-parameters; ``GPTConfig.mup = MuPConfig()`` turns muP on.

    In a run YAML: ``model: {mup: {}}`` (Table 4 defaults) or
    ``model: {mup: {base_width: 256, sigma_base: 0.0867, ...}}``; ``mup: null`` is off.
    """

    base_width: int = D2Z_BASE_WIDTH  # d_model of the proxy the hyper-parameters were tuned on
    sigma_base: float = D2Z_SIGMA_BASE  # init std of embeddings (and, / sqrt(m), of hidden matrices)
    alpha_input: float = D2Z_ALPHA_INPUT  # embedding output multiplier
    alpha_output: float = D2Z_ALPHA_OUTPUT  # output logit multiplier (divided by m)

    def problems(self) -> list[tuple[str, str]]:
        """``(field, expected)`` pairs; GPTConfig.validate reports them as ``mup.<field>``."""
        return [(name, "> 0") for name in ("base_width", "sigma_base", "alpha_input", "alpha_output")
                if not (_finite(getattr(self, name)) and getattr(self, name) > 0)]

    # ---- derived values -----------------------------------------------------------

    def width_mult(self, config: "GPTConfig") -> float:
        """``m = d_model / base_width``."""
        return config.d_model / self.base_width

    def multipliers(self, config: "GPTConfig") -> tuple[float, float, float]:
        """``(emb_mult, logit_mult, attn_scale)`` for the forward pass."""
        return self.alpha_input, self.alpha_output / self.width_mult(config), 1.0 / config.head_dim

    def init_std(self, kind: "ParamKind", name: str, param: "torch.Tensor", config: "GPTConfig") -> float:
        """Init std of a matrix parameter (an ``init.StdFn``); see the module table."""
        m = self.width_mult(config)
        if kind in ("embedding", "lm_head"):
            return self.sigma_base
        if kind == "hidden":
            return self.sigma_base / math.sqrt(m)
        if kind == "residual_proj":
            return self.sigma_base / math.sqrt(2 * config.n_layers * m)
        raise ValueError(f"muP has no init std for {kind!r} parameter {name}")

    def lr_mult(self, kind: "ParamKind", config: "GPTConfig") -> float:
        """LR multiplier of a parameter kind: ``1/m`` for hidden matrices, 1 otherwise."""
        return 1.0 / self.width_mult(config) if kind in ("hidden", "residual_proj") else 1.0


@dataclass
class GPTConfig:
    """Architecture hyper-parameters. Defaults describe a small model.

    Only simple typed fields and one nested dataclass (``mup``): the run-config
    loader validates YAML values against these type hints.
    """

    vocab_size: int | None = None  # None = taken from the tokenizer (resolved before build)
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # GQA; None = n_heads (plain multi-head attention)
    d_ff: int | None = None  # MLP hidden size; None = see `ffn_dim`
    max_seq_len: int = 256
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    pos: Literal["rope", "alibi"] = "rope"
    rope_base: float = 10000.0
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    qk_norm: bool = False  # RMSNorm over head_dim on q and k, before RoPE
    tie_embeddings: bool = False  # lm_head.weight is tok_emb.weight
    bias: bool = False  # biases in the Linear layers (norms never have a bias)
    dropout: float = 0.0  # embedding, attention-probability and residual dropout
    activation_checkpointing: bool = False  # recompute each block in backward (training only)
    init_std: float = 0.02  # standard parameterization only (muP: mup.sigma_base)
    # Forward-pass multipliers. muP sets them (see `multipliers`); leave them at their
    # defaults when `mup` is set.
    emb_mult: float = 1.0  # embedding output multiplier (muP: alpha_input)
    logit_mult: float = 1.0  # output logit multiplier (muP: alpha_output / m)
    attn_scale: float | None = None  # attention score scale; None = 1/sqrt(head_dim) (muP: 1/head_dim)
    z_loss: float = 0.0  # weight of PaLM's z-loss, z_loss * mean(logsumexp(logits)^2); pretrain.model.loss
    mup: MuPConfig | None = None  # None: standard parameterization; see pretrain.model.mup

    # ---- derived sizes -------------------------------------------------------------

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_kv(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def ffn_dim(self) -> int:
        """MLP hidden size: `d_ff` if set; else 4*d_model (gelu) or
        int(8/3*d_model) rounded up to a multiple of 64 (swiglu, Llama convention,
        keeps the parameter count ~ that of a 4x gelu MLP)."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        hidden = int(8 * self.d_model / 3)
        return 64 * math.ceil(hidden / 64)

    # ---- validation ----------------------------------------------------------------

    def validate(self) -> list[tuple[str, str]]:
        """Return ``[(field_name, what_was_expected), ...]``; empty when valid.

        ``vocab_size=None`` is valid here (it is resolved from the tokenizer later);
        :meth:`build` refuses it.
        """
        problems: list[tuple[str, str]] = []

        def positive(name: str) -> bool:
            value = getattr(self, name)
            if value is not None and not (_finite(value) and value > 0):  # nan and inf fail too
                problems.append((name, "> 0" if _finite(value) else "> 0 and finite"))
                return False
            return True

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
                     "max_seq_len", "norm_eps", "rope_base", "init_std", "emb_mult", "logit_mult", "attn_scale"):
            positive(name)
        if not (_finite(self.z_loss) and self.z_loss >= 0.0):
            problems.append(("z_loss", ">= 0 and finite"))
        if self.mup is not None:
            problems += [(f"mup.{name}", expected) for name, expected in self.mup.problems()]
            for name, default, rule in (("emb_mult", 1.0, "mup.alpha_input"),
                                        ("logit_mult", 1.0, "mup.alpha_output / width multiplier"),
                                        ("attn_scale", None, "1 / head_dim")):
                if getattr(self, name) != default:
                    problems.append((name, f"{default} when mup is set (muP sets it from {rule})"))

        hints = get_type_hints(type(self))
        for f in fields(self):
            choices = get_args(hints[f.name]) if getattr(hints[f.name], "__origin__", None) is Literal else ()
            if choices and getattr(self, f.name) not in choices:
                problems.append((f.name, "one of " + ", ".join(repr(c) for c in choices)))

        if self.d_model > 0 and self.n_heads > 0:
            if self.d_model % self.n_heads:
                problems.append(("n_heads", f"a divisor of d_model={self.d_model}"))
            elif self.pos == "rope" and self.head_dim % 2:
                problems.append(("n_heads", f"such that head_dim = d_model/n_heads is even for "
                                            f"pos='rope' (d_model={self.d_model} gives head_dim="
                                            f"{self.head_dim})"))
            if self.n_kv_heads is not None and self.n_kv_heads > 0 and self.n_heads % self.n_kv_heads:
                problems.append(("n_kv_heads", f"a divisor of n_heads={self.n_heads}"))
        if not (_finite(self.dropout) and 0.0 <= self.dropout < 1.0):
            problems.append(("dropout", "in [0, 1)"))
        return problems

    def multipliers(self) -> tuple[float, float, float]:
        """``(emb_mult, logit_mult, attn_scale)`` in effect: muP's when ``mup`` is set
        (:meth:`MuPConfig.multipliers`), else the fields, with
        ``attn_scale=None`` meaning ``1/sqrt(head_dim)``."""
        if self.mup is not None:
            return self.mup.multipliers(self)
        attn_scale = self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)
        return self.emb_mult, self.logit_mult, attn_scale

    def build(self) -> "GPT":
        """Validate, construct and initialize (call ``torch.manual_seed`` first for determinism)."""
        from pretrain.model.gpt import GPT  # lazy: this module imports no torch

        return GPT(self)

    # ---- analytic sizes ------------------------------------------------------------

    def num_params(self, include_embeddings: bool = True) -> int:
        """Exact trainable-parameter count of ``self.build()``, without allocating.

        Tied weights count once. ``include_embeddings=False`` leaves out the token
        embedding and the (untied) lm_head matrix.
        """
        D, Dh, H, K, F_, V = self.d_model, self.head_dim, self.n_heads, self.n_kv, self.ffn_dim, self.vocab_size
        attn = D * H * Dh + 2 * D * K * Dh + H * Dh * D  # wq, wk, wv, wo
        if self.bias:
            attn += H * Dh + 2 * K * Dh + D
        if self.qk_norm:
            attn += 2 * Dh
        n_mats = 3 if self.mlp == "swiglu" else 2
        mlp = n_mats * D * F_
        if self.bias:
            mlp += (n_mats - 1) * F_ + D
        per_layer = attn + mlp + 2 * D  # + the two pre-norm weights
        total = self.n_layers * per_layer + D  # + final norm
        if include_embeddings:
            if V is None:
                raise ValueError("GPTConfig.vocab_size is None: cannot count embedding parameters")
            total += V * D * (1 if self.tie_embeddings else 2)
        return total

    def flops_per_token(self, seq_len: int, include_lm_head: bool = True) -> float:
        """Training FLOPs (forward + backward) per token, PaLM appendix B::

            6 * N + 12 * L * H * Q * T   (L layers, H heads, Q head_dim, T = seq_len)

        where ``N`` counts the parameters that take part in a matmul per token: the
        non-embedding parameters (``num_params(include_embeddings=False)``) plus,
        by default, the lm_head projection ``vocab_size * d_model`` (a real matmul
        whether tied or not; pass ``include_lm_head=False`` for the strict
        non-embedding variant). The second term is the attention score/value
        matmuls (QK^T and AV, not halved for causality). Use for MFU estimates.
        """
        n = self.num_params(include_embeddings=False)
        if include_lm_head:
            if self.vocab_size is None:
                raise ValueError("GPTConfig.vocab_size is None: cannot count lm_head FLOPs")
            n += self.vocab_size * self.d_model
        return 6.0 * n + 12.0 * self.n_layers * self.n_heads * self.head_dim * seq_len


def _finite(value) -> bool:
    """Not nan or inf (an int always is: math.isfinite overflows on huge ones)."""
    return isinstance(value, int) or math.isfinite(value)


def check_buildable(config: GPTConfig) -> None:
    """Raise ValueError if ``config`` cannot be built (invalid or vocab_size unresolved)."""
    if config.vocab_size is None:
        raise ValueError("GPTConfig.vocab_size is None: it must be set (normally from the "
                         "tokenizer's vocabulary size) before building the model")
    problems = config.validate()
    if problems:
        lines = [f"  {name}: expected {expected}, got {_get_dotted(config, name)!r}" for name, expected in problems]
        raise ValueError("invalid GPTConfig:\n" + "\n".join(lines))


def _get_dotted(obj, name: str):
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj
