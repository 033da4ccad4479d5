"""One-GPU acceptance check: ``python bench/gpu_check.py [--mfu-floor 0.35] [--steps N] [--compile] [--out DIR] [--quick]``.

Runs in a few minutes on one CUDA GPU with 80 GB or more (an 8-minute budget; ``--quick``
does fewer steps). Each check prints a PASS/FAIL line; a failed check does not stop the
next one, so one run yields every figure. Then a summary table, also written as JSON to
``--out`` (default ``$OUT`` if set, else ``./gpu_check_out``), and the exit code: 0 when every
check passed, 1 otherwise, 2 without a CUDA GPU (or on bad arguments).

Checks, in order:

* ``distributed``: ``pretrain.distributed.init_distributed`` in a world of one (it fills the
  launcher's variables) uses NCCL, and a 1-element ``all_reduce`` on the GPU returns its value.
* ``flash-sdpa``: ``scaled_dot_product_attention`` runs forward and backward with only the
  flash backend allowed, at the 1B model's head shape, and agrees with the math backend.
  When it fails the throughput checks still run, with the default SDPA backend choice.
* ``throughput:<model>`` for two models (ZeRO-2, bf16, flash SDPA, seed-identical weights, the
  same random batches): a ~1B GPT (d_model 2048, 16 layers, 16 heads, RoPE, SwiGLU, seq 2048,
  ~1.03B parameters) and Phi-3-mini with 4 of its 32 layers (seq 4096). *ours* is the step
  ``pretrain/main.py`` trains with: model built on the GPU, ``param_groups`` and the fused AdamW
  of ``OptimizerConfig.build``, ``deepspeed.initialize`` with ``ds_configs/zero2.json`` filled
  as ``pretrain.run_config`` fills it, ``set_lr`` + ``pretrain.training.step.train_step``. It is
  timed alone first for the peak GPU memory (``torch.cuda.max_memory_allocated`` over its
  warm-up steps), then interleaved (ABBA rounds of one step, ``bench/train_throughput.py``'s
  ``run_rounds``) against that script's bare PyTorch loop (fp32 parameters under bf16
  autocast, ``torch.optim.AdamW``). Figures: tokens/s and MFU of ours (median step; FLOPs from
  ``GPTConfig.flops_per_token``; peak from ``pretrain.hardware.gpu_peak_flops`` or
  ``--peak-tflops``), peak memory, ours/bare median step-time ratio and its per-round range.
  It fails on a non-finite loss or when ours and bare disagree on the first loss.
* ``mfu-floor``: the 1B model's MFU is at least ``--mfu-floor`` (default 0.35).
* ``compile`` (with ``--compile``): a 150M model of the same family, compiled in place as
  ``main.py`` does (``train.compile``), trains a few steps beside an eager twin; the losses
  are finite and close to eager's.
* ``checkpoint``: ``pretrain.checkpoint.CheckpointSaver`` saves that model's engine after two
  steps into a temp dir; its files verify against the manifest; a differently initialized
  engine loads it and then has exactly the saved weights, fp32 master weights and Adam moments.

``--cpu-smoke`` runs the same flow on CPU (gloo, fp32, the ``tiny`` preset at seq 64, 3 timed
steps, no MFU floor) to exercise the code path without a GPU. The CPU-side logic (arguments,
shapes, the plan, MFU arithmetic, the verdict, the summary) is in pure functions that
``tests/test_gpu_check.py`` tests without a GPU.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))  # before bench/ (the script's own directory): bench/data_prep.py would shadow data_prep

EXIT_OK, EXIT_FAILED, EXIT_NO_CUDA = 0, 1, 2
NO_CUDA_MESSAGE = ("gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False); "
                   "--cpu-smoke runs the same flow on CPU with a tiny model")
MAIN_MODEL = "gpt-1b"
DS_JSON = REPO / "ds_configs" / "zero2.json"
FIRST_LOSS_RTOL = {"bf16": 2e-2, "fp32": 1e-4}  # ours vs bare on the first step (bf16: autocast rounds differently)
COMPILE_RTOL = {"bf16": 2e-2, "fp32": 1e-3}  # compiled vs eager losses


# ---- arguments and the plan (pure) ----------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu_check.py", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mfu-floor", type=float, default=0.35, help="fail when the 1B model's MFU is below this")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per side per model (interleaved rounds of one step); default 20, --quick 6, --cpu-smoke 3")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side first; default 3, --quick 2, --cpu-smoke 1")
    p.add_argument("--compile", action="store_true", help="also check torch.compile (compiled step vs eager)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend for --compile")
    p.add_argument("--out", default=None, help="where the JSON summary goes (default: $OUT if set, else ./gpu_check_out)")
    p.add_argument("--quick", action="store_true", help="fewer steps (a smoke test of the GPU path)")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for MFU (default: the GPU table)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="sequences per step for both throughput models (default: 4 for the 1B at seq 2048, 2 for Phi-3 at 4096)")
    p.add_argument("--models", default=f"{MAIN_MODEL},phi3-mini-4l", help="comma-separated throughput models")
    p.add_argument("--seed", type=int, default=1234, help="weights and batches seed")
    p.add_argument("--lr", type=float, default=3e-4, help="peak LR (a 10-step linear warmup scales it)")
    p.add_argument("--cpu-smoke", action="store_true", help="run the flow on CPU with the tiny preset (no GPU needed)")
    args = p.parse_args(argv)
    known = {s.name for s in model_specs(cpu_smoke=False)}
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or set(args.models) - known:
        p.error(f"--models: expected a comma-separated subset of {','.join(sorted(known))}")
    for name in ("steps", "micro_batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup is not None and args.warmup < 1:
        p.error("--warmup must be >= 1 (the first step is the ours-vs-bare check)")
    if not 0.0 <= args.mfu_floor <= 1.0:
        p.error("--mfu-floor must be in [0, 1]")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        p.error("--peak-tflops must be > 0")
    return args


def out_dir(arg: Optional[str], env: Optional[dict] = None) -> Path:
    env = os.environ if env is None else env
    return Path(arg or env.get("OUT") or "gpu_check_out")


def precheck(cuda_available: bool, cpu_smoke: bool) -> Optional[tuple[int, str]]:
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

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.micro_batch

    @property
    def flops_per_step(self) -> float:
        return self.gpt.flops_per_token(self.seq_len) * self.tokens_per_step

    def describe(self) -> str:
        g = self.gpt
        return (f"{human_count(g.num_params())} params: d_model {g.d_model}, {g.n_layers} layers, {g.n_heads} heads "
                f"(head_dim {g.head_dim}), d_ff {g.ffn_dim}, vocab {g.vocab_size}, {g.pos}; seq {self.seq_len} x "
                f"micro-batch {self.micro_batch} = {self.tokens_per_step} tokens/step")


def model_specs(cpu_smoke: bool = False, micro_batch: Optional[int] = None) -> list[ModelSpec]:
    """The throughput models: a ~1B GPT and a 4-layer Phi-3-mini (both: the tiny preset in the smoke run)."""
    from pretrain.model.config import GPTConfig
    from pretrain.model.presets import get_preset

    if cpu_smoke:
        specs = []
        for name in (MAIN_MODEL, "phi3-mini-4l"):
            g = get_preset("tiny")
            g.vocab_size, g.max_seq_len = 512, 64
            specs.append(ModelSpec(name, g, 64, micro_batch or 2, "cpu smoke: the tiny preset"))
        return specs
    # Llama-style ~1B (RoPE, so flash attention applies; ALiBi's additive bias would rule it out, as in mup-1.7b).
    gpt1b = GPTConfig(vocab_size=50304, d_model=2048, n_layers=16, n_heads=16, d_ff=5632, max_seq_len=2048,
                      norm="rmsnorm", pos="rope", mlp="swiglu", tie_embeddings=False, bias=False)
    phi3 = get_preset("phi3-mini")
    phi3.n_layers = 4
    return [ModelSpec(MAIN_MODEL, gpt1b, 2048, micro_batch or 4, "Llama-style, untied embeddings"),
            ModelSpec("phi3-mini-4l", phi3, 4096, micro_batch or 2, "preset phi3-mini with 4 of its 32 layers")]


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


def make_plan(args) -> Plan:
    smoke = args.cpu_smoke
    warmup = args.warmup or (1 if smoke else 2 if args.quick else 3)
    steps = args.steps or (3 if smoke else 6 if args.quick else 20)
    models = [s for s in model_specs(smoke, args.micro_batch) if s.name in args.models]
    checks = ["distributed", "flash-sdpa"] + [f"throughput:{s.name}" for s in models] + ["mfu-floor"]
    checks += ["compile"] if args.compile else []
    checks += ["checkpoint"]
    return Plan(device="cpu" if smoke else "cuda", precision="fp32" if smoke else "bf16",
                backend="gloo" if smoke else "nccl", flash=True, warmup=warmup, steps=steps,
                threads=1 if smoke else 0, apply_mfu_floor=not smoke, models=models, aux=aux_spec(smoke),
                checks=checks)


def ds_config(precision: str, micro_batch: int, grad_clip: float = 1.0, optimizer_name: str = "adamw",
              path: Path = DS_JSON) -> dict:
    """ds_configs/zero2.json with the batch keys and the precision block, filled by pretrain.run_config's code."""
    from pretrain.config_loader import Problems, Sources
    from pretrain.data import DataConfig
    from pretrain.hardware import PrecisionChoice
    from pretrain.optim import OptimizerConfig
    from pretrain.run_config import DeepSpeedSection, RunConfig, TrainConfig, deepspeed_config

    cfg = RunConfig(name="gpu_check", data=DataConfig(path="unused"),
                    train=TrainConfig(micro_batch_size=micro_batch, global_batch_size=micro_batch, grad_accum=1,
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


def mfu(flops_per_step: float, step_s: float, peak_flops: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: achieved FLOP/s over the peak; None without a peak."""
    if not peak_flops or not step_s > 0:
        return None
    return flops_per_step / step_s / peak_flops


def floor_check(results: list[CheckResult], floor: float, model: str = MAIN_MODEL) -> CheckResult:
    """PASS when ``throughput:<model>`` ran and its MFU is at least ``floor``."""
    r = next((r for r in results if r.name == f"throughput:{model}"), None)
    if r is None or not r.ok:
        return CheckResult("mfu-floor", False, f"{model} was not measured" + (" (its check failed)" if r else ""))
    value = r.figures.get("mfu")
    if value is None:
        return CheckResult("mfu-floor", False, f"{model}: no MFU (the GPU is not in the peak table; give --peak-tflops)")
    ok = value >= floor
    return CheckResult("mfu-floor", ok, f"{model} MFU {value:.1%} {'>=' if ok else '<'} floor {floor:.0%}",
                       {"mfu": value, "floor": floor})


def verdict(results: list[CheckResult], mfu_floor: float, apply_floor: bool = True) -> tuple[int, list[CheckResult]]:
    """(exit code, the results with the MFU-floor check added when it applies)."""
    results = [r for r in results if r.name != "mfu-floor"]
    if apply_floor:  # listed after the last throughput check
        at = max((i + 1 for i, r in enumerate(results) if r.name.startswith("throughput:")), default=len(results))
        results.insert(at, floor_check(results, mfu_floor))
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


def summary_dict(results: list[CheckResult], meta: dict, code: int) -> dict:
    return {"exit_code": code, "passed": code == EXIT_OK, "meta": meta, "checks": [asdict(r) for r in results]}


# ---- running a check ------------------------------------------------------------------------

class CheckFailed(Exception):
    """A check's condition does not hold (the message says which)."""


def run_check(name: str, fn: Callable[[], tuple[str, dict]], cleanup: Callable[[], None] = lambda: None) -> CheckResult:
    """Run ``fn`` (returns detail, figures); an exception makes a FAIL result. Prints the PASS/FAIL line."""
    t0 = time.perf_counter()
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
        cleanup()
    result.seconds = time.perf_counter() - t0
    print(result.line(), flush=True)
    return result


# ---- the checks (need torch, DeepSpeed, and on GPU a GPU) ----------------------------------

class Context:
    def __init__(self, args, plan: Plan):
        import torch

        self.args, self.plan, self.torch = args, plan, torch
        self.dist = None  # set by the distributed check
        self.flash_ok = False
        self.peak: Optional[float] = None
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

    def cleanup(self) -> None:
        gc.collect()
        if self.dist is not None and self.cuda:
            self.torch.cuda.empty_cache()

    def schedule(self, step: int) -> float:
        return min(1.0, (step + 1) / 10)

    def sdpa(self):
        if not (self.plan.flash and self.flash_ok):
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION])

    def build(self, spec: ModelSpec, seed: int):
        self.torch.manual_seed(seed)
        with self.torch.device(self.device):  # main.py builds on the CPU and moves it; on the GPU is faster
            return spec.gpt.build()

    def batches(self, spec: ModelSpec, n: int = 8) -> list:
        gen = self.torch.Generator().manual_seed(self.args.seed + 1)
        shape = (spec.micro_batch, spec.seq_len + 1)
        return [self.torch.randint(0, spec.gpt.vocab_size, shape, generator=gen).to(self.device) for _ in range(n)]

    def make_ours(self, model, spec: ModelSpec, compile_backend: Optional[str] = None):
        """(train_throughput.Side, engine): main.py's optimizer, engine and step on ``model``."""
        from bench.train_throughput import Side

        from pretrain.optim import OptimizerConfig
        from pretrain.trainer import build_engine
        from pretrain.optim import set_lr
        from pretrain.training.step import train_step

        opt_cfg = OptimizerConfig(lr=self.args.lr)
        if compile_backend:
            model.compile(backend=compile_backend)  # in place, as build_engine does for train.compile
        ds = ds_config(self.plan.precision, spec.micro_batch, opt_cfg.grad_clip)
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):
                engine = build_engine(model, opt_cfg, ds, self.device)
        except BaseException:
            sys.stdout.write(chatter.getvalue())
            raise
        device, z_loss = self.device, spec.gpt.z_loss

        def step(micro_batches, global_step):
            set_lr(engine.optimizer, self.schedule(global_step))
            out = train_step(engine, micro_batches, spec.seq_len, device, z_loss)
            return out.loss, out.grad_norm

        stage = ds["zero_optimization"]["stage"]
        return Side("ours", f"DeepSpeed ZeRO-{stage} {self.plan.precision}", step), engine

    def with_sdpa(self, side):
        inner = side.step

        def step(micro_batches, global_step):
            with self.sdpa():
                return inner(micro_batches, global_step)

        side.step = step
        return side


def warm_up(side, batches: list, n: int, sync) -> list[float]:
    """``n`` untimed steps of ``side`` on the batches run_rounds would give it; returns their times."""
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        loss, norm = side.step([batches[side.step_no % len(batches)]], side.step_no)
        sync()
        times.append(time.perf_counter() - t0)
        side.step_no += 1
        side.losses.append(loss)
        side.norms.append(norm)
    return times


def check_distributed(ctx: Context) -> tuple[str, dict]:
    import torch
    import torch.distributed as tdist

    from pretrain.distributed import init_distributed

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
            f"{torch.get_num_threads()} CPU thread(s)"), {"backend": backend, "world_size": world}


def check_flash(ctx: Context) -> tuple[str, dict]:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = ctx.plan.models[0].gpt if ctx.plan.models else ctx.plan.aux.gpt
    seq = ctx.plan.models[0].seq_len if ctx.plan.models else ctx.plan.aux.seq_len
    dtype = torch.bfloat16 if ctx.plan.precision == "bf16" else torch.float32
    gen = torch.Generator().manual_seed(0)
    qkv = [torch.randn(1, g.n_heads, seq, g.head_dim, generator=gen).to(ctx.device, dtype).requires_grad_()
           for _ in range(3)]
    outs = {}
    for name, backend in (("flash", SDPBackend.FLASH_ATTENTION), ("math", SDPBackend.MATH)):
        for t in qkv:
            t.grad = None
        with sdpa_kernel([backend]):
            y = F.scaled_dot_product_attention(*qkv, is_causal=True, scale=g.multipliers()[2])
            y.float().square().mean().backward()
        outs[name] = (y.detach().float(), qkv[0].grad.detach().float())
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    dy = (outs["flash"][0] - outs["math"][0]).abs().max().item()
    dg = ((outs["flash"][1] - outs["math"][1]).abs().max() / outs["math"][1].abs().max().clamp_min(1e-12)).item()
    if not (dy <= tol and dg <= tol * 5):
        raise CheckFailed(f"flash and math SDPA differ: output max|diff| {dy:.2e}, dq rel {dg:.2e} (tol {tol:g})")
    ctx.flash_ok = True
    return (f"flash backend fwd+bwd at [1, {g.n_heads}, {seq}, {g.head_dim}] {str(dtype)[6:]}, causal; "
            f"vs math: out max|diff| {dy:.1e}, dq rel {dg:.1e}"), {"out_max_diff": dy, "dq_rel_diff": dg}


def check_throughput(ctx: Context, spec: ModelSpec) -> tuple[str, dict]:
    import torch
    from bench.train_throughput import PhaseTimer, Setup, make_bare, run_rounds

    plan, sync, device = ctx.plan, ctx.sync, ctx.device
    model = ctx.build(spec, ctx.args.seed)
    bare_model = copy.deepcopy(model).to("cpu")  # identical weights, off the GPU while ours' memory is measured
    ctx.cleanup()
    ours, engine = ctx.make_ours(model, spec)
    del model, engine  # the side's step holds the engine
    batches = ctx.batches(spec)
    ctx.with_sdpa(ours)
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    warm_ours = warm_up(ours, batches, plan.warmup, sync)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if ctx.cuda else None
    bare_model.to(device)
    timer = PhaseTimer(sync)
    setup = Setup(spec.name, spec.gpt, spec.seq_len, spec.micro_batch, 1, 0, plan.steps, 1, torch.get_num_threads())
    hp = SimpleNamespace(lr=ctx.args.lr, grad_clip=1.0, breakdown=False)
    bare = ctx.with_sdpa(make_bare(bare_model, hp, "autocast" if plan.precision == "bf16" else "fp32", setup, device,
                                   ctx.schedule, timer))
    del bare_model
    warm_up(bare, batches, plan.warmup, sync)
    run_rounds([ours, bare], batches, setup, sync, timer, False, 0.25)
    ours.step = bare.step = None
    t_ours, t_bare = statistics.median(ours.times), statistics.median(bare.times)
    ratios = [o / b for o, b in zip(ours.times, bare.times)]
    value = mfu(spec.flops_per_step, t_ours, ctx.peak)
    figures = {
        "model": spec.describe(), "params": spec.gpt.num_params(), "tokens_per_step": spec.tokens_per_step,
        "step_ms": t_ours * 1e3, "bare_step_ms": t_bare * 1e3, "tokens_per_s": spec.tokens_per_step / t_ours,
        "tflops": spec.flops_per_step / t_ours / 1e12, "mfu": value, "peak_mem_gib": peak_mem,
        "ours_over_bare": t_ours / t_bare, "ratio_min": min(ratios), "ratio_max": max(ratios),
        "first_step_s": warm_ours[0], "losses_ours": ours.losses, "losses_bare": bare.losses,
        "sdpa": "flash" if plan.flash and ctx.flash_ok else "default",
    }
    rel = abs(ours.losses[0] - bare.losses[0]) / abs(bare.losses[0])
    figures["first_loss_rel_diff"] = rel
    if not all(math.isfinite(x) for x in ours.losses + bare.losses):
        raise _failed(f"non-finite loss: ours {ours.losses}, bare {bare.losses}", figures)
    if rel > FIRST_LOSS_RTOL[plan.precision]:
        raise _failed(f"ours and bare disagree on the first loss: {ours.losses[0]:.5f} vs {bare.losses[0]:.5f}", figures)
    mem = f", peak {peak_mem:.1f} GiB" if peak_mem is not None else ""
    m = f", MFU {value:.1%}" if value is not None else ""
    return (f"{spec.describe()}; ours {t_ours * 1e3:.1f} ms/step, {figures['tokens_per_s']:,.0f} tokens/s, "
            f"{figures['tflops']:.3g} TFLOP/s{m}{mem}; ours/bare {t_ours / t_bare:.3f} "
            f"(rounds {min(ratios):.3f}..{max(ratios):.3f}), {figures['sdpa']} SDPA"), figures


def _failed(message: str, figures: dict) -> CheckFailed:
    e = CheckFailed(message)
    e.figures = figures
    return e


def check_compile(ctx: Context, spec: ModelSpec, steps: int = 4) -> tuple[str, dict]:
    """Eager and compiled twins, ``steps`` steps each; step 1 compiles (and step 2 may recompile)."""
    model = ctx.build(spec, ctx.args.seed)
    twin = copy.deepcopy(model)
    eager, _ = ctx.make_ours(model, spec)
    compiled, _ = ctx.make_ours(twin, spec, compile_backend=ctx.args.compile_backend)
    del model, twin
    batches = ctx.batches(spec)
    t_eager = warm_up(eager, batches, steps, ctx.sync)
    t_comp = warm_up(compiled, batches, steps, ctx.sync)
    eager.step = compiled.step = None
    rel = max(abs(a - b) / abs(b) for a, b in zip(compiled.losses, eager.losses))
    settled = slice(2, None) if steps > 2 else slice(steps - 1, None)  # past the compile and a recompile
    figures = {"model": spec.describe(), "losses_compiled": compiled.losses, "losses_eager": eager.losses,
               "max_rel_diff": rel, "compiled_step_s": t_comp, "eager_step_s": t_eager,
               "compiled_over_eager": statistics.median(t_comp[settled]) / statistics.median(t_eager[settled])}
    if not all(math.isfinite(x) for x in compiled.losses):
        raise _failed(f"compiled losses not finite: {compiled.losses}", figures)
    if rel > COMPILE_RTOL[ctx.plan.precision]:
        raise _failed(f"compiled losses {compiled.losses} differ from eager {eager.losses} (max rel {rel:.1e})", figures)
    return (f"{ctx.args.compile_backend}, {steps} steps: losses {', '.join(f'{x:.4f}' for x in compiled.losses)}, "
            f"max rel diff to eager {rel:.1e}; compiled step times {', '.join(f'{t:.3g}' for t in t_comp)} s; "
            f"compiled/eager {figures['compiled_over_eager']:.2f} from step {settled.start + 1}"), figures


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
        warm_up(saver, batches, 2, ctx.sync)
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
        warm_up(loader, batches, 1, ctx.sync)  # its own optimizer state, so that loading has to replace it
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

def run_all(args, plan: Plan) -> tuple[list[CheckResult], dict]:
    import logging

    import torch

    ctx = Context(args, plan)
    results = [run_check("distributed", lambda: check_distributed(ctx), ctx.cleanup)]
    import deepspeed
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # as main.py's _quiet_deepspeed
    from pretrain.hardware import detect, peak_flops

    hw = detect()
    ctx.peak, ctx.peak_why = peak_flops(hw, plan.precision, torch.get_num_threads(), args.peak_tflops)
    if args.peak_tflops:
        ctx.peak_why = "--peak-tflops"
    meta = {
        "device": f"{hw.gpu_name}, compute capability {'.'.join(map(str, hw.gpu_capability))}" if hw.device == "cuda"
        else f"CPU ({hw.describe_cpu()}, {torch.get_num_threads()} thread(s))",
        "precision": plan.precision, "torch": torch.__version__, "deepspeed": deepspeed.__version__,
        "peak": f"peak {ctx.peak / 1e12:.4g} TFLOP/s ({ctx.peak_why})" if ctx.peak else f"no peak: {ctx.peak_why}",
        "peak_flops": ctx.peak, "steps": plan.steps, "warmup": plan.warmup, "cpu_smoke": args.cpu_smoke,
        "mfu_floor": args.mfu_floor if plan.apply_mfu_floor else None, "checks": plan.checks,
    }
    print(f"gpu_check: {meta['device']}, torch {meta['torch']}, deepspeed {meta['deepspeed']}, {plan.precision}, "
          f"{meta['peak']}; {plan.warmup} warm-up + {plan.steps} timed steps per side", flush=True)
    results.append(run_check("flash-sdpa", lambda: check_flash(ctx), ctx.cleanup))
    for spec in plan.models:
        results.append(run_check(f"throughput:{spec.name}", lambda spec=spec: check_throughput(ctx, spec), ctx.cleanup))
    if plan.apply_mfu_floor:
        print(floor_check(results, args.mfu_floor).line(), flush=True)
    if "compile" in plan.checks:
        results.append(run_check("compile", lambda: check_compile(ctx, plan.aux), ctx.cleanup))
    results.append(run_check("checkpoint", lambda: check_checkpoint(ctx, plan.aux), ctx.cleanup))
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
    results, meta = run_all(args, plan)
    code, results = verdict(results, args.mfu_floor, plan.apply_mfu_floor)
    meta["wall_s"] = time.perf_counter() - t0
    print()
    print(format_summary(results, meta, code))
    out = out_dir(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check_summary.json").write_text(json.dumps(summary_dict(results, meta, code), indent=1, default=str))
    print(f"summary written to {out / 'gpu_check_summary.json'}; {meta['wall_s']:.0f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
