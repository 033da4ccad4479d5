"""What this machine offers for training: ``python bench/machine.py [--threads N] [--json]``.

Prints the torch version and CPU capability, the :class:`pretrain.hardware.Hardware` that
``detect()`` sees (AMX / AVX512_BF16, cores), the measured fp32 and bf16 square-matmul
throughput (512 and 1024) on the threads one rank of a 2-rank run gets
(``plan_threads(hw, 2)``, or ``--threads``) and on all cores, the bf16/fp32 ratio, what
``train.precision: auto`` picks and why, and on CUDA the GPU, its compute capability and the
peak the MFU figures use. A bf16 matmul that would take too long (emulated bf16 on an
AVX2-only CPU runs ~65x slower than fp32) is skipped at 1024 with a note. Runs in a few
seconds on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = (512, 1024)
MAX_MEASURE_S = 3.0  # skip a bf16 measurement predicted to take longer than this


def measure(threads: int, seconds: float) -> list[dict]:
    """fp32 and bf16 matmul GFLOP/s per size on ``threads`` threads (bf16 skipped when far too slow)."""
    import torch

    from pretrain.hardware import matmul_flops

    rows, bf16_rate = [], None
    for size in SIZES:
        row = {"threads": threads, "size": size, "fp32_gflops": matmul_flops(torch.float32, threads, size, seconds) / 1e9}
        # matmul_flops runs a warm-up and at least 3 timed products: predict that from the smaller size
        # (x2: emulated bf16 gets slower per FLOP as the matrices outgrow the cache).
        predicted = 2 * 4 * 2 * size**3 / bf16_rate if bf16_rate else 0.0
        if predicted > MAX_MEASURE_S:
            row.update(bf16_gflops=None, ratio=None, note=f"bf16 skipped: would take ~{predicted:.0f} s")
        else:
            bf16_rate = matmul_flops(torch.bfloat16, threads, size, seconds)
            row.update(bf16_gflops=bf16_rate / 1e9, ratio=bf16_rate / 1e9 / row["fp32_gflops"], note="")
        rows.append(row)
    return rows


def report(threads_override: int = 0, seconds: float = 0.2) -> dict:
    import torch

    from pretrain.hardware import choose_precision, detect, gpu_peak_flops, plan_threads

    hw = detect()
    plan = plan_threads(hw, 2)
    rank_threads = threads_override or plan.threads
    why = f"--threads {threads_override}" if threads_override else f"plan_threads(hw, 2): {plan.reason}"
    counts = sorted({rank_threads, hw.cores})
    choice = choose_precision("auto", hw)
    out = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "hardware": {"device": hw.device, "cpu": hw.describe_cpu(), "amx_bf16": hw.amx_bf16,
                     "avx512_bf16": hw.avx512_bf16, "onednn_max_isa": hw.onednn_max_isa or None, "cores": hw.cores,
                     "cpu_bf16_fast": hw.cpu_bf16_fast, "cpu_bf16_slow_reason": hw.cpu_bf16_slow_reason()},
        "rank_threads": rank_threads, "rank_threads_reason": why,
        "matmul": [row for t in counts for row in measure(t, seconds)],
        "precision_auto": choice.precision, "precision_reason": choice.reason,
        "gpu": None,
    }
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = gpu_peak_flops(name)
        out["gpu"] = {"name": name, "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
                      "count": torch.cuda.device_count(), "peak_bf16_tflops": peak / 1e12 if peak else None}
    return out


def format_report(r: dict) -> str:
    hw = r["hardware"]
    lines = [
        f"torch {r['torch']}, torch.backends.cpu.get_cpu_capability() = {r['cpu_capability']}",
        f"hardware: device {hw['device']}, {hw['cpu']}, AMX {hw['amx_bf16']}, AVX512_BF16 {hw['avx512_bf16']}, "
        f"{hw['cores']} core(s) in this process's affinity" + (f", ONEDNN_MAX_CPU_ISA={hw['onednn_max_isa']}" if hw["onednn_max_isa"] else ""),
        f"  cpu bf16: {'fast' if hw['cpu_bf16_fast'] else 'slow (' + hw['cpu_bf16_slow_reason'] + ')'}",
        f"threads of one rank of a 2-rank run: {r['rank_threads']} ({r['rank_threads_reason']})",
        "square matmul, best of short repeats (GFLOP/s):",
        f"  {'threads':>7} {'size':>5} {'fp32':>9} {'bf16':>9} {'bf16/fp32':>9}",
    ]
    for m in r["matmul"]:
        bf16 = f"{m['bf16_gflops']:9.1f}" if m["bf16_gflops"] is not None else f"{'-':>9}"
        ratio = f"{m['ratio']:9.3g}" if m["ratio"] is not None else f"{'-':>9}"
        lines.append(f"  {m['threads']:7d} {m['size']:5d} {m['fp32_gflops']:9.1f} {bf16} {ratio}" + (f"  {m['note']}" if m["note"] else ""))
    lines.append(f"train.precision: auto -> {r['precision_auto']} ({r['precision_reason']})")
    g = r["gpu"]
    if g:
        peak = f"{g['peak_bf16_tflops']:g} TFLOP/s dense bf16 (pretrain.hardware.GPU_PEAK_BF16)" if g["peak_bf16_tflops"] \
            else "not in the peak table: give train.peak_tflops / --peak-tflops"
        lines.append(f"gpu: {g['name']} x{g['count']}, compute capability {g['capability']}, peak {peak}")
    else:
        lines.append("gpu: none (torch.cuda.is_available() is False)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="bench/machine.py", description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="threads of one rank (default: plan_threads(hw, 2))")
    p.add_argument("--seconds", type=float, default=0.2, help="time per matmul measurement")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if args.threads < 0:
        p.error("--threads must be >= 1 (0: the default)")
    try:
        r = report(args.threads, args.seconds)
    except ValueError as e:  # e.g. OMP_NUM_THREADS=abc
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(r, indent=1) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
