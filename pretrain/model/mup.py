"""Maximal Update Parameterization (muP) for :class:`pretrain.model.gpt.GPT`.

Conventions of the D2Z study (Bergsma et al., "Straight to Zero", section 2.2,
Appendix A and Table 4), which trains with Cerebras' muP (Dey et al. 2023,
"Cerebras-GPT"; "The Practitioner's Guide to muP"). Width multiplier
``m = d_model / base_width``; ``sigma_base``, ``alpha_input``, ``alpha_output``
and the base LR are tuned on a proxy of width ``base_width`` and transfer to
every width:

==========================  ==================================  =====================
parameter (``param_kind``)  init std                            AdamW LR (``lr_mult``)
==========================  ==================================  =====================
embedding                   ``sigma_base``                      ``base_lr``     (1)
hidden (q, k, v, MLP in)    ``sigma_base / sqrt(m)``            ``base_lr / m`` (1/m)
residual_proj (wo, w2)      ``sigma_base / sqrt(2 * L * m)``    ``base_lr / m`` (1/m)
lm_head (untied)            ``sigma_base``                      ``base_lr``     (1)
norm gains, biases          1, 0                                ``base_lr``     (1)
==========================  ==================================  =====================

and in the forward pass (the generic knobs of :class:`GPTConfig`, which muP sets):

* embedding output multiplied by ``alpha_input``             (``emb_mult``);
* attention scores scaled by ``1 / d_head``, not ``1/sqrt``   (``attn_scale``);
* output logits multiplied by ``alpha_output / m``           (``logit_mult``).

The hidden LR ``base_lr / m`` is the paper's ``eta = rho * eta_tilde`` with
``rho = d_p / d_t``. The residual projections keep GPT-2's depth factor
``1/sqrt(2 * n_layers)`` on top of the width rule (as Cerebras' models do);
it does not depend on width, so it does not affect transfer across widths.

**The output layer.** The D2Z models (like Cerebras-GPT) tie the unembedding to
the embedding, so the output layer *is* an embedding-like matrix: init std
``sigma_base`` and ``base_lr``, its width dependence carried entirely by the
``alpha_output / m`` logit multiplier. This is the "multiplier" form of muP
(Yang et al. 2021, Tensor Programs V, Table 8 / the ``MuReadout`` of the ``mup``
package: a ``1/width`` multiplier with constant init variance and constant Adam
LR). An untied ``lm_head`` follows the same rule, so tied and untied models
share one set of hyper-parameters.

Nothing here touches the trainer: :func:`pretrain.model.param_groups.param_groups`
puts the per-group ``lr_mult`` in the groups and ``OptimizerConfig.build`` turns
it into each group's ``base_lr``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pretrain.model.gpt import GPTConfig
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
                if not getattr(self, name) > 0]

    # ---- derived values -----------------------------------------------------------

    def width_mult(self, config: "GPTConfig") -> float:
        """``m = d_model / base_width``."""
        return config.d_model / self.base_width

    def multipliers(self, config: "GPTConfig") -> tuple[float, float, float]:
        """``(emb_mult, logit_mult, attn_scale)`` for the forward pass."""
        return self.alpha_input, self.alpha_output / self.width_mult(config), 1.0 / config.head_dim

    def init_std(self, kind: "ParamKind", name: str, param: torch.Tensor, config: "GPTConfig") -> float:
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
