"""GPT model: config, modules, init, muP, loss, optimizer groups and presets."""

from pretrain.model.gpt import GPT, GPTConfig
from pretrain.model.loss import lm_loss
from pretrain.model.mup import MuPConfig
from pretrain.model.param_groups import param_groups
from pretrain.model.presets import PRESETS, get_preset, register_preset

__all__ = ["GPT", "GPTConfig", "MuPConfig", "PRESETS", "get_preset", "register_preset", "param_groups", "lm_loss"]
