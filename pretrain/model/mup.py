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

The hyper-parameters, :class:`MuPConfig` and the Table 4 defaults (``D2Z_*``), live
in the torch-free :mod:`pretrain.model.config` and are re-exported here.
"""

from pretrain.model.config import (  # noqa: F401 (re-exported)
    D2Z_ALPHA_INPUT,
    D2Z_ALPHA_OUTPUT,
    D2Z_BASE_LR,
    D2Z_BASE_WIDTH,
    D2Z_SIGMA_BASE,
    MuPConfig,
)

__all__ = ["MuPConfig", "D2Z_SIGMA_BASE", "D2Z_ALPHA_INPUT", "D2Z_ALPHA_OUTPUT", "D2Z_BASE_WIDTH", "D2Z_BASE_LR"]
