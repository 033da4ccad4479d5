"""A run directory, read back: its typed config, metrics, checkpoints, lineage and hardware record.

Layout (written by the trainer)::

    RUN_DIR/config.yaml       the resolved run config
    RUN_DIR/ds_config.json    the DeepSpeed config used
    RUN_DIR/hardware.json     precision and why, threads, the MFU peak
    RUN_DIR/metrics.jsonl     one record per optimizer update
    RUN_DIR/lineage.json      a branch: where it came from and what it changed
    RUN_DIR/checkpoints/      (or checkpoint.dir) see pretrain/checkpoint.py

Export, report, plot, resume and branch read runs through :class:`RunDir`.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from .errors import RunDirError  # noqa: F401  (re-exported)

METRICS = "metrics.jsonl"




def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``RUN_DIR/metrics.jsonl`` (a torn last line is dropped).

    The file is strict JSON: a non-finite value (a NaN loss, an inf grad norm) is null, with ``nonfinite``
    saying what it was (``{"loss": null, "nonfinite": {"loss": "nan"}}``).
    """
    out = []
    for line in (Path(run_dir) / METRICS).read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "config.yaml").is_file():
            raise RunDirError(f"{self.path / 'config.yaml'} not found: {self.path} is not a run directory written by pretrain.py")

    @cached_property
    def config_dict(self) -> dict[str, Any]:
        """The resolved run config as saved (plain data)."""
        data = yaml.safe_load((self.path / "config.yaml").read_text()) or {}
        if not isinstance(data, dict):
            raise RunDirError(f"{self.path / 'config.yaml'}: expected a mapping")
        return data

    @cached_property
    def config(self):
        """The typed :class:`pretrain.run_config.RunConfig` (ConfigError naming the file when it does not load)."""
        from .run_config import run_config_from_dict

        return run_config_from_dict(self.config_dict, str(self.path / "config.yaml"))

    def model_config(self):
        """The run's GPTConfig, with its vocabulary size filled in (a resolved config)."""
        model = self.config.model
        if model.vocab_size is None:
            raise RunDirError(f"{self.path / 'config.yaml'}: model.vocab_size is null (not a resolved run config)")
        return model

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path) if (self.path / METRICS).is_file() else []

    def checkpoints(self, override: str | Path | None = None, verify: str = "hash"):
        """The run's :class:`CheckpointDir`: ``override``, else where its config put them."""
        from .checkpoint import CheckpointDir

        if override:
            return CheckpointDir(Path(override), verify)  # type: ignore[arg-type]
        return CheckpointDir(self.config.checkpoint.root(self.path), verify)  # type: ignore[arg-type]

    def _json(self, name: str) -> dict[str, Any] | None:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else None

    def lineage(self) -> dict[str, Any] | None:
        return self._json("lineage.json")

    def hardware(self) -> dict[str, Any] | None:
        return self._json("hardware.json")

    def tokenizer_path(self) -> Path | None:
        """The tokenizer file the run used (.model or tokenizer.json): ``data.tokenizer``, else the manifest's."""
        data = self.config_dict.get("data") or {}
        if data.get("tokenizer"):
            return Path(data["tokenizer"])
        manifest = Path(data.get("path", "")) / "manifest.json"
        if manifest.is_file():
            tok = json.loads(manifest.read_text()).get("tokenizer") or {}
            return Path(tok["path"]) if tok.get("path") else None
        return None
