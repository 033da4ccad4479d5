"""Weight initialization for :class:`pretrain.model.gpt.GPT`.

Standard (non-muP) scheme, GPT-2 / OLMo convention:

* embeddings, lm_head and hidden Linear weights ~ N(0, init_std)
* residual output projections (``attn.wo``, ``mlp.w2``) ~ N(0, init_std / sqrt(2 * n_layers))
* norm gains = 1, biases = 0

muP (:mod:`pretrain.model.mup`): every parameter is classified by
:func:`param_kind`, and the std for every matrix comes from a ``std_for``
callback; with ``config.mup`` set the default callback is
``config.mup.init_std`` instead of :func:`default_std`.
:mod:`pretrain.model.param_groups` uses the same classification.
"""

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from pretrain.model.config import GPTConfig

ParamKind = Literal["embedding", "lm_head", "residual_proj", "hidden", "norm", "bias"]

# Module-name suffixes of the Linear layers whose output is added to the residual stream.
RESIDUAL_PROJ_MODULES = ("attn.wo", "mlp.w2")


def param_kind(name: str, param: torch.Tensor) -> ParamKind:
    """Classify a parameter of GPT by its ``named_parameters()`` name."""
    module, _, leaf = name.rpartition(".")
    if leaf == "bias":
        return "bias"
    if param.ndim < 2:
        return "norm"  # the only 1-D non-bias parameters in GPT are norm gains
    if module == "tok_emb":
        return "embedding"  # with tied embeddings this is also the lm_head
    if module == "lm_head":
        return "lm_head"
    if module.endswith(RESIDUAL_PROJ_MODULES):
        return "residual_proj"
    return "hidden"


StdFn = Callable[[ParamKind, str, torch.Tensor, "GPTConfig"], float]


def default_std(kind: ParamKind, name: str, param: torch.Tensor, config: "GPTConfig") -> float:
    """Std of the normal init for matrix/embedding parameters (standard parametrization)."""
    if kind == "residual_proj":
        return config.init_std / math.sqrt(2 * config.n_layers)
    return config.init_std


@torch.no_grad()
def init_weights(model: nn.Module, config: "GPTConfig", std_for: StdFn | None = None) -> None:
    """(Re-)initialize every parameter of ``model`` in place.

    ``std_for`` defaults to muP's rule when ``config.mup`` is set, else :func:`default_std`.
    Deterministic given ``torch.manual_seed`` (parameters are visited in
    ``named_parameters()`` order; tied weights are visited once).
    """
    if std_for is None:
        std_for = config.mup.init_std if config.mup is not None else default_std
    for name, p in model.named_parameters():
        kind = param_kind(name, p)
        if kind == "norm":
            p.fill_(1.0)
        elif kind == "bias":
            p.zero_()
        else:
            nn.init.normal_(p, mean=0.0, std=std_for(kind, name, p, config))
