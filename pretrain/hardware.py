"""What the hardware can do: which precision to train in, how many threads each rank gets, its peak.

Everything here is decided from a :class:`Hardware` description, so that the
choices are pure functions that tests call with any machine injected;
:func:`detect` reads the real one. Nothing is imported or measured at import.

Precision (``train.precision: auto``):

* a CUDA device of compute capability >= 8.0 (Ampere, Hopper, ...): ``bf16``;
* an older CUDA device (V100, T4): ``fp16`` with DeepSpeed's dynamic loss scaling;
* a CPU with fast bf16 matrix units (AMX or AVX512_BF16, and torch and oneDNN allowed to use
  them): ``bf16``;
* any other CPU (AVX2-only x86, most Arm): ``fp32``. There bf16 matmuls are emulated and were
  measured 65x slower than fp32 (0.7 against 45.6 GFLOP/s on an AMD EPYC with AVX2).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from typing import Literal

Precision = Literal["bf16", "fp16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")

# Dense bf16 peak per GPU, FLOP/s (for MFU); matched against torch.cuda.get_device_name().
# More specific names first: "H100 PCIe" must not match "H100".
GPU_PEAK_BF16 = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),  # fp16 tensor cores (no bf16)
    ("T4", 65e12),  # fp16 tensor cores (no bf16)
)

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which bf16 matmuls still have hardware support.
_ONEDNN_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
                     "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT"}


@dataclass(frozen=True)
class Hardware:
    """The facts the choices depend on (all injectable in tests)."""

    device: Literal["cpu", "cuda"] = "cpu"
    cpu_capability: str = "DEFAULT"  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...
    amx_bf16: bool = False  # the CPU has AMX tiles (Sapphire Rapids and later)
    avx512_bf16: bool = False  # the CPU has AVX512_BF16 dot products (Cooper Lake, Zen 4, ...)
    onednn_max_isa: str = ""  # ONEDNN_MAX_CPU_ISA if set: a cap on what oneDNN (bf16 matmuls) may use
    gpu_name: str = ""
    gpu_capability: tuple[int, int] = (0, 0)  # CUDA compute capability of the first device
    cores: int = 1  # cores this process may run on (its affinity mask)
    env: dict = field(default_factory=dict, compare=False)  # the thread variables the user set

    @property
    def cpu_bf16_fast(self) -> bool:
        return self.cpu_bf16_slow_reason() is None

    def cpu_bf16_slow_reason(self) -> str | None:
        """Why bf16 matmuls are slow on this CPU, or None when they are fast."""
        if not (self.amx_bf16 or self.avx512_bf16):
            return f"cpu: {self.cpu_capability}, no AMX or AVX512_BF16"
        if self.cpu_capability not in ("AVX512", "AMX"):
            return f"cpu: torch uses {self.cpu_capability} kernels (ATEN_CPU_CAPABILITY), not AVX512"
        if self.onednn_max_isa and self.onednn_max_isa.upper() not in _ONEDNN_BF16_ISAS:
            return f"cpu: ONEDNN_MAX_CPU_ISA={self.onednn_max_isa} excludes the bf16 units"
        return None

    def describe_cpu(self) -> str:
        units = [n for n, on in (("AMX", self.amx_bf16), ("AVX512_BF16", self.avx512_bf16)) if on]
        return f"cpu: {self.cpu_capability}" + (f" with {'+'.join(units)}" if units else "")


def detect() -> Hardware:
    """The hardware of this process (imports torch)."""
    import torch

    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "PRETRAIN_THREADS") if k in os.environ}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cpu = dict(
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        amx_bf16=_flag(torch, "_is_amx_tile_supported"),
        avx512_bf16=_flag(torch, "_is_avx512_bf16_supported"),
        onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        cores=cores,
        env=env,
    )
    if os.environ.get("DS_ACCELERATOR", "cuda") != "cpu" and torch.cuda.is_available():
        return Hardware(device="cuda", gpu_name=torch.cuda.get_device_name(0),
                        gpu_capability=tuple(torch.cuda.get_device_capability(0)), **cpu)
    return Hardware(**cpu)


def _flag(torch, name: str) -> bool:
    fn = getattr(torch.cpu, name, None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # pragma: no cover - an exotic build
        return False


# -- precision ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrecisionChoice:
    precision: Precision
    reason: str  # one line, e.g. "cpu: AVX2, no AMX or AVX512_BF16"
    warning: str | None = None  # the request works but is a bad idea here

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})"


def choose_precision(requested: str, hw: Hardware) -> PrecisionChoice:
    """The precision to train in for ``requested`` (auto, bf16, fp16, fp32) on ``hw``.

    Raises ValueError for a precision the device cannot run at all (fp16 on a CPU).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: expected one of {', '.join(PRECISIONS)}")
    if hw.device == "cuda":
        major, minor = hw.gpu_capability
        gpu = f"{hw.gpu_name or 'cuda'}, compute capability {major}.{minor}"
        bf16_ok = major >= 8
        if requested == "auto":
            if bf16_ok:
                return PrecisionChoice("bf16", f"{gpu}: bf16 tensor cores")
            return PrecisionChoice("fp16", f"{gpu}: no bf16 tensor cores; fp16 with dynamic loss scaling")
        if requested == "bf16" and not bf16_ok:
            return PrecisionChoice("bf16", f"asked for; {gpu}", f"bf16 asked for on {gpu} (< 8.0): it has no bf16 "
                                   "tensor cores and runs bf16 emulated and slowly; train.precision=auto picks fp16")
        return PrecisionChoice(requested, f"asked for; {gpu}")  # type: ignore[arg-type]

    slow = hw.cpu_bf16_slow_reason()
    if requested == "auto":
        if slow is None:
            return PrecisionChoice("bf16", f"{hw.describe_cpu()}: fast bf16")
        return PrecisionChoice("fp32", f"{slow}: no fast bf16")
    if requested == "fp16":
        raise ValueError(f"precision fp16 needs a CUDA GPU ({hw.describe_cpu()}); use auto, bf16 or fp32 on a CPU")
    if requested == "bf16" and slow is not None:
        return PrecisionChoice("bf16", f"asked for; {slow}",
                               f"bf16 asked for on a CPU where it is slow ({slow}); {measured_ratio_text()}; "
                               "train.precision=auto picks fp32 here")
    return PrecisionChoice(requested, f"asked for; {hw.describe_cpu()}")  # type: ignore[arg-type]


def measured_ratio_text(threads: int = 1) -> str:
    """``bf16 matmul X GFLOP/s against fp32 Y GFLOP/s (Z times slower)``, measured now."""
    import torch

    fp32 = matmul_flops(torch.float32, threads, size=256, seconds=0.05)
    bf16 = matmul_flops(torch.bfloat16, threads, size=256, seconds=0.05)
    return (f"measured a 256x256 matmul on {threads} thread(s): bf16 {bf16 / 1e9:.1f} GFLOP/s against fp32 "
            f"{fp32 / 1e9:.1f} GFLOP/s ({fp32 / max(bf16, 1.0):.0f}x slower)")


# -- threads ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ThreadPlan:
    threads: int  # intra-op threads of each rank
    reason: str


def plan_threads(hw: Hardware, local_ranks: int, loader_workers: int = 0) -> ThreadPlan:
    """Intra-op threads per rank: the cores divided among this node's ranks and their loader workers.

    ``PRETRAIN_THREADS`` (or else ``OMP_NUM_THREADS``), when set, wins. On a GPU the host threads
    matter little; the same rule keeps the CPU side from oversubscribing.
    """
    for var in ("PRETRAIN_THREADS", "OMP_NUM_THREADS"):
        value = hw.env.get(var)
        if value:
            try:
                n = int(value)
            except ValueError:
                raise ValueError(f"{var}={value!r}: expected a whole number of threads >= 1") from None
            if n < 1:
                raise ValueError(f"{var}={value!r}: expected a whole number of threads >= 1")
            return ThreadPlan(n, f"{var}={n} set in the environment")
    share = max(1, hw.cores // max(1, local_ranks))
    threads = max(1, share - loader_workers)
    why = f"{hw.cores} cores / {local_ranks} rank(s) on this node"
    if loader_workers:
        why += f" - {loader_workers} loader worker(s) per rank"
    return ThreadPlan(threads, why)


# -- peak FLOP/s --------------------------------------------------------------------------------

def gpu_peak_flops(name: str) -> float | None:
    """The dense bf16 peak of a GPU by name, or None when the table does not know it."""
    return next((v for k, v in GPU_PEAK_BF16 if k in name), None)


@functools.cache
def matmul_flops(dtype, threads: int, size: int = 1024, seconds: float = 0.3) -> float:
    """Measured FLOP/s of a square matmul of ``dtype`` on ``threads`` CPU threads (best of short repeats).

    Measured once per process for each argument set: runs in a row (the experiment harness, the tests)
    reuse the figure instead of spending 0.3 s or more of every run on it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen).to(dtype)
        b = torch.randn(size, size, generator=gen).to(dtype)
        a @ b  # warm-up (and oneDNN's kernel choice)
        best, deadline = float("inf"), time.perf_counter() + seconds
        reps = 0
        while reps < 3 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
            reps += 1
            if reps >= 200:
                break
        return 2 * size**3 / best
    finally:
        torch.set_num_threads(before)


def peak_flops(hw: Hardware, precision: str, threads: int, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s of one rank for MFU, where it came from); (None, why) when unknown."""
    if override_tflops:
        return override_tflops * 1e12, "train.peak_tflops"
    if hw.device == "cuda":
        peak = gpu_peak_flops(hw.gpu_name)
        if peak is None:
            return None, f"{hw.gpu_name} is not in the peak table: set train.peak_tflops"
        return peak, f"{hw.gpu_name} dense bf16 peak"
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return matmul_flops(dtype, threads), f"measured {precision} 1024x1024 matmul on {threads} thread(s)"
