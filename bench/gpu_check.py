"""One-GPU acceptance check: ``python bench/gpu_check.py [--compile] [--quick] [--out DIR]``.

Runs in a few minutes on one CUDA GPU with 80 GB or more (an 8-minute budget; ``--quick`` does fewer
steps). Each check prints a PASS/FAIL line; a failed check does not stop the next one, so one run yields
every figure. Every check runs under a watchdog (``--check-timeout``, default 300 s: faulthandler prints
every thread's stack and ends the run), and the JSON summary (``--out``, default ``$OUT`` if set, else
``./gpu_check_out``) is written before and after every check (``running`` names the check in progress,
``complete`` is false until the end). After each check its DeepSpeed engines are destroyed (their hooks
would keep the models alive) and the GPU memory still allocated is printed. Exit code: 0 when every
check passed, 1 otherwise, 2 without a CUDA GPU (or on bad arguments).

Checks, in order:

* ``preflight``: the GPU (name, memory, SMs; nvidia-smi's power limit and whether it is capped), torch,
  CUDA, cuDNN and DeepSpeed versions; with ``--compile`` (inductor) a C compiler and ``Python.h``.
* ``distributed``: the process group with a ``--pg-timeout`` of 180 s (DeepSpeed's default 10 minutes
  outlasts the check), then ``pretrain.distributed.init_distributed``; a 1-element ``all_reduce``.
* ``sdpa``: forward+backward of ``scaled_dot_product_attention`` at the 1B model's micro-batch shape with
  each of the cuDNN, flash and memory-efficient backends, compared with the math backend; the fastest
  correct one (cuDNN first on ties) is used by the throughput checks and recorded.
* ``throughput:<model>`` for two models (ZeRO-2, bf16, the chosen SDPA backend, seed-identical weights,
  the same random batches), at 4 micro-batches per optimizer update (``--accum``) so that ZeRO's
  bookkeeping, the clip and the AdamW step are amortized as in training: a ~1B GPT (d_model 2048, 16
  layers, RoPE, SwiGLU, seq 2048, micro-batch 4) and Phi-3-mini with 4 of its 32 layers (seq 4096).
  *ours* is the step ``pretrain/main.py`` trains with; it is timed alone first for the peak GPU memory
  (shown beside ``pretrain.plan``'s figure), then interleaved (ABBA rounds) against
  ``bench/train_throughput.py``'s bare PyTorch loop. Figures: tokens/s and MFU of ours, peak memory,
  ours/bare step-time ratio. It fails on a non-finite loss or when ours and bare disagree on the first loss.
* ``mfu-floor``: the 1B model's eager MFU is at least ``--mfu-floor`` (default 0.28).
* ``throughput:gpt-1b+compile`` and ``mfu-floor:compiled`` (with ``--compile``): the same 1B step compiled
  (``train.compile``); its first loss matches the eager one; its MFU is at least ``--mfu-floor-compiled``
  (default 0.38).
* ``zero3-ckpt:phi3-mini-4l``: the Phi-3 config's path, ZeRO-3 (``ds_configs/zero3.json``) with activation
  checkpointing; tokens/s, MFU and peak memory against the plan's, under no floor.
* ``throughput:mup-alibi``: a muP model with ALiBi (``mup-617m``; PyTorch picks the SDPA backend, flash
  cannot take ALiBi's bias); under no floor.
* ``checkpoint``: ``pretrain.checkpoint.CheckpointSaver`` saves a 150M model's engine after two steps; its
  files verify; a differently initialized engine loads it and then has exactly the saved weights, fp32
  master weights and Adam moments.

``--cpu-smoke`` runs the same flow on CPU (gloo, fp32, the ``tiny`` preset at seq 64, 2 micro-batches per
update, 3 timed updates, no MFU floor) to exercise the code path without a GPU. The CPU-side logic
(arguments, shapes, the plan, MFU arithmetic, the SDPA pick, the verdict, the summary) is in pure functions
that ``tests/test_gpu_check.py`` tests without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))  # before bench/ (the script's own directory): bench/data_prep.py would shadow data_prep

EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 2
NO_CUDA_MESSAGE = ("gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False); "
                   "--cpu-smoke runs the same flow on CPU with a tiny model")
MAIN_MODEL = "gpt-1b"
DS_JSON = REPO / "ds_configs" / "zero2.json"
ZERO3_JSON = REPO / "ds_configs" / "zero3.json"
FIRST_LOSS_RTOL = {"bf16": 2e-2, "fp32": 1e-4}  # ours vs bare on the first step (bf16: autocast rounds differently)
COMPILE_RTOL = {"bf16": 2e-2, "fp32": 1e-3}  # compiled vs eager losses


# ---- arguments and the plan (pure) ----------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mfu-floor", type=float, default=0.28, help="fail when the 1B model's eager MFU is below this")
    p.add_argument("--mfu-floor-compiled", type=float, default=0.38,
                   help="with --compile: fail when the 1B model's compiled MFU is below this")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per side per model (interleaved rounds of one step); default 20, --quick 6, --cpu-smoke 3")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side first; default 3, --quick 2, --cpu-smoke 1")
    p.add_argument("--compile", action="store_true", help="also check torch.compile (compiled step vs eager)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    p.add_argument("--out", default=None, help="where the JSON summary goes (default: $OUT if set, else ./gpu_check_out)")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke test of the GPU path)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for MFU (default: the GPU table)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per micro-batch for both throughput models (default: 4 for the 1B at seq 2048, 2 for Phi-3 at 4096)")
    p.add_argument("--accum", type=int, default=None,
                   help="micro-batches per optimizer update (default 4; --cpu-smoke 2): ZeRO's bookkeeping, the clip and "
                        "the AdamW step are amortized over them as in training")
    p.add_argument("--check-timeout", type=float, default=300.0,
                   help="seconds one check may take before the watchdog dumps every thread's stack and ends the run "
                        "(the summary so far is already written)")
    p.add_argument("--pg-timeout", type=float, default=180.0,
                   help="torch.distributed timeout in seconds (DeepSpeed's default, 10 minutes, outlasts the check)")
    p.add_argument("--models", default=f"{MAIN_MODEL},phi3-mini-4l", help="comma-separated throughput models")
    p.add_argument("--seed", type=int, default=1234, help="weights and batches seed")
    p.add_argument("--lr", type=float, default=3e-4, help="peak LR (a 10-step linear warmup scales it)")
    p.add_argument("--cpu-smoke", action="store_true", help="run the flow on CPU with the tiny preset (no GPU needed)")
    args = p.parse_args(argv)
    known = {s.name for s in model_specs(cpu_smoke=False)}
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or set(args.models) - known:
        p.error(f"--models: expected a comma-separated subset of {','.join(sorted(known))}")
    for name in ("steps", "micro_batch", "accum"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup is not None and args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step is the ours-vs-bare check)")
    for name in ("mfu_floor", "mfu_floor_compiled"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            p.error(f"--{name.replace('_', '-')} must be a finite number in [0, 1]")
    if args.peak_tflops is not None and not (math.isfinite(args.peak_tflops) and args.peak_tflops > 0):
        p.error("--peak-tflops must be a finite number > 0")
    for name in ("check_timeout", "pg_timeout"):
        value = getattr(args, name)
        if not (math.isfinite(value) and 10 <= value <= 3600):
            p.error(f"--{name.replace('_', '-')} must be a finite number of seconds in [10, 3600]")
    return args


def out_dir(arg: str | None, env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(arg or env.get("OUT") or "gpu_check_out")


def precheck(cuda_available: bool, cpu_smoke: bool) -> tuple[int, str] | None:
    """(exit code, message) when the check cannot run here, else None."""
    if cpu_smoke or cuda_available:
        return None
    return EXIT_NO_CUDA, NO_CUDA_MESSAGE


@dataclass
class ModelSpec:
    name: str
    gpt: Any  # GPTConfig
    seq_len: int
    micro_batch: int
    note: str = ""
    accum: int = 1  # micro-batches per optimizer update

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer update (all its micro-batches)."""
        return self.seq_len * self.micro_batch * self.accum

    @property
    def flops_per_step(self) -> float:
        return self.gpt.flops_per_token(self.seq_len) * self.tokens_per_step

    def describe(self) -> str:
        g = self.gpt
        return (f"{human_count(g.num_params())} params: d_model {g.d_model}, {g.n_layers} layers, {g.n_heads} heads "
                f"(head_dim {g.head_dim}), d_ff {g.ffn_dim}, vocab {g.vocab_size}, {g.pos}"
                f"{', muP' if g.mup is not None else ''}{', activation checkpointing' if g.activation_checkpointing else ''}"
                f"; seq {self.seq_len} x micro-batch {self.micro_batch} x accum {self.accum} = {self.tokens_per_step} "
                "tokens/update")


def model_specs(cpu_smoke: bool = False, micro_batch: int | None = None, accum: int | None = None) -> list[ModelSpec]:
    """The throughput models: a ~1B GPT and a 4-layer Phi-3-mini (both: the tiny preset in the smoke run)."""
    from pretrain.model.config import GPTConfig
    from pretrain.model.presets import get_preset

    if cpu_smoke:
        specs = []
        for name in (MAIN_MODEL, "phi3-mini-4l"):
            g = get_preset("tiny")
            g.vocab_size, g.max_seq_len = 512, 64
            specs.append(ModelSpec(name, g, 64, micro_batch or 2, "cpu smoke: the tiny preset", accum or 2))
        return specs
    # Llama-style ~1B (RoPE, so flash attention applies; ALiBi's additive bias would rule it out, as in mup-1.7b).
    gpt1b = GPTConfig(vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, d_ff=5632, max_seq_len=2048,
                      norm="rmsnorm", pos="rope", mlp="swiglu", tie_embeddings=False, bias=False)
    phi3 = get_preset("phi3-mini")
    phi3.n_layers = 4
    return [ModelSpec(MAIN_MODEL, gpt1b, 2048, micro_batch or 4, "Llama-style, untied embeddings", accum or 4),
            ModelSpec("phi3-mini-4l", phi3, 4096, micro_batch or 2, "preset phi3-mini with 4 of its 32 layers", accum or 4)]


def zero3_spec(cpu_smoke: bool = False, accum: int | None = None) -> ModelSpec:
    """The Phi-3 config's path: ZeRO-3 (ds_configs/zero3.json) with activation checkpointing, on the 4-layer Phi-3."""
    spec = copy.deepcopy(model_specs(cpu_smoke, accum=accum)[1])
    spec.gpt.activation_checkpointing = True
    spec.name, spec.note = "phi3-mini-4l", spec.note + "; ZeRO-3 + activation checkpointing"
    return spec


def mup_alibi_spec(cpu_smoke: bool = False, accum: int | None = None) -> ModelSpec:
    """A muP model with ALiBi (the D2Z family, mup-617m): no flash kernel (its additive bias), not under a floor."""
    from pretrain.model.config import MuPConfig
    from pretrain.model.presets import get_preset

    if cpu_smoke:
        g = get_preset("tiny")
        g.vocab_size, g.max_seq_len, g.pos, g.mup = 512, 64, "alibi", MuPConfig(base_width=32)
        return ModelSpec("mup-alibi", g, 64, 2, "cpu smoke: the tiny preset with ALiBi and muP", accum or 2)
    return ModelSpec("mup-alibi", get_preset("mup-617m"), 2048, 4, "preset mup-617m (ALiBi, muP, tied)", accum or 4)


def aux_spec(cpu_smoke: bool = False) -> ModelSpec:
    """The model of the compile and checkpoint checks: the 1B family at 150M (cheap to compile and save)."""
    from pretrain.model.config import GPTConfig

    if cpu_smoke:
        return model_specs(cpu_smoke=True)[0]
    g = GPTConfig(vocab_size=50304, d_model=1024, n_layers=4, n_heads=8, max_seq_len=1024, norm="rmsnorm",
                  pos="rope", mlp="swiglu", tie_embeddings=False, bias=False)
    return ModelSpec("gpt-150m", g, 1024, 4, "the 1B family, 4 layers of d_model 1024")


@dataclass
class Plan:
    device: str  # "cuda" or "cpu"
    precision: str  # "bf16" or "fp32"
    backend: str  # the torch.distributed backend expected
    flash: bool  # force the flash SDPA backend in the throughput steps
    warmup: int
    steps: int
    threads: int  # init_distributed's threads (0: plan_threads)
    apply_mfu_floor: bool
    models: list[ModelSpec]
    aux: ModelSpec
    checks: list[str]
    zero3: ModelSpec | None = None
    mup: ModelSpec | None = None


def make_plan(args) -> Plan:
    smoke = args.cpu_smoke
    warmup = args.warmup or (1 if smoke else 2 if args.quick else 3)
    steps = args.steps or (3 if smoke else 6 if args.quick else 20)
    models = [s for s in model_specs(smoke, args.micro_batch, args.accum) if s.name in args.models]
    checks = ["preflight", "distributed", "sdpa"] + [f"throughput:{s.name}" for s in models] + ["mfu-floor"]
    if args.compile:
        checks += [f"throughput:{MAIN_MODEL}+compile", "mfu-floor:compiled"]
    checks += ["zero3-ckpt:phi3-mini-4l", "throughput:mup-alibi", "checkpoint"]
    return Plan(device="cpu" if smoke else "cuda", precision="fp32" if smoke else "bf16",
                backend="gloo" if smoke else "nccl", flash=True, warmup=warmup, steps=steps,
                threads=1 if smoke else 0, apply_mfu_floor=not smoke, models=models, aux=aux_spec(smoke),
                checks=checks, zero3=zero3_spec(smoke, args.accum), mup=mup_alibi_spec(smoke, args.accum))


def ds_config(precision: str, micro_batch: int, grad_clip: float = 1.0, optimizer_name: str = "adamw",
              path: Path = DS_JSON, accum: int = 1) -> dict:
    """ds_configs/zero2.json (or ``path``) with the batch keys and the precision block, filled by pretrain.run_config's code."""
    from pretrain.config_loader import Problems, Sources
    from pretrain.data import DataConfig
    from pretrain.hardware import PrecisionChoice
    from pretrain.optim import OptimizerConfig
    from pretrain.run_config import DeepSpeedSection, RunConfig, TrainConfig, deepspeed_config

    cfg = RunConfig(name="gpu_check", data=DataConfig(path="unused"),
                    train=TrainConfig(micro_batch_size=micro_batch, global_batch_size=micro_batch * accum, grad_accum=accum,
                                      max_steps=1000, precision=precision),
                    optimizer=OptimizerConfig(name=optimizer_name, grad_clip=grad_clip),
                    deepspeed=DeepSpeedSection(config=str(path)))
    problems = Problems(Sources("bench/gpu_check.py"))
    ds = deepspeed_config(cfg, PrecisionChoice(precision, "gpu_check"), problems)
    problems.raise_if_any()
    return ds


# ---- results, verdict, summary (pure) -------------------------------------------------------

@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def mfu(flops_per_step: float, step_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak; None without a peak."""
    if not peak_flops or not step_s > 0:
        return None
    return flops_per_step / step_s / peak_flops


def floor_check(results: list[CheckResult], floor: float, model: str = MAIN_MODEL, compiled: bool = False) -> CheckResult:
    """PASS when ``throughput:<model>`` (``+compile`` with ``compiled``) ran and its MFU is at least ``floor``."""
    check, name = (f"throughput:{model}+compile", "mfu-floor:compiled") if compiled else (f"throughput:{model}", "mfu-floor")
    what = f"{model}{' compiled' if compiled else ' eager'}"
    r = next((r for r in results if r.name == check), None)
    if r is None or not r.ok:
        return CheckResult(name, False, f"{what} was not measured" + (" (its check failed)" if r else ""))
    value = r.figures.get("mfu")
    if value is None:
        return CheckResult(name, False, f"{what}: no MFU (the GPU is not in the peak table; give --peak-tflops)")
    ok = value >= floor
    return CheckResult(name, ok, f"{what} MFU {value:.1%} {'>=' if ok else '<'} floor {floor:.0%}",
                       {"mfu": value, "floor": floor})


def verdict(results: list[CheckResult], mfu_floor: float, apply_floor: bool = True,
            mfu_floor_compiled: float | None = None) -> tuple[int, list[CheckResult]]:
    """(exit code, the results with the MFU-floor checks added when they apply).

    The eager floor follows the last eager throughput check; the compiled floor (when ``mfu_floor_compiled`` is
    given, i.e. with --compile) follows the compiled one."""
    results = [r for r in results if not r.name.startswith("mfu-floor")]
    if apply_floor:
        at = max((i + 1 for i, r in enumerate(results) if r.name.startswith("throughput:") and "+compile" not in r.name
                  and r.name != "throughput:mup-alibi"), default=len(results))
        results.insert(at, floor_check(results, mfu_floor))
        if mfu_floor_compiled is not None:
            at = next((i + 1 for i, r in enumerate(results) if r.name.endswith("+compile")), at + 1)
            results.insert(at, floor_check(results, mfu_floor_compiled, compiled=True))
    return (EXIT_OK if results and all(r.ok for r in results) else EXIT_FAILED), results


def _fmt(value, spec: str) -> str:
    """``value`` formatted by ``spec``, or a dash as wide (for a missing figure)."""
    if value is None:
        width = "".join(c for c in spec.split(".")[0] if c.isdigit())
        return "-".rjust(int(width) if width else 1)
    return format(value, spec)


def human_count(n: float) -> str:
    """1.03e9 -> '1.03B', 1.72e5 -> '172K'."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:g}"


def format_summary(results: list[CheckResult], meta: dict, code: int) -> str:
    head = (f"{'check':26} {'result':6} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>8} {'ours/bare':>9} {'(rounds)':>13} "
            f"{'time s':>7}")
    lines = [f"gpu_check summary: {meta.get('device', '?')}, {meta.get('precision', '?')}, {meta.get('peak', '?')}",
             head, "-" * len(head)]
    for r in results:
        f = r.figures
        rounds = f"({f['ratio_min']:.3f}..{f['ratio_max']:.3f})" if "ratio_min" in f else "-"
        lines.append(f"{r.name:26} {'PASS' if r.ok else 'FAIL':6} {_fmt(f.get('tokens_per_s'), '10.0f')} "
                     f"{_fmt(f.get('mfu'), '6.1%')} {_fmt(f.get('peak_mem_gib'), '8.2f')} "
                     f"{_fmt(f.get('ours_over_bare'), '9.3f')} {rounds:>13} {r.seconds:7.1f}")
    lines.append("-" * len(head))
    failed = [r for r in results if not r.ok]
    lines += [f"  FAIL {r.name}: {r.detail}" for r in failed]
    lines.append(f"{len(results) - len(failed)}/{len(results)} checks passed; exit code {code}")
    return "\n".join(lines)


def summary_dict(results: list[CheckResult], meta: dict, code: int | None, running: str | None = None) -> dict:
    """The JSON summary; written after every check (``complete`` false, ``running`` the next check) and at the end."""
    return {"exit_code": code, "passed": code == EXIT_OK, "complete": code is not None, "running": running,
            "meta": meta, "checks": [asdict(r) for r in results]}


def write_summary(path: Path, summary: dict) -> None:
    """Atomically (a temporary name, then rename): a watchdog exit never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    os.replace(tmp, path)


def parse_nvidia_smi(text: str) -> dict:
    """``nvidia-smi --query-gpu=name,memory.total,power.limit,power.max_limit,clocks.max.sm,driver_version
    --format=csv,noheader,nounits``, first GPU -> figures (numbers as floats; '[N/A]' as None)."""
    keys = ("name", "memory_total_mib", "power_limit_w", "power_max_limit_w", "sm_clock_max_mhz", "driver")
    line = next((l for l in text.splitlines() if l.strip()), "")
    values = [v.strip() for v in line.split(",")]
    if len(values) != len(keys):
        return {}
    out: dict = {}
    for k, v in zip(keys, values, strict=True):
        if k in ("name", "driver"):
            out[k] = v
            continue
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = None
    return out


# ---- running a check ------------------------------------------------------------------------

class CheckFailed(Exception):
    """A check's condition does not hold (the message says which)."""


def run_check(name: str, fn: Callable[[], tuple[str, dict]], cleanup: Callable[[], dict | None] = lambda: None,
              watchdog_s: float | None = None) -> CheckResult:
    """Run ``fn`` (returns detail, figures); an exception makes a FAIL result. Prints the PASS/FAIL line.

    ``cleanup`` runs after it either way; a dict it returns joins the figures. ``watchdog_s``: past that many
    seconds, faulthandler prints every thread's stack and ends the process (exit code 1)."""
    import faulthandler

    t0 = time.perf_counter()
    if watchdog_s:
        try:
            sys.stderr.fileno()
            out = sys.stderr
        except (AttributeError, OSError, ValueError):  # a captured stream (pytest): the process's own stderr
            out = sys.__stderr__
        faulthandler.dump_traceback_later(watchdog_s, exit=True, file=out)
    after = None
    try:
        detail, figures = fn()
        result = CheckResult(name, True, detail, figures)
    except Exception as e:  # noqa: BLE001 - every failure becomes a FAIL line, and the next check runs
        if not isinstance(e, CheckFailed):
            traceback.print_exc(limit=-4, file=sys.stderr)
        what = "failed" if isinstance(e, CheckFailed) else type(e).__name__
        result = CheckResult(name, False, f"{what}: {e}".split("\n")[0][:500], dict(getattr(e, "figures", {})))
        del e
    finally:
        if watchdog_s:
            faulthandler.cancel_dump_traceback_later()
        after = cleanup()
    if isinstance(after, dict):
        result.figures.update(after)
    result.seconds = time.perf_counter() - t0
    print(result.line(), flush=True)
    return result


# ---- the checks (need torch, DeepSpeed, and on GPU a GPU) ----------------------------------

class Context:
    def __init__(self, args, plan: Plan):
        import torch

        self.args, self.plan, self.torch = args, plan, torch
        self.dist = None  # set by the distributed check
        self.sdpa_backend = None  # the fastest correct SDPA backend (the sdpa check), else PyTorch's choice
        self.sdpa_name = "default"
        self.engines: list = []  # destroyed after each check
        self.eager_losses: dict[str, list[float]] = {}
        self.peak: float | None = None
        self.peak_why = ""

    @property
    def device(self) -> str:
        if self.dist is None:
            raise CheckFailed("needs torch.distributed and a device (the distributed check failed)")
        return self.dist.device

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def cleanup(self) -> dict | None:
        """Destroy the check's engines (DeepSpeed's hooks would keep their models alive), collect, and report the
        GPU memory still allocated (it should be ~0: what one check leaves, the next one's peak measures)."""
        destroyed = 0
        for engine in self.engines:
            try:
                engine.destroy()
                destroyed += 1
            except Exception as e:  # noqa: BLE001 - a failed destroy is reported, the next check still runs
                print(f"  engine.destroy() failed: {type(e).__name__}: {e}", file=sys.stderr)
        self.engines.clear()
        gc.collect()
        if self.dist is None:
            return None
        figures: dict = {"engines_destroyed": destroyed}
        if self.cuda:
            self.torch.cuda.empty_cache()
            figures["allocated_after_gib"] = self.torch.cuda.memory_allocated() / 2**30
            print(f"  after destroying {destroyed} engine(s): {figures['allocated_after_gib']:.2f} GiB still allocated",
                  flush=True)
        return figures

    def schedule(self, step: int) -> float:
        return min(1.0, (step + 1) / 10)

    def sdpa(self):
        if self.sdpa_backend is None:
            return contextlib.nullcontext()
        from torch.nn.attention import sdpa_kernel

        return sdpa_kernel([self.sdpa_backend])

    def build(self, spec: ModelSpec, seed: int):
        self.torch.manual_seed(seed)
        with self.torch.device(self.device):  # main.py builds on the CPU and moves it; on the GPU is faster
            return spec.gpt.build()

    def batches(self, spec: ModelSpec, updates: int = 2) -> list:
        """``updates`` optimizer updates' worth of micro-batches (``spec.accum`` each), the same for every side."""
        n = max(8, updates * spec.accum)
        gen = self.torch.Generator().manual_seed(self.args.seed + 1)
        shape = (spec.micro_batch, spec.seq_len + 1)
        return [self.torch.randint(0, spec.gpt.vocab_size, shape, generator=gen).to(self.device) for _ in range(n)]

    def make_ours(self, model, spec: ModelSpec, compile_backend: str | None = None, ds_path: Path = DS_JSON):
        """(train_throughput.Side, engine): main.py's optimizer, engine and step on ``model``."""
        from bench.train_throughput import Side
        from pretrain.optim import OptimizerConfig, set_lr
        from pretrain.trainer import build_engine
        from pretrain.training.step import train_step

        opt_cfg = OptimizerConfig(lr=self.args.lr)
        if compile_backend:
            model.compile(backend=compile_backend)  # in place, as build_engine does for train.compile
        ds = ds_config(self.plan.precision, spec.micro_batch, opt_cfg.grad_clip, path=ds_path, accum=spec.accum)
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                engine = build_engine(model, opt_cfg, ds, self.device)
        except BaseException:
            sys.stdout.write(chatter.getvalue())
            raise
        self.engines.append(engine)
        device, z_loss = self.device, spec.gpt.z_loss

        def step(micro_batches, global_step):
            set_lr(engine.optimizer, self.schedule(global_step))
            out = train_step(engine, micro_batches, spec.seq_len, device, z_loss)
            # The step keeps its figures on the device (a 0-d tensor, or a float): read them here (the timing
            # synchronizes after every update anyway).
            norm = out.grad_norm
            return float(out.loss), float(norm) if norm is not None else float("nan")

        stage = ds["zero_optimization"]["stage"]
        return Side("ours", f"DeepSpeed ZeRO-{stage} {self.plan.precision}", step), engine

    def with_sdpa(self, side):
        inner = side.step

        def step(micro_batches, global_step):
            with self.sdpa():
                return inner(micro_batches, global_step)

        side.step = step
        return side


def micro_batches(batches: list, step_no: int, accum: int) -> list:
    """The micro-batches of update ``step_no``, as bench/train_throughput.py's run_rounds hands them out."""
    j = step_no % max(1, len(batches) // accum)
    return batches[j * accum:(j + 1) * accum]


def warm_up(side, batches: list, n: int, sync, accum: int = 1) -> list[float]:
    """``n`` untimed updates of ``side`` (``accum`` micro-batches each) on the batches run_rounds would give it;
    returns their times."""
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        loss, norm = side.step(micro_batches(batches, side.step_no, accum), side.step_no)
        sync()
        times.append(time.perf_counter() - t0)
        side.step_no += 1
        side.losses.append(loss)
        side.norms.append(norm)
    return times


def check_preflight(ctx: Context) -> tuple[str, dict]:
    """The GPU, its memory and power limit, the software versions; with --compile (inductor), a C compiler and Python.h."""
    import platform
    import subprocess
    import sysconfig

    import deepspeed
    import torch

    f: dict = {"torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__,
               "python": platform.python_version()}
    gpu = "no GPU (cpu smoke)"
    if ctx.plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        f.update(gpu=props.name, memory_gib=props.total_memory / 2**30, capability=f"{props.major}.{props.minor}",
                 sm_count=props.multi_processor_count, cudnn=torch.backends.cudnn.version())
        gpu = f"{props.name} ({props.total_memory / 2**30:.1f} GiB, sm_{props.major}{props.minor}, {props.multi_processor_count} SMs)"
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,power.limit,power.max_limit,"
                                      "clocks.max.sm,driver_version", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=20).stdout
                f["nvidia_smi"] = parse_nvidia_smi(out)
            except (OSError, subprocess.SubprocessError) as e:
                f["nvidia_smi"] = {"error": str(e)}
        smi = f.get("nvidia_smi") or {}
        if smi.get("power_limit_w"):
            gpu += f", power limit {smi['power_limit_w']:.0f} W"
            if smi.get("power_max_limit_w") and smi["power_limit_w"] < 0.95 * smi["power_max_limit_w"]:
                gpu += f" (of {smi['power_max_limit_w']:.0f} W: capped, MFU will be lower)"
    compiler = ""
    if ctx.args.compile and ctx.args.compile_backend == "inductor":
        cc = next((shutil.which(c) for c in (os.environ.get("CC", ""), "cc", "gcc", "clang") if c and shutil.which(c)), None)
        header = Path(sysconfig.get_paths()["include"]) / "Python.h"
        f.update(compiler=cc, python_h=str(header) if header.is_file() else None)
        if cc is None or not header.is_file():
            raise _failed(f"--compile (inductor) needs a C compiler and Python.h: compiler {cc or 'not found'}, "
                          f"{header} {'found' if header.is_file() else 'missing (install python3-dev)'}", f)
        compiler = f"; compiler {cc}, {header}"
    return (f"{gpu}; torch {f['torch']} (CUDA {f['cuda']}), deepspeed {f['deepspeed']}, Python {f['python']}"
            f"{compiler}"), f


def check_distributed(ctx: Context) -> tuple[str, dict]:
    import datetime

    import torch
    import torch.distributed as tdist

    from pretrain.distributed import init_distributed, select_accelerator, world_from_env

    # The process group first, with the check's own timeout (DeepSpeed's default, 10 minutes, outlasts the check);
    # init_distributed then finds it initialized and keeps it.
    _, _, local_rank, _ = world_from_env()
    select_accelerator()
    import deepspeed

    if ctx.plan.device == "cuda":
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend=ctx.plan.backend, timeout=datetime.timedelta(seconds=ctx.args.pg_timeout),
                               verbose=False)
    ctx.dist = init_distributed(ctx.plan.threads)
    backend = tdist.get_backend()
    if backend != ctx.plan.backend or ctx.dist.backend != ctx.plan.backend:
        raise CheckFailed(f"torch.distributed uses {backend} (init_distributed said {ctx.dist.backend}), "
                          f"expected {ctx.plan.backend}")
    t = torch.tensor([3.0], device=ctx.dist.device)
    tdist.all_reduce(t)
    ctx.sync()
    world = tdist.get_world_size()
    if t.item() != 3.0 * world:
        raise CheckFailed(f"all_reduce of [3.0] over {world} rank(s) gave {t.item()}")
    return (f"backend {backend}, world size {world}, device {ctx.dist.device}, 1-element all_reduce ok, "
            f"process-group timeout {ctx.args.pg_timeout:g} s, {torch.get_num_threads()} CPU thread(s)"), \
        {"backend": backend, "world_size": world, "pg_timeout_s": ctx.args.pg_timeout}


SDPA_CANDIDATES = ("cudnn", "flash", "efficient")  # in order of preference at equal speed (cuDNN first on sm90)


def pick_sdpa(timings: dict[str, float | None], correct: dict[str, bool]) -> str | None:
    """The fastest backend that ran and agreed with the math backend; ties go to the earlier in SDPA_CANDIDATES."""
    ok = [(timings[n], SDPA_CANDIDATES.index(n), n) for n in SDPA_CANDIDATES
          if timings.get(n) is not None and correct.get(n)]
    return min(ok)[2] if ok else None


def check_sdpa(ctx: Context, reps: int = 5) -> tuple[str, dict]:
    """Time SDPA forward+backward per backend at the 1B model's micro-batch shape; keep the fastest that agrees with math."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    spec = ctx.plan.models[0] if ctx.plan.models else ctx.plan.aux
    g, seq = spec.gpt, spec.seq_len
    dtype = torch.bfloat16 if ctx.plan.precision == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    shape = (spec.micro_batch, g.n_heads, seq, g.head_dim)
    qkv = [torch.randn(*shape, generator=gen).to(ctx.device, dtype).requires_grad_() for _ in range(3)]
    backends = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}

    def run(backend):
        for t in qkv:
            t.grad = None
        with sdpa_kernel([backend]):
            y = F.scaled_dot_product_attention(*qkv, is_causal=True, scale=g.multipliers()[2])
            y.float().square().mean().backward()
        return y.detach().float(), qkv[0].grad.detach().float()

    ref = run(backends["math"])
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    timings: dict[str, float | None] = {}
    correct: dict[str, bool] = {}
    diffs: dict[str, Any] = {}
    for name in SDPA_CANDIDATES:
        try:
            out = run(backends[name])
        except RuntimeError as e:  # "No available kernel": not on this device, dtype or shape
            timings[name], diffs[name] = None, f"unavailable: {str(e).splitlines()[0][:120]}"
            continue
        dy = (out[0] - ref[0]).abs().max().item()
        dg = ((out[1] - ref[1]).abs().max() / ref[1].abs().max().clamp_min(1e-12)).item()
        correct[name] = dy <= tol and dg <= tol * 5
        diffs[name] = {"out_max_diff": dy, "dq_rel_diff": dg}
        ctx.sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            run(backends[name])
        ctx.sync()
        timings[name] = (time.perf_counter() - t0) / reps
    chosen = pick_sdpa(timings, correct)
    figures = {"shape": list(shape), "timings_ms": {k: (v * 1e3 if v is not None else None) for k, v in timings.items()},
               "correct": correct, "diffs": diffs, "chosen": chosen}
    if chosen is None:
        raise _failed(f"no fused SDPA backend ran and agreed with math at {list(shape)}: {diffs}", figures)
    ctx.sdpa_backend, ctx.sdpa_name = backends[chosen], chosen
    shown = ", ".join(f"{k} {v * 1e3:.2f} ms{'' if correct.get(k) else ' (WRONG)'}" if v is not None else f"{k} n/a"
                      for k, v in timings.items())
    return f"fwd+bwd at {list(shape)} {str(dtype)[6:]}, causal: {shown}; using {chosen}", figures


def planned_peak_gib(ctx: Context, spec: ModelSpec, ds_path: Path) -> float | None:
    """pretrain.plan's allocated peak for this step on one device (None when it cannot say), to compare with the measure."""
    try:
        from pretrain.config_loader import to_dict
        from pretrain.plan import GPUS, plan_memory
        from pretrain.run_config import run_config_from_dict

        cfg = run_config_from_dict({
            "name": "gpu_check", "data": {"path": "unused", "seq_len": spec.seq_len}, "model": to_dict(spec.gpt),
            "train": {"micro_batch_size": spec.micro_batch, "global_batch_size": spec.micro_batch * spec.accum,
                      "grad_accum": spec.accum, "max_steps": 1000, "precision": ctx.plan.precision},
            "deepspeed": {"config": str(ds_path)}})
        gpu = "cpu"
        if ctx.cuda:
            name = ctx.torch.cuda.get_device_name(0)
            mem = ctx.torch.cuda.get_device_properties(0).total_memory / 2**30
            gpu = next((k for k in GPUS if k.split("-")[0] in name and (("-" not in k) or abs(GPUS[k].memory / 2**30 - mem) < 8)), "")
            if not gpu:
                return None
        return plan_memory(cfg, 1, gpu, suggest=False).allocated_peak / 2**30
    except Exception:  # noqa: BLE001 - the plan is a comparison figure, never a failure
        return None


def check_throughput(ctx: Context, spec: ModelSpec) -> tuple[str, dict]:
    import torch

    from bench.train_throughput import PhaseTimer, Setup, make_bare, run_rounds

    plan, sync, device = ctx.plan, ctx.sync, ctx.device
    model = ctx.build(spec, ctx.args.seed)
    bare_model = copy.deepcopy(model).to("cpu")  # identical weights, off the GPU while ours' memory is measured
    ctx.cleanup()
    ours, engine = ctx.make_ours(model, spec)
    del model, engine  # the side's step and ctx.engines hold the engine
    batches = ctx.batches(spec)
    ctx.with_sdpa(ours)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    warm_ours = warm_up(ours, batches, plan.warmup, sync, spec.accum)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None
    bare_model.to(device)
    timer = PhaseTimer(sync)
    setup = Setup(spec.name, spec.gpt, spec.seq_len, spec.micro_batch, spec.accum, 0, plan.steps, 1,
                  torch.get_num_threads())
    hp = SimpleNamespace(lr=ctx.args.lr, grad_clip=1.0, breakdown=False)
    bare = ctx.with_sdpa(make_bare(bare_model, hp, "autocast" if plan.precision == "bf16" else "fp32", setup, device,
                                   ctx.schedule, timer))
    del bare_model
    warm_up(bare, batches, plan.warmup, sync, spec.accum)
    run_rounds([ours, bare], batches, setup, sync, timer, False, 0.25)
    ours.step = bare.step = None
    ctx.eager_losses[spec.name] = list(ours.losses)
    t_ours, t_bare = statistics.median(ours.times), statistics.median(bare.times)
    ratios = [o / b for o, b in zip(ours.times, bare.times, strict=True)]
    value = mfu(spec.flops_per_step, t_ours, ctx.peak)
    figures = {
        "model": spec.describe(), "params": spec.gpt.num_params(), "tokens_per_step": spec.tokens_per_step,
        "micro_batches_per_update": spec.accum,
        "step_ms": t_ours * 1e3, "bare_step_ms": t_bare * 1e3, "tokens_per_s": spec.tokens_per_step / t_ours,
        "tflops": spec.flops_per_step / t_ours / 1e12, "mfu": value, "peak_mem_gib": peak_mem,
        "planned_peak_gib": planned_peak_gib(ctx, spec, DS_JSON),
        "ours_over_bare": t_ours / t_bare, "ratio_min": min(ratios), "ratio_max": max(ratios),
        "first_step_s": warm_ours[0], "losses_ours": ours.losses, "losses_bare": bare.losses,
        "sdpa": ctx.sdpa_name,
    }
    rel = abs(ours.losses[0] - bare.losses[0]) / abs(bare.losses[0])
    figures["first_loss_rel_diff"] = rel
    if not all(math.isfinite(x) for x in ours.losses + bare.losses):
        raise _failed(f"non-finite loss: ours {ours.losses}, bare {bare.losses}", figures)
    if rel > FIRST_LOSS_RTOL[plan.precision]:
        raise _failed(f"ours and bare disagree on the first loss: {ours.losses[0]:.5f} vs {bare.losses[0]:.5f}", figures)
    mem = f", peak {peak_mem:.1f} GiB" if peak_mem is not None else ""
    if peak_mem is not None and figures["planned_peak_gib"] is not None:
        mem += f" (planned {figures['planned_peak_gib']:.1f})"
    m = f", MFU {value:.1%}" if value is not None else ""
    return (f"{spec.describe()}; ours {t_ours * 1e3:.1f} ms/update, {figures['tokens_per_s']:,.0f} tokens/s, "
            f"{figures['tflops']:.3g} TFLOP/s{m}{mem}; ours/bare {t_ours / t_bare:.3f} "
            f"(rounds {min(ratios):.3f}..{max(ratios):.3f}), {figures['sdpa']} SDPA"), figures


def _failed(message: str, figures: dict) -> CheckFailed:
    e = CheckFailed(message)
    e.figures = figures
    return e


def check_ours(ctx: Context, spec: ModelSpec, ds_path: Path = DS_JSON, compile_backend: str | None = None,
               use_sdpa: bool = True, steps: int | None = None, warmup: int | None = None) -> tuple[str, dict]:
    """Our step alone on ``spec`` (no bare twin): warm-up updates (the compilation, with ``compile_backend``), then
    timed ones; tokens/s, MFU, peak memory against the plan's. With ``compile_backend`` its first loss must match
    the eager throughput check's (the same weights and batch)."""
    import torch

    sync = ctx.sync
    side, engine = ctx.make_ours(ctx.build(spec, ctx.args.seed), spec, compile_backend=compile_backend, ds_path=ds_path)
    del engine
    if use_sdpa:
        ctx.with_sdpa(side)
    batches = ctx.batches(spec)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    warm = warm_up(side, batches, warmup or ctx.plan.warmup, sync, spec.accum)
    times = warm_up(side, batches, steps or ctx.plan.steps, sync, spec.accum)
    side.step = None
    t = statistics.median(times)
    value = mfu(spec.flops_per_step, t, ctx.peak)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None
    stage = json.loads(Path(ds_path).read_text())["zero_optimization"]["stage"]
    figures = {"model": spec.describe(), "params": spec.gpt.num_params(), "tokens_per_step": spec.tokens_per_step,
               "micro_batches_per_update": spec.accum, "zero_stage": stage, "step_ms": t * 1e3,
               "tokens_per_s": spec.tokens_per_step / t, "tflops": spec.flops_per_step / t / 1e12, "mfu": value,
               "peak_mem_gib": peak_mem, "planned_peak_gib": planned_peak_gib(ctx, spec, Path(ds_path)),
               "warmup_s": warm, "losses": side.losses, "sdpa": ctx.sdpa_name if use_sdpa else "default",
               "compile": compile_backend}
    if not all(math.isfinite(x) for x in side.losses):
        raise _failed(f"non-finite loss: {side.losses}", figures)
    note = ""
    if compile_backend:
        eager = ctx.eager_losses.get(spec.name)
        if not eager:
            raise _failed(f"no eager losses of {spec.name} to compare with (its throughput check did not run)", figures)
        rel = abs(side.losses[0] - eager[0]) / abs(eager[0])
        figures["first_loss_rel_diff_to_eager"] = rel
        if rel > COMPILE_RTOL[ctx.plan.precision]:
            raise _failed(f"compiled first loss {side.losses[0]:.5f} differs from eager {eager[0]:.5f} (rel {rel:.1e})",
                          figures)
        note = f"; first loss {rel:.1e} from eager's; compile + warm-up {sum(warm):.0f} s"
    mem = f", peak {peak_mem:.1f} GiB" if peak_mem is not None else ""
    if peak_mem is not None and figures["planned_peak_gib"] is not None:
        mem += f" (planned {figures['planned_peak_gib']:.1f})"
    m = f", MFU {value:.1%}" if value is not None else ""
    return (f"{spec.describe()}; ZeRO-{stage}{' ' + compile_backend if compile_backend else ''}: {t * 1e3:.1f} ms/update, "
            f"{figures['tokens_per_s']:,.0f} tokens/s{m}{mem}, {figures['sdpa']} SDPA{note}"), figures


def _engine_tensors(engine) -> dict[str, Any]:
    """Module weights, and the base optimizer's parameters (ZeRO's fp32 master partitions) and state."""
    out = {f"module.{k}": v for k, v in engine.module.state_dict().items()}
    base = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for gi, group in enumerate(base.param_groups):
        for pi, p in enumerate(group["params"]):
            out[f"master.{gi}.{pi}"] = p
            for key, value in base.state.get(p, {}).items():
                if hasattr(value, "shape"):
                    out[f"state.{gi}.{pi}.{key}"] = value
    return out


def _differing(a: dict, b: dict) -> list[str]:
    import torch

    if a.keys() != b.keys():
        return sorted(set(a) ^ set(b))
    return [k for k in a if not torch.equal(a[k].detach().cpu(), b[k].detach().cpu())]


def check_checkpoint(ctx: Context, spec: ModelSpec) -> tuple[str, dict]:
    from pretrain.checkpoint import CheckpointSaver
    from pretrain.training.state import TrainState

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_ckpt_"))
    try:
        batches = ctx.batches(spec)
        saver, saver_engine = ctx.make_ours(ctx.build(spec, ctx.args.seed), spec)
        warm_up(saver, batches, 2, ctx.sync, spec.accum)
        ck = CheckpointSaver(tmp / "checkpoints", 1, ctx.dist, config_hash="gpu_check")
        state = TrainState(step=2, tokens=2 * spec.tokens_per_step, max_steps=10)
        t0 = time.perf_counter()
        path = ck.save(saver_engine, state, {"check": "gpu_check"})
        save_s = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        problems = ck.dir.verify(path.name)
        if problems:
            raise CheckFailed(f"saved checkpoint does not verify: {problems[:3]}")
        saved = _engine_tensors(saver_engine)
        loader, loader_engine = ctx.make_ours(ctx.build(spec, ctx.args.seed + 1), spec)
        warm_up(loader, batches, 1, ctx.sync, spec.accum)  # its own optimizer state, so that loading has to replace it
        if not _differing(saved, _engine_tensors(loader_engine)):
            raise CheckFailed("the second engine already equals the saved one: the check would prove nothing")
        t0 = time.perf_counter()
        rank_state = ck.dir.load(loader_engine, path.name, ctx.dist)
        load_s = time.perf_counter() - t0
        differ = _differing(saved, _engine_tensors(loader_engine))
        figures = {"bytes": size, "save_s": save_s, "load_s": load_s, "tensors": len(saved), "differing": differ[:10]}
        if differ:
            raise _failed(f"{len(differ)} of {len(saved)} tensors differ after loading, e.g. {differ[:3]}", figures)
        if rank_state.get("state", {}).get("step") != 2 or rank_state.get("check") != "gpu_check":
            raise _failed(f"trainer state not restored: {rank_state}", figures)
        n = {k.split(".")[0] for k in saved}
        return (f"{spec.describe()}; saved {size / 2**20:.0f} MiB in {save_s:.1f} s, verified, loaded in {load_s:.1f} s "
                f"into a differently initialized engine: all {len(saved)} tensors equal ({', '.join(sorted(n))})"), figures
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- main -----------------------------------------------------------------------------------

def run_all(args, plan: Plan, summary_path: Path | None = None) -> tuple[list[CheckResult], dict]:
    """Every check in order, each under the watchdog; the summary so far is written before and after each one."""
    import logging

    import torch

    ctx = Context(args, plan)
    results: list[CheckResult] = []
    meta: dict = {"cpu_smoke": args.cpu_smoke, "precision": plan.precision, "checks": plan.checks,
                  "check_timeout_s": args.check_timeout}

    def run(name: str, fn: Callable[[], tuple[str, dict]]) -> CheckResult:
        if summary_path is not None:
            write_summary(summary_path, summary_dict(results, meta, None, running=name))
        result = run_check(name, fn, ctx.cleanup, args.check_timeout)
        results.append(result)
        if summary_path is not None:
            write_summary(summary_path, summary_dict(results, meta, None))
        return result

    run("preflight", lambda: check_preflight(ctx))
    run("distributed", lambda: check_distributed(ctx))
    import deepspeed
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # as main.py's _quiet_deepspeed
    from pretrain.hardware import detect, peak_flops

    hw = detect()
    ctx.peak, ctx.peak_why = peak_flops(hw, plan.precision, torch.get_num_threads(), args.peak_tflops)
    if args.peak_tflops:
        ctx.peak_why = "--peak-tflops"
    meta.update({
        "device": f"{hw.gpu_name}, compute capability {'.'.join(map(str, hw.gpu_capability))}" if hw.device == "cuda"
        else f"CPU ({hw.describe_cpu()}, {torch.get_num_threads()} thread(s))",
        "torch": torch.__version__, "deepspeed": deepspeed.__version__,
        "peak": f"peak {ctx.peak / 1e12:.4g} TFLOP/s ({ctx.peak_why})" if ctx.peak else f"no peak: {ctx.peak_why}",
        "peak_flops": ctx.peak, "steps": plan.steps, "warmup": plan.warmup,
        "mfu_floor": args.mfu_floor if plan.apply_mfu_floor else None,
        "mfu_floor_compiled": args.mfu_floor_compiled if plan.apply_mfu_floor and args.compile else None,
    })
    print(f"gpu_check: {meta['device']}, torch {meta['torch']}, deepspeed {meta['deepspeed']}, {plan.precision}, "
          f"{meta['peak']}; {plan.warmup} warm-up + {plan.steps} timed updates per side", flush=True)
    run("sdpa", lambda: check_sdpa(ctx))
    meta["sdpa"] = ctx.sdpa_name
    for spec in plan.models:
        run(f"throughput:{spec.name}", lambda spec=spec: check_throughput(ctx, spec))
    if plan.apply_mfu_floor:
        print(floor_check(results, args.mfu_floor).line(), flush=True)
    main_spec = next((s for s in plan.models if s.name == MAIN_MODEL), None)
    if args.compile:
        if main_spec is None:
            results.append(CheckResult(f"throughput:{MAIN_MODEL}+compile", False, f"needs {MAIN_MODEL} in --models"))
        else:
            run(f"throughput:{MAIN_MODEL}+compile",
                lambda: check_ours(ctx, main_spec, compile_backend=args.compile_backend, warmup=max(2, plan.warmup)))
        if plan.apply_mfu_floor:
            print(floor_check(results, args.mfu_floor_compiled, compiled=True).line(), flush=True)
    fewer = max(2, plan.steps // 2)  # not under a floor: fewer timed updates
    run("zero3-ckpt:phi3-mini-4l", lambda: check_ours(ctx, plan.zero3, ZERO3_JSON, steps=fewer))
    run("throughput:mup-alibi", lambda: check_ours(ctx, plan.mup, use_sdpa=False, steps=fewer))
    run("checkpoint", lambda: check_checkpoint(ctx, plan.aux))
    if ctx.dist is not None:
        from pretrain.distributed import release_shared_memory

        release_shared_memory(ctx.dist)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return results, meta


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    stop = precheck(torch.cuda.is_available(), args.cpu_smoke)
    if stop:
        print(stop[1], file=sys.stderr)
        return stop[0]
    os.environ["DS_ACCELERATOR"] = "cpu" if args.cpu_smoke else "cuda"  # before DeepSpeed is imported
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        print("gpu_check: runs as a single process (a world of one); do not start it under a launcher", file=sys.stderr)
        return EXIT_FAILED
    t0 = time.perf_counter()
    plan = make_plan(args)
    summary = out_dir(args.out) / "gpu_check_summary.json"
    results, meta = run_all(args, plan, summary)
    code, results = verdict(results, args.mfu_floor, plan.apply_mfu_floor,
                            args.mfu_floor_compiled if args.compile else None)
    meta["wall_s"] = time.perf_counter() - t0
    print()
    print(format_summary(results, meta, code))
    write_summary(summary, summary_dict(results, meta, code))
    print(f"summary written to {summary}; {meta['wall_s']:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
