"""Callbacks: evaluation (training/evaluate.py), the dual view, logging and checkpointing, run after every update in that order.

Each callback is built with its own settings and gets the loop as a :class:`TrainContext` (the
``Trainer`` satisfies it: cfg, engine, state, dist, seq_len) and the step's metrics dict; an earlier
callback may add to the dict (evaluation adds ``val_loss``) for a later one to log. Callbacks do not
import the Trainer (they sit below it: see the layers in pyproject.toml).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ..checkpoint import CheckpointSaver
    from ..distributed import DistInfo
    from ..run_config import RunConfig
    from .state import TrainState


class TrainContext(Protocol):
    """What a callback sees of the training loop (:class:`pretrain.trainer.Trainer` is one)."""

    cfg: RunConfig
    engine: Any  # the DeepSpeed engine
    state: TrainState
    dist: DistInfo

    @property
    def seq_len(self) -> int: ...


class Callback:
    def on_train_start(self, ctx: TrainContext) -> None:
        pass

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        pass

    def on_train_end(self, ctx: TrainContext) -> None:
        pass


def _due(step: int, interval: int, max_steps: int) -> bool:
    return step >= max_steps or (interval > 0 and step % interval == 0)


class DualCallback(Callback):
    """Adds the dual view of the schedule so far (c_{t,0} and the 50% window) every ``interval`` updates.

    ``alpha`` holds alpha_t = LR x weight decay of the hidden matrices for every
    update of the run (the schedule is a pure function of the step, so it is
    computed once); see pretrain/schedules/dual.py.
    """

    def __init__(self, alpha, interval: int, is_main: bool):
        self.alpha = alpha
        self.interval = interval
        self.is_main = is_main

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        step = ctx.state.step
        if self.is_main and _due(step, self.interval, ctx.state.max_steps):
            from ..schedules.dual import summarize

            summary = summarize(self.alpha, step)
            metrics["dual_c0"] = summary.c0
            metrics["dual_window50"] = summary.window50


class CheckpointCallback(Callback):
    """Save every ``interval`` updates, at the permanent steps, when the time interval has
    passed or a stop was requested (preemption), and after the last update."""

    def __init__(self, checkpointer: CheckpointSaver, interval: int, data_loader=None, permanent=(), control=None):
        self.checkpointer = checkpointer
        self.interval = interval
        self.data_loader = data_loader
        self.permanent = set(permanent)
        self.control = control

    def due(self, state) -> bool:
        """Whether this step ends with a save (the same on every rank: the flags are all-reduced)."""
        return (state.step in self.permanent or state.stop or state.save_due
                or _due(state.step, self.interval, state.max_steps))

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        state = ctx.state
        permanent = state.step in self.permanent
        if self.due(state):
            from .state import capture

            self.checkpointer.save(ctx.engine, state, capture(self.data_loader), permanent=permanent)
            if self.control is not None:
                self.control.saved()


_WANDB_BAD_CHARS = "/\\#?%:"  # not allowed in a W&B project name


@dataclass
class WandbConfig:
    """Weights & Biases (optional: ``pip install wandb``); ``logging.wandb: {}`` turns it on.

    Every record of metrics.jsonl is logged at its step, with the resolved run config as the
    W&B config and, for a branch, its lineage.json as ``config.lineage``.
    """

    project: str | None = None  # default: "pretrain"
    entity: str | None = None  # W&B team or user; default: your default entity
    name: str | None = None  # the W&B run's name; default: the run's name
    tags: list[str] = field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] | None = None  # default: WANDB_MODE, else online
    group: str | None = None  # default: the run's name; a branch: its parent's group

    def validate(self) -> list[tuple[str, str]]:
        problems = [(key, "a non-empty string, or null") for key in ("project", "entity", "name", "group")
                    if getattr(self, key) is not None and not getattr(self, key).strip()]
        if self.project and any(c in self.project for c in _WANDB_BAD_CHARS):
            problems.append(("project", f"a W&B project name, without any of {_WANDB_BAD_CHARS}"))
        if any(not 0 < len(tag) <= 64 for tag in self.tags):
            problems.append(("tags", "a list of tags of 1 to 64 characters"))
        return problems


@dataclass
class LoggingConfig:
    interval: int = 10  # console progress line every N updates
    tensorboard: bool = True
    wandb: WandbConfig | None = None  # Weights & Biases; null: off
    plot: bool = True  # draw RUN_DIR/loss.png when a launch of `pretrain.py` finishes the run (rank 0)

    def validate(self) -> list[tuple[str, str]]:
        return [("interval", "an integer >= 1")] if self.interval < 1 else []


class WandbLogger:
    """Rank 0: a Weights & Biases run getting what :class:`MetricsLogger` logs (wandb imported here only).

    Writes ``RUN_DIR/wandb.json`` (the W&B run's project, group, id, local directory and URL): a
    branch reads its parent's to join the parent's group.
    """

    def __init__(self, cfg: WandbConfig):
        self.cfg = cfg
        self.run: Any = None

    def start(self, run_cfg: Any, run_dir: Path) -> None:
        import wandb

        lineage = _read_json(run_dir / "lineage.json")
        c = self.cfg
        try:
            self.run = wandb.init(
                project=c.project or "pretrain", entity=c.entity, name=c.name or run_cfg.name,
                group=c.group or (_parent_group(lineage) if lineage else run_cfg.name), tags=list(c.tags) or None,
                mode=c.mode, config=run_cfg.to_dict(), dir=None if os.environ.get("WANDB_DIR") else str(run_dir),
            )
        except Exception as e:  # no API key, no network, a bad entity: say so, without a traceback
            from ..errors import EXIT_CONFIG_ERROR, LaunchError

            raise LaunchError(EXIT_CONFIG_ERROR, f"logging.wandb: wandb.init failed: {type(e).__name__}: {e} "
                              "(online: run `wandb login` or set WANDB_API_KEY; or set logging.wandb.mode=offline "
                              "and `wandb sync` the run later)") from None
        if lineage:
            self.run.config.update({"lineage": lineage}, allow_val_change=True)
        record = {"project": self.run.project, "entity": c.entity, "group": self.run.group, "name": self.run.name,
                  "id": self.run.id, "dir": self.run.dir, "url": self.run.url, "mode": c.mode}
        (run_dir / "wandb.json").write_text(json.dumps(record, indent=1) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.log(record, step=int(record["step"]))

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=exit_code)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _parent_group(lineage: dict[str, Any]) -> str | None:
    """A branch's W&B group: its parent's (the parent's wandb.json), else the parent run's name."""
    parent_dir = Path(str(lineage.get("parent_run_dir", "")))
    group = (_read_json(parent_dir / "wandb.json") or {}).get("group")
    if group:
        return str(group)
    import yaml

    try:
        parent_cfg = yaml.safe_load((Path(str(lineage.get("parent_checkpoint"))) / "config.yaml").read_text())
        name = parent_cfg.get("name") if isinstance(parent_cfg, dict) else None
    except (OSError, yaml.YAMLError):
        name = None
    return str(name) if name else parent_dir.name or None


class MetricsLogger(Callback):
    """Rank 0: one JSON line per update, TensorBoard scalars, the same records to W&B (``logging.wandb``),
    and a console progress line."""

    def __init__(self, out_dir: Path, interval: int, tensorboard: bool, is_main: bool,
                 wandb: WandbConfig | None = None):
        self.out_dir = Path(out_dir)
        self.interval = interval
        self.use_tb = tensorboard
        self.is_main = is_main
        self.jsonl = None
        self.tb = None
        self.wandb = WandbLogger(wandb) if wandb is not None and is_main else None
        self.t_start = 0.0
        self.step_start = 0

    def on_train_start(self, ctx: TrainContext) -> None:
        if not self.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Append: a resumed run continues the same file (records after the resume point are rewritten).
        path = self.out_dir / "metrics.jsonl"
        _truncate_after(path, ctx.state.step)
        self.jsonl = open(path, "a", buffering=1)
        if self.use_tb:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=ctx.state.step + 1)
        if self.wandb is not None:
            self.wandb.start(ctx.cfg, self.out_dir)
        self.t_start = time.perf_counter()
        self.step_start = ctx.state.step

    def on_step_end(self, ctx: TrainContext, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        record = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        self.jsonl.write(json.dumps(json_record(record), allow_nan=False) + "\n")
        if self.wandb is not None:
            self.wandb.log(record)
        step = metrics["step"]
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(_tb_name(key), value, step)
        if "loss" not in metrics:  # the step-0 record: validation of the initial weights only
            print(f"step 0/{ctx.state.max_steps} | val_loss {metrics['val_loss']:.4f} (initial weights)", flush=True)
            return
        if step % self.interval == 0 or "val_loss" in metrics or step == ctx.state.max_steps:
            elapsed = time.perf_counter() - self.t_start
            done = step - self.step_start
            eta = elapsed / max(done, 1) * (ctx.state.max_steps - step)
            line = (
                f"step {step}/{ctx.state.max_steps} | loss {metrics['loss']:.4f} | lr {metrics['lr']:.3g} | "
                f"grad_norm {metrics['grad_norm']:.3f} | {metrics['tokens_per_s']:.0f} tok/s | "
                f"tokens {metrics['tokens']:,} | eta {_fmt_time(eta)}"
            )
            if "val_loss" in metrics:
                line += f" | val_loss {metrics['val_loss']:.4f}"
            print(line, file=sys.stdout, flush=True)

    def on_train_end(self, ctx: TrainContext) -> None:
        if self.jsonl is not None:
            self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


_TB_GROUPS = {
    "loss": "train/loss",
    "val_loss": "val/loss",
    "val_ppl": "val/perplexity",
    "grad_norm": "train/grad_norm",
    "tokens": "train/tokens",
    "tokens_per_s": "perf/tokens_per_s",
    "step_time_s": "perf/step_time_s",
    "data_wait_s": "perf/data_wait_s",
    "eval_time_s": "perf/eval_time_s",
    "lr": "lr/peak_group",
    "lr_multiplier": "lr/multiplier",
    "samples_per_s": "perf/samples_per_s",
    "tflops": "perf/tflops",
    "mfu": "perf/mfu",
    "memory_gb": "perf/memory_gb",
    "param_norm": "train/param_norm",
    "skipped": "train/skipped_update",
    "skipped_total": "train/skipped_updates_total",
    "loss_spike_z": "train/loss_spike_z",
    "dual_c0": "dual/c0_initial_weight",
    "dual_window50": "dual/window50_updates",
}


def _tb_name(key: str) -> str:
    if key.startswith("val_loss/"):
        return "val/loss_" + key.split("/", 1)[1]
    return _TB_GROUPS.get(key, key)


def _fmt_time(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def json_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` as strict JSON: a non-finite number (a NaN loss, an inf grad norm) becomes null, and
    ``nonfinite`` lists those keys with what they were (``{"loss": "nan"}``); readers see null, not a
    ``NaN`` token that JSON does not have."""
    bad = {k: repr(v) for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)}
    if not bad:
        return record
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": bad}


def _truncate_after(path: Path, step: int) -> None:
    """Drop records past ``step`` (left by a run that died after its last checkpoint)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            break  # a torn last line
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(l + "\n" for l in kept))
    tmp.replace(path)


__all__ = ["Callback", "LoggingConfig", "WandbConfig", "DualCallback", "CheckpointCallback", "MetricsLogger",
           "WandbLogger", "json_record"]
