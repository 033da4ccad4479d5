"""Precision, threads and peak FLOP/s from an injected hardware description (pretrain/hardware.py)."""

from __future__ import annotations

import json

import pytest

from pretrain.hardware import Hardware, choose_precision, gpu_peak_flops, peak_flops, plan_threads
from pretrain.run_config import ds_precision, load_run_config, resolve

from .conftest import ROOT, tiny_overrides

DEMO = ROOT / "configs" / "demo_cpu.yaml"

AVX2 = Hardware(cpu_capability="AVX2", cores=2)
AVX512 = Hardware(cpu_capability="AVX512", cores=2)  # Skylake/Ice Lake: AVX-512 but no bf16 units
AVX512_BF16 = Hardware(cpu_capability="AVX512", avx512_bf16=True, cores=2)  # Cooper Lake, Zen 4
AMX = Hardware(cpu_capability="AVX512", amx_bf16=True, avx512_bf16=True, cores=2)  # torch says AVX512 there too
ARM = Hardware(cpu_capability="DEFAULT", cores=2)
SVE = Hardware(cpu_capability="SVE256", cores=2)


def gpu(name: str, cc: tuple[int, int]) -> Hardware:
    return Hardware(device="cuda", gpu_name=name, gpu_capability=cc, cpu_capability="AVX2", cores=16)


@pytest.mark.parametrize(
    "hw, precision, reason",
    [
        (AVX2, "fp32", "cpu: AVX2, no AMX or AVX512_BF16: no fast bf16"),
        (AVX512, "fp32", "cpu: AVX512, no AMX or AVX512_BF16: no fast bf16"),
        (ARM, "fp32", "cpu: DEFAULT, no AMX or AVX512_BF16: no fast bf16"),
        (SVE, "fp32", "cpu: SVE256, no AMX or AVX512_BF16: no fast bf16"),
        (AVX512_BF16, "bf16", "cpu: AVX512 with AVX512_BF16: fast bf16"),
        (AMX, "bf16", "cpu: AVX512 with AMX+AVX512_BF16: fast bf16"),
        (gpu("NVIDIA H100 80GB HBM3", (9, 0)), "bf16", "NVIDIA H100 80GB HBM3, compute capability 9.0: bf16 tensor cores"),
        (gpu("NVIDIA A100-SXM4-40GB", (8, 0)), "bf16", "compute capability 8.0: bf16 tensor cores"),
        (gpu("Tesla V100-SXM2-16GB", (7, 0)), "fp16", "compute capability 7.0: no bf16 tensor cores; fp16 with dynamic loss scaling"),
        (gpu("Tesla T4", (7, 5)), "fp16", "compute capability 7.5"),
    ],
)
def test_auto_precision_per_device(hw, precision, reason):
    choice = choose_precision("auto", hw)
    assert choice.precision == precision
    assert reason in choice.reason
    assert choice.warning is None


def test_bf16_units_that_torch_or_onednn_may_not_use_are_slow():
    assert choose_precision("auto", Hardware(cpu_capability="AVX2", amx_bf16=True, avx512_bf16=True)).precision == "fp32"
    capped = Hardware(cpu_capability="AVX512", amx_bf16=True, onednn_max_isa="AVX2")
    choice = choose_precision("auto", capped)
    assert choice.precision == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX2" in choice.reason
    ok = Hardware(cpu_capability="AVX512", amx_bf16=True, onednn_max_isa="AVX512_CORE_AMX")
    assert choose_precision("auto", ok).precision == "bf16"


def test_named_precisions_are_kept_and_slow_bf16_warns():
    assert choose_precision("fp32", AMX).precision == "fp32"
    assert choose_precision("bf16", AMX).warning is None
    slow = choose_precision("bf16", AVX2)
    assert slow.precision == "bf16" and slow.warning is not None
    assert "slow" in slow.warning and "auto picks fp32" in slow.warning
    old_gpu = choose_precision("bf16", gpu("Tesla V100", (7, 0)))
    assert old_gpu.precision == "bf16" and "auto picks fp16" in old_gpu.warning
    assert choose_precision("fp16", gpu("Tesla V100", (7, 0))).precision == "fp16"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        choose_precision("fp16", AVX2)


def test_threads_divide_the_cores_and_the_environment_wins():
    many = Hardware(cores=16)
    assert plan_threads(many, local_ranks=2).threads == 8
    assert plan_threads(many, local_ranks=2, loader_workers=3).threads == 5
    assert plan_threads(Hardware(cores=2), local_ranks=2, loader_workers=2).threads == 1  # never 0
    assert plan_threads(Hardware(cores=2), local_ranks=4).threads == 1
    env = Hardware(cores=16, env={"OMP_NUM_THREADS": "3"})
    plan = plan_threads(env, local_ranks=2)
    assert plan.threads == 3 and "OMP_NUM_THREADS=3" in plan.reason
    both = Hardware(cores=16, env={"OMP_NUM_THREADS": "3", "PRETRAIN_THREADS": "6"})
    assert plan_threads(both, local_ranks=2).threads == 6
    with pytest.raises(ValueError, match="PRETRAIN_THREADS='x'"):
        plan_threads(Hardware(env={"PRETRAIN_THREADS": "x"}), local_ranks=1)


def test_gpu_peak_table_and_override():
    assert gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_peak_flops("NVIDIA A10") == 125e12
    assert gpu_peak_flops("Some Future GPU") is None
    peak, why = peak_flops(gpu("Some Future GPU", (10, 0)), "bf16", 1)
    assert peak is None and "train.peak_tflops" in why
    assert peak_flops(gpu("Some Future GPU", (10, 0)), "bf16", 1, override_tflops=500.0) == (500e12, "train.peak_tflops")


def test_cpu_peak_is_measured():
    peak, why = peak_flops(AVX2, "fp32", 1)
    assert peak is not None and peak > 1e8 and "measured fp32" in why


@pytest.mark.parametrize("hw, block", [(AVX2, None), (AMX, "bf16"), (gpu("Tesla T4", (7, 5)), "fp16")])
def test_resolve_fills_the_precision_block(tmp_path, tiny_data, hw, block):
    cfg = load_run_config(DEMO, tiny_overrides(tiny_data, tmp_path))
    assert cfg.train.precision == "auto"
    _, ds = resolve(cfg, 2, hardware=hw)
    assert ds_precision(ds) == (block or "fp32")
    assert ds["bf16"]["enabled"] == (block == "bf16") and ds["fp16"]["enabled"] == (block == "fp16")
    if block == "fp16":
        assert ds["fp16"]["loss_scale"] == 0  # dynamic


def test_shipped_deepspeed_jsons_hold_no_precision():
    for path in sorted((ROOT / "ds_configs").glob("*.json")):
        ds = json.loads(path.read_text())
        assert not {"bf16", "fp16", "amp"} & set(ds), path
        assert "zero_optimization" in ds, path


def test_json_that_enables_bf16_is_refused_where_auto_picks_fp32(tmp_path, tiny_data):
    from pretrain.config_loader import ConfigError

    ds_path = tmp_path / "ds.json"
    ds_path.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}}))
    cfg = load_run_config(DEMO, tiny_overrides(tiny_data, tmp_path) + [f"deepspeed.config={ds_path}"])
    with pytest.raises(ConfigError) as e:
        resolve(cfg, 2, hardware=AVX2)
    assert "train.precision = 'auto'" in str(e.value) and "bf16.enabled = true" in str(e.value)
    assert "fp32 (train.precision = 'auto' on this hardware)" in str(e.value)
    _, ds = resolve(cfg, 2, hardware=AMX)  # where auto picks bf16 the JSON agrees
    assert ds["bf16"]["enabled"]
