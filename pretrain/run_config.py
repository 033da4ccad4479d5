"""The run configuration: one YAML file per run, one typed section per component.

``load_run_config(path, overrides)`` reads the YAML, applies dotted overrides,
builds the typed sections and checks them; ``resolve(cfg, world_size)`` then
checks the config against the files it names (data, tokenizer, DeepSpeed JSON)
and the world size, and returns the DeepSpeed config to use. Both raise one
ConfigError listing every problem before any work starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .checkpoint import CheckpointConfig
from .config_loader import ConfigError, Problems, Sources, apply_overrides, from_dict, load_yaml, to_dict
from .data import DataConfig
from .model.config import GPTConfig
from .optim import OptimizerConfig
from .schedules import ScheduleConfig
from .training.callbacks import LoggingConfig
from .training.evaluate import EvalConfig

if TYPE_CHECKING:
    from .hardware import Hardware


SEED_MAX = 2**32 - 1  # the largest seed numpy (and so streaming's data order) takes


@dataclass
class TrainConfig:
    micro_batch_size: int  # sequences per rank per forward/backward
    # The budget: at least one of these; several must agree (the resolved config has all of them).
    max_steps: int | None = None  # optimizer updates in the run
    max_tokens: int | None = None  # training tokens (rounded up to whole updates)
    tokens_per_param: float | None = None  # tokens per model parameter (TPP; 20 is compute-optimal)
    # The global batch: one of these (both must agree when both are given).
    global_batch_size: int | None = None  # sequences per optimizer update, over all ranks
    global_batch_tokens: int | None = None  # tokens per optimizer update (a multiple of data.seq_len)
    grad_accum: int | None = None  # default: global / (micro * world size)
    seed: int = 1234
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: what this hardware runs fast (pretrain/hardware.py)
    compile: bool = False  # torch.compile the model before DeepSpeed wraps it (inductor: C++ on CPU, Triton on GPU)
    peak_tflops: float | None = None  # per-device peak for MFU; default: the GPU table, or measured on CPU
    max_consecutive_skips: int = 5  # stop after this many updates in a row skipped as non-finite
    spike_window: int = 100  # loss-spike detector: rolling window of updates (0 disables it)
    spike_threshold: float = 6.0  # a loss this many standard deviations above the rolling mean is a spike
    skip_spikes: bool = False  # skip the update of a spike (costs one extra forward pass per update)

    def validate(self) -> list[tuple[str, str]]:
        # Written so that nan and inf fail every check (the loader refuses them too).
        import math

        problems = []
        for name in ("max_steps", "max_tokens", "global_batch_size", "global_batch_tokens", "micro_batch_size", "grad_accum"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append((name, "an integer >= 1" + (", or null" if name != "micro_batch_size" else "")))
        if self.tokens_per_param is not None and not (math.isfinite(self.tokens_per_param) and self.tokens_per_param > 0):
            problems.append(("tokens_per_param", "a finite number > 0, or null"))
        if self.max_steps is None and self.max_tokens is None and self.tokens_per_param is None:
            problems.append(("max_steps", "a budget: max_steps, max_tokens or tokens_per_param"))
        if self.global_batch_size is None and self.global_batch_tokens is None:
            problems.append(("global_batch_size", "a global batch: global_batch_size (sequences) or global_batch_tokens"))
        if not 0 <= self.seed <= SEED_MAX:
            problems.append(("seed", f"an integer in [0, {SEED_MAX}] (the seeds numpy and streaming's data order take)"))
        if self.max_consecutive_skips < 1:
            problems.append(("max_consecutive_skips", "an integer >= 1"))
        if self.spike_window < 0 or (0 < self.spike_window < 10):
            problems.append(("spike_window", "0 (off) or at least 10 updates"))
        if not (math.isfinite(self.spike_threshold) and self.spike_threshold > 0):
            problems.append(("spike_threshold", "a finite number of standard deviations > 0"))
        if self.peak_tflops is not None and not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            problems.append(("peak_tflops", "a finite number of TFLOP/s > 0, or null"))
        return problems


@dataclass
class DeepSpeedSection:
    config: str = "ds_configs/zero2.json"  # ZeRO settings; batch and precision keys are filled in (or checked)


@dataclass
class RunConfig:
    name: str
    data: DataConfig
    train: TrainConfig
    run_dir: str | None = None  # default: runs/<name>
    model: GPTConfig = field(default_factory=GPTConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    deepspeed: DeepSpeedSection = field(default_factory=DeepSpeedSection)

    @property
    def out_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.name}")

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint.root(self.out_dir)

    @property
    def seq_len(self) -> int:
        assert self.data.seq_len is not None, "resolve() fills data.seq_len"
        return self.data.seq_len

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def dual_alpha(self) -> float:
        """alpha = peak LR x weight decay of the hidden matrices (muP scales their LR by 1/m).

        The smoothing factor of the dual view of AdamW (D2Z paper, section 3.1).
        """
        m = self.model
        mult = m.mup.lr_mult("hidden", m) if m.mup is not None else 1.0
        return self.optimizer.lr * mult * self.optimizer.weight_decay

    def build_schedule(self):
        return self.schedule.build(self.train.max_steps, lr=self.optimizer.lr, alpha=self.dual_alpha())

    def hash(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _expand_model_preset(data: dict[str, Any], sources: Sources) -> None:
    """``model: {preset: NAME, ...}``: the preset's fields, then the given keys on top."""
    model = data.get("model")
    if not isinstance(model, dict) or "preset" not in model:
        return
    from .model.presets import PRESETS

    name = model["preset"]
    if name not in PRESETS:
        raise ConfigError([f"{sources.of('model.preset')}: model.preset = {name!r}: expected one of: {', '.join(sorted(PRESETS))}"])
    base = to_dict(PRESETS[name]())
    base.update({k: v for k, v in model.items() if k != "preset"})
    data["model"] = base


def _move_init_from(data: dict[str, Any], sources: Sources) -> None:
    """``model.init_from`` is read as ``checkpoint.init_from`` (the model section stays the architecture)."""
    model = data.get("model")
    if not isinstance(model, dict) or "init_from" not in model:
        return
    value = model.pop("init_from")
    checkpoint = data.setdefault("checkpoint", {}) or {}
    if checkpoint.get("init_from") not in (None, value):
        raise ConfigError([f"{sources.of('model.init_from')}: model.init_from = {value!r} and checkpoint.init_from = "
                           f"{checkpoint['init_from']!r}: expected one of them (they are the same setting)"])
    checkpoint["init_from"] = value
    data["checkpoint"] = checkpoint
    if "model.init_from" in sources.overridden:
        sources.overridden["checkpoint.init_from"] = sources.overridden["model.init_from"]


def load_run_config(path: str | Path, overrides: list[str] = (), sources: Sources | None = None) -> RunConfig:
    """Read ``path``, apply ``key.sub=value`` overrides, and build the typed config.

    ``sources``, if given, is filled with where each key came from (for resolve's messages).
    """
    sources = sources if sources is not None else Sources(str(path))
    data = load_yaml(path)
    apply_overrides(data, overrides, sources)
    _expand_model_preset(data, sources)
    _move_init_from(data, sources)
    return from_dict(RunConfig, data, sources)


def load_and_resolve(path: str | Path, overrides: Sequence[str], world_size: int,
                     hardware: Hardware | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """Load, override, check and resolve: the resolved RunConfig and DeepSpeed dict, or one ConfigError."""
    sources = Sources(str(path))
    cfg = load_run_config(path, list(overrides), sources)
    return resolve(cfg, world_size, sources, hardware)


def plan_text(cfg: RunConfig, world_size: int, precision=None, threads=None) -> str:
    """The plan printed before a run: size, tokens, TPP, schedule, batch layout, FLOPs, precision, threads."""
    m, t = cfg.model, cfg.train
    n_params = m.num_params()
    total_tokens = t.global_batch_size * cfg.seq_len * t.max_steps
    flops = m.flops_per_token(cfg.seq_len) * total_tokens
    text = (
        f"plan: {n_params / 1e6:.2f}M parameters ({m.num_params(include_embeddings=False) / 1e6:.2f}M non-embedding), "
        f"{t.max_steps} steps x {t.global_batch_size} seqs x {cfg.seq_len} tokens = {total_tokens:,} tokens "
        f"({total_tokens / n_params:.2f} tokens/param), warmup {cfg.schedule.warmup_for(t.max_steps)} steps, "
        f"schedule {cfg.schedule.name}, world {world_size} x micro {t.micro_batch_size} x accum {t.grad_accum}, "
        f"~{flops:.3g} FLOPs"
    )
    if precision is not None:
        text += f"\n  precision {precision}"
    if threads is not None:
        text += f"\n  threads {threads.threads} per rank ({threads.reason})"
    if t.compile:
        text += "\n  torch.compile on"
    return text


def run_config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    data = json.loads(json.dumps(data))  # a private copy
    sources = Sources(source)
    _expand_model_preset(data, sources)
    _move_init_from(data, sources)
    return from_dict(RunConfig, data, sources)


# -- cross-checks against files and the world size -----------------------------------------

def resolve_budget(cfg: RunConfig, problems: Problems) -> None:
    """Fill global_batch_size from global_batch_tokens and max_steps from the token budget (needs data.seq_len)."""
    import math

    t, seq = cfg.train, cfg.data.seq_len
    if t.global_batch_tokens is not None:
        if t.global_batch_tokens % seq:
            problems.add("train.global_batch_tokens", t.global_batch_tokens, f"a multiple of data.seq_len = {seq}")
            return
        sequences = t.global_batch_tokens // seq
        if t.global_batch_size is not None and t.global_batch_size != sequences:
            problems.add("train.global_batch_size", t.global_batch_size,
                         f"the same batch as train.global_batch_tokens = {t.global_batch_tokens} ({sequences} sequences of {seq})")
            return
        t.global_batch_size = sequences
    t.global_batch_tokens = t.global_batch_size * seq
    steps = {}
    if t.max_steps is not None:
        steps["train.max_steps"] = t.max_steps
    if t.max_tokens is not None:
        steps["train.max_tokens"] = math.ceil(t.max_tokens / t.global_batch_tokens)
    if t.tokens_per_param is not None:
        steps["train.tokens_per_param"] = math.ceil(t.tokens_per_param * cfg.model.num_params() / t.global_batch_tokens)
    if len(set(steps.values())) > 1:
        shown = ", ".join(f"{k} -> {v} updates" for k, v in steps.items())
        key = next(iter(steps))
        problems.add(key, getattr(t, key.split(".")[1]), f"one budget, or budgets that agree ({shown}); set the others to null")
        return
    t.max_steps = next(iter(steps.values()))
    if t.max_tokens is None:
        t.max_tokens = t.max_steps * t.global_batch_tokens


def _schedule_value(schedule: ScheduleConfig, key: str) -> Any:
    if key.startswith("params."):
        return schedule.params.get(key.split(".", 1)[1])
    return schedule.params if key == "params" else getattr(schedule, key, None)


DS_BATCH_KEYS = {
    "train_batch_size": "train.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.grad_accum",
    "gradient_clipping": "optimizer.grad_clip",
}


def resolve(
    cfg: RunConfig, world_size: int, source: str | Sources = "<config>", hardware: Hardware | None = None
) -> tuple[RunConfig, dict[str, Any]]:
    """Check ``cfg`` against its files, ``world_size`` and ``hardware``; fill derived values.

    Returns the resolved config (data.seq_len, model.vocab_size and
    train.grad_accum filled in; train.precision stays as asked, e.g. ``auto``)
    and the DeepSpeed config dict, whose precision block is the one chosen for
    ``hardware`` (default: this machine, :func:`pretrain.hardware.detect`).
    Raises one ConfigError naming every problem.
    """
    sources = source if isinstance(source, Sources) else Sources(source)
    problems = Problems(sources)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data),
        model=dataclasses.replace(cfg.model),
        train=dataclasses.replace(cfg.train),
    )

    if cfg.logging.wandb is not None:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:  # None also for sys.modules["wandb"] = None
            problems.add("logging.wandb", to_dict(cfg.logging.wandb), "the wandb package, which is not installed: "
                         "pip install wandb (or pip install -e '.[wandb]'), or remove logging.wandb")

    _check_output_dirs(cfg, problems)

    # Data directory, manifest, tokenizer.
    data = cfg.data.build()
    file_problems = data.check_files()
    for key, value, expected in file_problems:
        problems.add(f"data.{key}", value, expected)
    if not file_problems:
        manifest = data.manifest()
        if cfg.data.seq_len is None:
            cfg.data.seq_len = int(manifest["seq_len"])
        vocab = int(manifest["vocab_size"])
        if cfg.model.vocab_size is None:
            cfg.model.vocab_size = vocab
        elif cfg.model.vocab_size < vocab:
            problems.add("model.vocab_size", cfg.model.vocab_size, f"at least the tokenizer's vocabulary size {vocab}")
        if cfg.data.seq_len > cfg.model.max_seq_len:
            problems.add("data.seq_len", cfg.data.seq_len, f"at most model.max_seq_len = {cfg.model.max_seq_len}")

    t = cfg.train
    # The global batch in sequences, and the budget in updates.
    if not file_problems:
        resolve_budget(cfg, problems)
    if t.global_batch_size is None or t.max_steps is None:
        problems.raise_if_any()
        return cfg, {}

    # Batch arithmetic.
    per_step = t.micro_batch_size * world_size
    if t.grad_accum is None:
        if t.global_batch_size % per_step:
            problems.add(
                "train.global_batch_size",
                t.global_batch_size,
                f"a multiple of train.micro_batch_size ({t.micro_batch_size}) x world size ({world_size}) = {per_step}",
            )
        else:
            t.grad_accum = t.global_batch_size // per_step
    elif t.micro_batch_size * t.grad_accum * world_size != t.global_batch_size:
        problems.add(
            "train.global_batch_size",
            t.global_batch_size,
            f"train.micro_batch_size ({t.micro_batch_size}) x train.grad_accum ({t.grad_accum}) x world size "
            f"({world_size}) = {t.micro_batch_size * t.grad_accum * world_size}",
        )

    # Branch source and permanent steps.
    c = cfg.checkpoint
    if c.branch_from is not None:
        from .checkpoint import CheckpointDir, CheckpointError

        try:
            parent, _ = CheckpointDir.open(Path(c.branch_from))
            if parent.root.resolve() == cfg.checkpoint_dir.resolve():
                problems.add("checkpoint.branch_from", c.branch_from, "a checkpoint of another run (this is the run's own "
                             "checkpoint directory; a branch needs its own run_dir)")
        except CheckpointError as e:
            problems.add("checkpoint.branch_from", c.branch_from, f"a complete checkpoint directory ({e})")
    if c.init_checkpoint is not None:  # one of our checkpoints: complete, with a model that fits (hashed at launch)
        from .checkpoint import CheckpointDir, CheckpointError
        from .resume import model_differences

        try:
            parent, tag = CheckpointDir.open(Path(c.init_checkpoint))
            for difference in (model_differences(parent.root / tag, cfg) if not file_problems else []):
                problems.add("checkpoint.init_from", c.init_from, f"a checkpoint whose model fits the run's: {difference}")
        except CheckpointError as e:
            problems.add("checkpoint.init_from", c.init_from, "one of our complete checkpoints (a RUN/checkpoints/"
                         f"step_NNNNNNNN directory or one written by pretrain.merge), or 'hf:DIR' for Hugging Face "
                         f"weights ({e})")
    if c.init_from is not None and c.init_from.startswith("hf:") and not file_problems:
        from .hf import HFError, hf_config_differences

        try:
            for difference in hf_config_differences(cfg.model, Path(c.init_from[3:])):
                problems.add("checkpoint.init_from", c.init_from, f"weights that fit the model: {difference}")
        except HFError as e:
            problems.add("checkpoint.init_from", c.init_from, f"a Hugging Face model directory ({e})")
    if cfg.schedule.name == "cooldown" and c.branch_from is not None and not problems.items:
        _fill_cooldown_start(cfg, Path(c.branch_from))
    late = [s for s in c.permanent if s > t.max_steps]
    if late:
        problems.add("checkpoint.permanent", c.permanent, f"steps within the run (<= train.max_steps = {t.max_steps}); {late} are not")

    # Schedule fits the run.
    for key, expected in cfg.schedule.check_run(t.max_steps):
        problems.add(f"schedule.{key}", _schedule_value(cfg.schedule, key), expected)

    from .hardware import choose_precision, detect

    try:
        choice = choose_precision(cfg.train.precision, hardware or detect())
    except ValueError as e:
        problems.add("train.precision", cfg.train.precision, f"a precision this device runs ({e})")
        choice = None
    ds_config = deepspeed_config(cfg, choice, problems)
    problems.raise_if_any()
    return cfg, ds_config


def _blocked_dir(path: Path) -> str | None:
    """Why ``path`` cannot be (or be made) a directory this process writes into; None when it can."""
    import os

    p = path.absolute()
    while not (p.exists() or p.is_symlink()):
        if p.parent == p:
            return None
        p = p.parent
    if not p.is_dir():
        what = "a file" if p.is_file() else "not a directory"
        return f"{p} is {what}" if p == path.absolute() else f"{p}, on its path, is {what}"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    return None


def _check_output_dirs(cfg: RunConfig, problems: Problems) -> None:
    """The run directory and checkpoint directory can be written and are no input of the run (pretrain.outputs)."""
    from .data import is_remote
    from .outputs import OutputError, check_disjoint

    inputs = {
        "data directory (data.path)": None if is_remote(cfg.data.path) else cfg.data.path,
        "tokenizer (data.tokenizer)": cfg.data.tokenizer,
        "branch source (checkpoint.branch_from)": cfg.checkpoint.branch_from,
        "initial weights (checkpoint.init_from)": (cfg.checkpoint.init_from or "").removeprefix("hf:") or None,
    }
    outputs = [("run_dir", cfg.run_dir, cfg.out_dir)]
    if cfg.checkpoint.dir:
        outputs.append(("checkpoint.dir", cfg.checkpoint.dir, cfg.checkpoint_dir))
    for key, value, path in outputs:
        why = _blocked_dir(path)
        if why is not None:
            problems.add(key, value if value is not None else str(path), f"a directory to write the run into ({why})")
            continue
        try:
            check_disjoint(path, inputs, flag=key)
        except OutputError as e:
            problems.add_raw(key, str(e))


def _fill_cooldown_start(cfg: RunConfig, branch_from: Path) -> None:
    """A cooldown's null start_step / start_lr: the branch checkpoint's step and the parent's LR there."""
    params = cfg.schedule.params
    if params.get("start_step") is not None and params.get("start_lr") is not None:
        return
    import yaml

    from .checkpoint import step_of

    step = step_of(branch_from.name)
    parent = run_config_from_dict(yaml.safe_load((branch_from / "config.yaml").read_text()), str(branch_from / "config.yaml"))
    multiplier = parent.build_schedule()(step - 1) if step > 0 else 0.0  # what the parent's update `step` ran with
    filled = {"start_step": step, "start_lr": parent.optimizer.lr * multiplier}
    cfg.schedule = dataclasses.replace(
        cfg.schedule, params={**params, **{k: v for k, v in filled.items() if params.get(k) is None}})


def deepspeed_config(cfg: RunConfig, choice, problems: Problems) -> dict[str, Any]:
    """The DeepSpeed JSON with our batch and precision values; a contradiction is a problem."""
    path = Path(cfg.deepspeed.config)
    try:
        ds = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except FileNotFoundError:
        problems.add("deepspeed.config", str(path), "an existing DeepSpeed JSON file (not found)")
        return {}
    except UnicodeDecodeError as e:
        problems.add("deepspeed.config", str(path), f"a DeepSpeed JSON text file ({path} is not UTF-8 text: byte {e.start})")
        return {}
    except json.JSONDecodeError as e:
        problems.add("deepspeed.config", str(path), f"a valid JSON file ({path}: {e})")
        return {}
    except (ValueError, OSError) as e:
        problems.add("deepspeed.config", str(path), f"a readable JSON file ({path}: {e})")
        return {}
    if not isinstance(ds, dict):
        problems.add("deepspeed.config", str(path), "a JSON object at the top level")
        return {}
    for owned in ("optimizer", "scheduler"):
        if owned in ds:
            problems.add_raw(
                "deepspeed.config",
                f"{path}: key {owned!r} must not be set: the run config's `{'optimizer' if owned == 'optimizer' else 'schedule'}` section owns it",
            )
    ours = {
        "train_batch_size": cfg.train.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.optimizer.grad_clip,
    }
    for key, value in ours.items():
        if key in ds and value is not None and ds[key] != value:
            problems.add(
                DS_BATCH_KEYS[key], value, f"the same value as {key} = {ds[key]!r} in {path} (they contradict; change one)"
            )
        ds[key] = value
    if choice is not None:
        _fill_precision(ds, choice.precision, cfg.train.precision, path, problems)
    if cfg.optimizer.name != "adamw":
        # DeepSpeed's ZeRO refuses optimizers outside its tested list (Adam/AdamW/...) unless told.
        ds.setdefault("zero_allow_untested_optimizer", True)
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows (expected finite numbers)")


def _fill_precision(ds: dict[str, Any], precision: str, asked: str, path: Path, problems: Problems) -> None:
    """Set DeepSpeed's bf16/fp16 blocks for ``precision``; a JSON that enables another one is refused."""
    said = {k: bool(ds[k]["enabled"]) for k in ("bf16", "fp16") if isinstance(ds.get(k), dict) and "enabled" in ds[k]}
    clash = {k: v for k, v in said.items() if v != (k == precision)}
    if clash:
        how = f"{precision} (train.precision = 'auto' on this hardware)" if asked == "auto" else precision
        shown = ", ".join(f"{k}.enabled = {str(v).lower()}" for k, v in clash.items())
        problems.add("train.precision", asked, f"the same precision as {path}, which sets {shown} while this run trains "
                     f"in {how}: remove the precision block from the JSON (ds_configs/ hold ZeRO settings only) or "
                     "set train.precision to match")
    wanted = [precision] if precision != "fp32" else []
    for key in ("bf16", "fp16"):
        block = ds.get(key) if isinstance(ds.get(key), dict) else {}
        ds[key] = {**block, "enabled": key in wanted}
    if precision == "bf16":
        ds["bf16"].setdefault("check_grad_overflow", True)  # skip (not apply) an update with non-finite gradients
    elif precision == "fp16":
        # Dynamic loss scaling: start at 2^16, halve on overflow (that update is skipped), grow after 1000 clean ones.
        for k, v in {"loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000, "hysteresis": 2,
                     "min_loss_scale": 1}.items():
            ds["fp16"].setdefault(k, v)


def ds_precision(ds_config: dict[str, Any]) -> str:
    """The precision a filled-in DeepSpeed config trains in: bf16, fp16 or fp32."""
    for key in ("bf16", "fp16"):
        if ds_config.get(key, {}).get("enabled"):
            return key
    return "fp32"
