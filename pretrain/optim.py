"""The optimizer over the model's param groups: AdamW (decoupled weight decay) or SGD with momentum."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class OptimizerConfig:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 3e-4  # peak LR of a group with lr_mult 1; the schedule multiplies it
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW
    eps: float = 1e-8  # AdamW
    momentum: float = 0.0  # SGD (the SkipLR experiments use plain SGD: 0)
    nesterov: bool = False  # SGD
    weight_decay: float = 0.1  # AdamW: decoupled; SGD: L2 (the same for plain SGD); hidden matrices only
    embedding_weight_decay: bool = False
    grad_clip: float = 1.0  # global gradient norm; 0 disables clipping

    def validate(self) -> list[tuple[str, str]]:
        # Every check is written so that nan and inf fail it (`not finite or ...`), whatever built the config.
        problems = []
        if not (math.isfinite(self.lr) and self.lr > 0):
            problems.append(("lr", "a finite learning rate > 0"))
        if len(self.betas) != 2 or not all(math.isfinite(b) and 0.0 <= b < 1.0 for b in self.betas):
            problems.append(("betas", "two numbers in [0, 1), e.g. [0.9, 0.95]"))
        if not (math.isfinite(self.eps) and self.eps > 0):
            problems.append(("eps", "a finite number > 0"))
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(("weight_decay", "a finite number >= 0"))
        if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
            problems.append(("momentum", "a number in [0, 1)"))
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            problems.append(("nesterov", "false unless name is 'sgd' with momentum > 0"))
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            problems.append(("grad_clip", "a finite norm >= 0 (0 disables clipping)"))
        return problems

    def build(self, groups: list[dict[str, Any]], fused: bool = False):
        """An optimizer over ``groups`` (dicts with params, weight_decay, lr_mult, name).

        Each group keeps its own ``base_lr = lr * lr_mult``; the schedule sets
        ``lr = base_lr * multiplier`` before every update. ``fused``: AdamW's fused
        kernel (CUDA; the parameters must be on the GPU already).
        """
        import torch

        param_groups = []
        for g in groups:
            base_lr = self.lr * g.get("lr_mult", 1.0)
            param_groups.append({**g, "lr": base_lr, "base_lr": base_lr})
        if self.name == "sgd":
            return torch.optim.SGD(
                param_groups, lr=self.lr, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay
            )
        return torch.optim.AdamW(
            param_groups, lr=self.lr, betas=tuple(self.betas), eps=self.eps, weight_decay=self.weight_decay,
            **({"fused": True} if fused else {}),
        )

    def hyperparameters(self, group_name: str, lr_mult: float) -> dict[str, Any]:
        """What this config sets on the param group ``group_name`` (everything but the live ``lr``)."""
        from .model.param_groups import group_decays

        decays = group_decays(self.weight_decay, self.embedding_weight_decay)
        hp: dict[str, Any] = {"base_lr": self.lr * lr_mult, "weight_decay": decays.get(group_name, self.weight_decay)}
        if self.name == "sgd":
            hp.update(momentum=self.momentum, nesterov=self.nesterov)
        else:
            hp.update(betas=tuple(self.betas), eps=self.eps)
        return hp

    def apply(self, optimizer) -> list[str]:
        """Give every param group this config's hyperparameters; return what differed (``group.key: old -> new``).

        Called after a checkpoint is loaded: DeepSpeed restores the saved param groups (their base LR,
        weight decay, betas, eps, ...) over the new config's, and the config must win. The optimizer's
        moment state stays the checkpoint's.
        """
        changes = []
        for i, group in enumerate(optimizer.param_groups):
            name = group.get("name", str(i))
            for key, value in self.hyperparameters(name, group.get("lr_mult", 1.0)).items():
                old = group.get(key)
                if key == "betas" and old is not None:
                    old = tuple(old)
                if old != value:
                    changes.append(f"{name}.{key}: {old!r} -> {value!r}")
                    group[key] = value
        return changes


def set_lr(optimizer: Any, multiplier: float) -> dict[str, float]:
    """Set every param group's LR to its own ``base_lr`` times ``multiplier``; return the LR set per group name."""
    lrs = {}
    for i, group in enumerate(optimizer.param_groups):
        group["lr"] = group["base_lr"] * multiplier
        lrs[group.get("name", str(i))] = group["lr"]
    return lrs
