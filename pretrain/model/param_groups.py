"""Optimizer parameter groups for :class:`pretrain.model.gpt.GPT`.

Groups (empty ones are dropped; every trainable parameter is in exactly one):

=========  =====================================================  ================
name       parameters                                             weight_decay
=========  =====================================================  ================
decay      hidden weight matrices (attention q/k/v/o, MLP)        ``weight_decay``
no_decay   norm gains and all biases                              0.0
embed      token embedding (also the lm_head when tied)           ``weight_decay`` if
                                                                  ``embedding_weight_decay`` else 0.0
lm_head    untied output projection                               ``weight_decay``
=========  =====================================================  ================

The untied lm_head is a weight matrix and is decayed like the hidden matrices,
but it gets its own group because muP treats the output layer differently
from the hidden matrices (its own lr multiplier).

Each group carries ``"lr_mult"``: 1.0 in the standard parameterization; with
``model.config.mup`` set, ``1/m`` for ``decay`` (hidden matrices, ``m`` the
width multiplier) and 1.0 for the others (:meth:`pretrain.model.config.MuPConfig.lr_mult`).
``OptimizerConfig.build`` sets each group's ``base_lr = lr * lr_mult`` and the
schedule multiplies that. Extra keys ("name", "lr_mult") are preserved by torch optimizers.
"""

from torch import nn

from pretrain.model.init import param_kind

_GROUP_OF_KIND = {
    "hidden": "decay",
    "residual_proj": "decay",
    "norm": "no_decay",
    "bias": "no_decay",
    "embedding": "embed",
    "lm_head": "lm_head",
}


def group_decays(weight_decay: float, embedding_weight_decay: bool = False) -> dict[str, float]:
    """The weight decay of each param group, by group name."""
    return {
        "decay": weight_decay,
        "no_decay": 0.0,
        "embed": weight_decay if embedding_weight_decay else 0.0,
        "lm_head": weight_decay,
    }


def param_groups(model: nn.Module, weight_decay: float, embedding_weight_decay: bool = False) -> list[dict]:
    """Return optimizer param groups ``[{"name", "params", "weight_decay", "lr_mult"}, ...]``."""
    decays = group_decays(weight_decay, embedding_weight_decay)
    config = getattr(model, "config", None)
    mup = getattr(config, "mup", None)
    params: dict[str, list[nn.Parameter]] = {name: [] for name in decays}
    lr_mults: dict[str, set[float]] = {name: set() for name in decays}
    for name, p in model.named_parameters():  # tied weights appear once
        if p.requires_grad:
            kind = param_kind(name, p)
            group = _GROUP_OF_KIND[kind]
            params[group].append(p)
            lr_mults[group].add(mup.lr_mult(kind, config) if mup is not None else 1.0)
    groups = []
    for name, wd in decays.items():
        if params[name]:
            (lr_mult,) = lr_mults[name]  # one multiplier per group, by construction
            groups.append({"name": name, "params": params[name], "weight_decay": wd, "lr_mult": lr_mult})
    return groups
