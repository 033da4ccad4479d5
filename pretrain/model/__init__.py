"""GPT model: config, modules, init, optimizer groups and presets."""

from pretrain.model.gpt import GPT, GPTConfig
from pretrain.model.param_groups import param_groups
from pretrain.model.presets import PRESETS, get_preset, register_preset

__all__ = ["GPT", "GPTConfig", "PRESETS", "get_preset", "register_preset", "param_groups"]
