"""Named model presets: ``get_preset("demo")`` returns a fresh :class:`GPTConfig`.

Presets leave ``vocab_size=None``; the run config fills it from the tokenizer.
Add one with::

    @register_preset("my_model")
    def my_model() -> GPTConfig:
        return GPTConfig(d_model=..., ...)
"""

from typing import Callable

from pretrain.model.gpt import GPTConfig

PRESETS: dict[str, Callable[[], GPTConfig]] = {}


def register_preset(name: str) -> Callable[[Callable[[], GPTConfig]], Callable[[], GPTConfig]]:
    """Decorator registering a zero-argument ``GPTConfig`` factory under ``name``."""

    def decorator(fn: Callable[[], GPTConfig]) -> Callable[[], GPTConfig]:
        if name in PRESETS:
            raise ValueError(f"model preset {name!r} is already registered")
        PRESETS[name] = fn
        return fn

    return decorator


def get_preset(name: str) -> GPTConfig:
    """A fresh config for preset ``name``; KeyError listing the known names otherwise."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


@register_preset("tiny")
def tiny() -> GPTConfig:
    """For unit tests: ~0.1M non-embedding parameters."""
    return GPTConfig(d_model=64, n_layers=2, n_heads=4, max_seq_len=128)


@register_preset("demo")
def demo() -> GPTConfig:
    """For the CPU demo (2 cores, a few minutes): ~3.2M non-embedding parameters."""
    return GPTConfig(d_model=256, n_layers=4, n_heads=4, max_seq_len=256, tie_embeddings=True)
