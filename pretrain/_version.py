"""The package version: a leaf module (pyproject.toml reads it; checkpoints record it)."""

__version__ = "0.1.0"
