"""GPT model: config, modules, init, muP, loss, optimizer groups and presets.

The names below are re-exported lazily (PEP 562): importing this package, or its
torch-free leaf :mod:`pretrain.model.config`, does not import torch; touching
``pretrain.model.GPT`` (say) imports the module that defines it.

``param_groups`` is not among them: the name is also a submodule's, and once
``pretrain.model.param_groups`` is imported the package attribute is that module,
so a lazy re-export would hand out the module or the function depending on import
order. Import it from :mod:`pretrain.model.param_groups`.
"""

import importlib

# name -> submodule of pretrain.model that defines it
_EXPORTS = {
    "GPT": "gpt",
    "GPTConfig": "config",
    "MuPConfig": "config",
    "PRESETS": "presets",
    "get_preset": "presets",
    "register_preset": "presets",
    "lm_loss": "loss",
}

__all__ = ["GPT", "GPTConfig", "MuPConfig", "PRESETS", "get_preset", "register_preset", "lm_loss"]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
