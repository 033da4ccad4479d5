"""bench/gpu_check.py: its CPU-side logic, the no-GPU exit, the --cpu-smoke flow end to end, and (on a GPU) the real check."""

from __future__ import annotations

import json
import math
import re
import sys

import pytest

from bench import gpu_check as gc
from bench.gpu_check import CheckFailed, CheckResult
from pretrain.model.presets import get_preset
from tests.conftest import ROOT, run_cli

SCRIPT = str(ROOT / "bench" / "gpu_check.py")


def passing(mfu: float | None = 0.5, compiled: float | None = None) -> list[CheckResult]:
    out = [
        CheckResult("preflight", True, "H100"),
        CheckResult("distributed", True, "backend nccl"),
        CheckResult("sdpa", True, "ok"),
        CheckResult("throughput:gpt-1b", True, "ok", {"mfu": mfu, "tokens_per_s": 5e4, "ours_over_bare": 1.02,
                                                      "ratio_min": 1.0, "ratio_max": 1.05, "peak_mem_gib": 41.5}),
        CheckResult("throughput:phi3-mini-4l", True, "ok", {"mfu": 0.2}),
    ]
    if compiled is not None:
        out.append(CheckResult("throughput:gpt-1b+compile", True, "ok", {"mfu": compiled}))
    out += [CheckResult("zero3-ckpt:phi3-mini-4l", True, "ok", {"mfu": 0.1}),
            CheckResult("throughput:mup-alibi", True, "ok", {"mfu": 0.05}),
            CheckResult("checkpoint", True, "ok")]
    return out


# ---- the verdict ------------------------------------------------------------------------------

def test_all_pass_exits_zero_and_adds_the_floor_check_after_the_throughputs():
    code, results = gc.verdict(passing(0.5), 0.28)
    assert code == gc.EXIT_OK == 0
    names = [r.name for r in results]
    assert names == ["preflight", "distributed", "sdpa", "throughput:gpt-1b", "throughput:phi3-mini-4l", "mfu-floor",
                     "zero3-ckpt:phi3-mini-4l", "throughput:mup-alibi", "checkpoint"]
    floor = results[5]
    assert floor.ok and "gpt-1b eager MFU 50.0% >= floor 28%" in floor.detail


def test_compiled_mfu_has_its_own_floor_after_the_compiled_check():
    code, results = gc.verdict(passing(0.30, compiled=0.40), 0.28, mfu_floor_compiled=0.38)
    names = [r.name for r in results]
    assert code == 0 and names.index("mfu-floor:compiled") == names.index("throughput:gpt-1b+compile") + 1
    assert "compiled MFU 40.0% >= floor 38%" in results[names.index("mfu-floor:compiled")].detail
    code, results = gc.verdict(passing(0.30, compiled=0.37), 0.28, mfu_floor_compiled=0.38)
    assert code == 1 and [r.name for r in results if not r.ok] == ["mfu-floor:compiled"]
    code, results = gc.verdict(passing(0.27, compiled=0.45), 0.28, mfu_floor_compiled=0.38)  # eager under its floor
    assert code == 1 and [r.name for r in results if not r.ok] == ["mfu-floor"]
    code, results = gc.verdict(passing(0.30), 0.28, mfu_floor_compiled=0.38)  # asked for, not measured
    assert code == 1 and "not measured" in next(r.detail for r in results if r.name == "mfu-floor:compiled")


def test_the_zero3_and_mup_lines_are_not_under_a_floor():
    results = passing(0.5)
    for r in results:
        if r.name in ("zero3-ckpt:phi3-mini-4l", "throughput:mup-alibi"):
            r.figures["mfu"] = 0.001
    assert gc.verdict(results, 0.28)[0] == 0


@pytest.mark.parametrize("value, floor", [(0.349, 0.35), (0.0, 0.35), (0.5, 0.6)])
def test_mfu_under_the_floor_exits_nonzero(value, floor):
    code, results = gc.verdict(passing(value), floor)
    assert code == gc.EXIT_FAILED
    bad = [r for r in results if not r.ok]
    assert [r.name for r in bad] == ["mfu-floor"]
    assert f"< floor {floor:.0%}" in bad[0].detail


def test_only_the_1b_models_mfu_counts():
    results = passing(0.5)
    results[4].figures["mfu"] = 0.01  # the Phi-3 slice is low: not judged
    assert gc.verdict(results, 0.35)[0] == 0


@pytest.mark.parametrize("name", ["preflight", "distributed", "sdpa", "throughput:phi3-mini-4l", "zero3-ckpt:phi3-mini-4l",
                                  "throughput:mup-alibi", "checkpoint"])
def test_any_failed_check_exits_nonzero(name):
    results = passing(0.5)
    for r in results:
        if r.name == name:
            r.ok, r.detail = False, "broke"
    code, out = gc.verdict(results, 0.35)
    assert code == gc.EXIT_FAILED
    assert [r.name for r in out if not r.ok] == [name]


def test_a_1b_model_that_was_not_measured_or_has_no_peak_fails_the_floor():
    failed = passing(0.5)
    failed[3].ok = False
    code, out = gc.verdict(failed, 0.35)
    assert code == 1 and {r.name for r in out if not r.ok} == {"throughput:gpt-1b", "mfu-floor"}
    no_peak = passing(None)
    code, out = gc.verdict(no_peak, 0.35)
    assert code == 1 and "--peak-tflops" in next(r.detail for r in out if r.name == "mfu-floor")
    missing = [r for r in passing(0.5) if r.name != "throughput:gpt-1b"]
    assert gc.verdict(missing, 0.35)[0] == 1


def test_the_floor_is_not_applied_in_the_cpu_smoke_run_and_an_empty_run_fails():
    code, out = gc.verdict(passing(0.001), 0.35, apply_floor=False)
    assert code == 0 and "mfu-floor" not in [r.name for r in out]
    assert gc.verdict([], 0.35, apply_floor=False)[0] == 1


def test_mfu_arithmetic():
    assert gc.mfu(989e12 * 0.5, 1.0, 989e12) == pytest.approx(0.5)
    assert gc.mfu(2e15, 4.0, 1e15) == pytest.approx(0.5)
    assert gc.mfu(1e15, 1.0, None) is None
    assert gc.mfu(1e15, 0.0, 1e15) is None


# ---- models, plan, arguments --------------------------------------------------------------------

def test_the_1b_model_is_about_1b_params_with_flash_friendly_shapes():
    spec = {s.name: s for s in gc.model_specs()}["gpt-1b"]
    g = spec.gpt
    assert 0.9e9 <= g.num_params() <= 1.2e9
    assert g.d_model == 2048 and 16 <= g.n_layers <= 18 and spec.seq_len == 2048 and g.max_seq_len >= 2048
    assert g.pos == "rope"  # ALiBi's additive bias rules out the flash kernel
    assert g.head_dim in (64, 128) and g.head_dim % 8 == 0
    assert spec.tokens_per_step == 2048 * spec.micro_batch * spec.accum and spec.accum >= 4  # ZeRO's step amortized
    assert spec.flops_per_step == pytest.approx(g.flops_per_token(2048) * spec.tokens_per_step)
    assert "1.03B params" in spec.describe()


def test_the_phi3_model_is_phi3_mini_with_fewer_layers():
    spec = {s.name: s for s in gc.model_specs()}["phi3-mini-4l"]
    ref = get_preset("phi3-mini")
    for name in ("d_model", "n_heads", "d_ff", "vocab_size", "norm", "pos", "mlp", "tie_embeddings", "bias"):
        assert getattr(spec.gpt, name) == getattr(ref, name), name
    assert spec.gpt.n_layers == 4 < ref.n_layers
    assert spec.seq_len == 4096 <= spec.gpt.max_seq_len
    per_layer = (ref.num_params(False) - ref.d_model) / ref.n_layers
    assert spec.gpt.num_params() == pytest.approx(ref.num_params() - 28 * per_layer)


def test_plan_of_checks():
    plan = gc.make_plan(gc.parse_args([]))
    assert plan.checks == ["preflight", "distributed", "sdpa", "throughput:gpt-1b", "throughput:phi3-mini-4l", "mfu-floor",
                           "zero3-ckpt:phi3-mini-4l", "throughput:mup-alibi", "checkpoint"]
    assert all(s.accum == 4 for s in plan.models) and plan.zero3.gpt.activation_checkpointing
    assert plan.zero3.gpt.n_layers == 4 and plan.mup.gpt.pos == "alibi" and plan.mup.gpt.mup is not None
    assert (plan.device, plan.precision, plan.backend, plan.apply_mfu_floor) == ("cuda", "bf16", "nccl", True)
    assert (plan.warmup, plan.steps) == (3, 20)
    assert 100e6 < plan.aux.gpt.num_params() < 300e6
    quick = gc.make_plan(gc.parse_args(["--quick", "--compile"]))
    assert quick.checks[5:8] == ["mfu-floor", "throughput:gpt-1b+compile", "mfu-floor:compiled"]
    assert (quick.warmup, quick.steps) == (2, 6)
    assert gc.make_plan(gc.parse_args(["--quick", "--steps", "9"])).steps == 9
    one = gc.make_plan(gc.parse_args(["--models", "gpt-1b", "--micro-batch", "2", "--accum", "8"]))
    assert [s.name for s in one.models] == ["gpt-1b"] and (one.models[0].micro_batch, one.models[0].accum) == (2, 8)
    args = gc.parse_args([])
    assert (args.mfu_floor, args.mfu_floor_compiled) == (0.28, 0.38) and args.pg_timeout < 600


def test_cpu_smoke_plan_is_tiny_fp32_gloo_three_steps_without_the_floor():
    plan = gc.make_plan(gc.parse_args(["--cpu-smoke"]))
    assert (plan.device, plan.precision, plan.backend, plan.steps, plan.apply_mfu_floor) == ("cpu", "fp32", "gloo", 3, False)
    tiny = get_preset("tiny")
    for spec in plan.models + [plan.aux]:
        assert spec.seq_len == 64 and (spec.gpt.d_model, spec.gpt.n_layers) == (tiny.d_model, tiny.n_layers)


@pytest.mark.parametrize("argv", [["--models", "gpt-7b"], ["--steps", "0"], ["--warmup", "0"], ["--mfu-floor", "1.5"],
                                  ["--mfu-floor", "nan"], ["--mfu-floor-compiled", "-0.1"], ["--peak-tflops", "-1"],
                                  ["--peak-tflops", "inf"], ["--micro-batch", "0"], ["--accum", "0"],
                                  ["--check-timeout", "nan"], ["--check-timeout", "5"], ["--pg-timeout", "1e9"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        gc.parse_args(argv)
    assert e.value.code == 2


def test_out_dir_precedence(tmp_path):
    assert gc.out_dir(str(tmp_path), {"OUT": "/elsewhere"}) == tmp_path
    assert str(gc.out_dir(None, {"OUT": "/elsewhere"})) == "/elsewhere"
    assert str(gc.out_dir(None, {})) == "gpu_check_out"


def test_precheck_needs_cuda_unless_smoke():
    assert gc.precheck(cuda_available=False, cpu_smoke=False) == (2, gc.NO_CUDA_MESSAGE)
    assert gc.precheck(cuda_available=True, cpu_smoke=False) is None
    assert gc.precheck(cuda_available=False, cpu_smoke=True) is None


def test_ds_config_is_zero2_json_filled_as_run_config_fills_it():
    ds = gc.ds_config("bf16", 4, accum=4)
    shipped = json.loads((ROOT / "ds_configs" / "zero2.json").read_text())
    assert ds["zero_optimization"] == shipped["zero_optimization"] and ds["zero_optimization"]["stage"] == 2
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 4, 4)
    assert ds["communication_data_type"] == "fp32"  # gradients reduced in fp32 (the shipped JSON)
    assert gc.ds_config("bf16", 2, path=gc.ZERO3_JSON)["zero_optimization"]["stage"] == 3
    assert ds["gradient_clipping"] == 1.0
    fp32 = gc.ds_config("fp32", 2)
    assert fp32["bf16"]["enabled"] is False and fp32["train_batch_size"] == 2


# ---- running checks, the summary ----------------------------------------------------------------

def test_run_check_turns_exceptions_into_fail_lines_and_keeps_figures(capsys):
    ok = gc.run_check("a", lambda: ("fine", {"x": 1}))
    assert ok.ok and ok.figures == {"x": 1}

    def boom():
        raise RuntimeError("CUDA out of memory")

    def unmet():
        e = CheckFailed("losses differ")
        e.figures = {"mfu": 0.4}
        raise e

    cleaned = []
    bad = gc.run_check("b", boom, lambda: cleaned.append(1))
    assert not bad.ok and bad.detail == "RuntimeError: CUDA out of memory" and cleaned == [1]
    after = gc.run_check("d", lambda: ("fine", {"x": 1}), lambda: {"allocated_after_gib": 0.01}, watchdog_s=60)
    assert after.figures == {"x": 1, "allocated_after_gib": 0.01}
    unmet_r = gc.run_check("c", unmet)
    assert not unmet_r.ok and unmet_r.detail == "failed: losses differ" and unmet_r.figures == {"mfu": 0.4}
    out = capsys.readouterr().out.splitlines()
    assert out == ["PASS a: fine", "FAIL b: RuntimeError: CUDA out of memory", "PASS d: fine", "FAIL c: failed: losses differ"]


def test_summary_table_and_json():
    results = passing(0.3)
    results[-1].ok, results[-1].detail = False, "3 of 40 tensors differ"
    code, results = gc.verdict(results, 0.35)  # the eager floor given by hand
    meta = {"device": "NVIDIA H100 80GB HBM3", "precision": "bf16", "peak": "peak 989 TFLOP/s"}
    text = gc.format_summary(results, meta, code)
    lines = text.splitlines()
    assert "NVIDIA H100 80GB HBM3" in lines[0]
    row = next(l for l in lines if l.startswith("throughput:gpt-1b"))
    assert row.split()[1:5] == ["PASS", "50000", "30.0%", "41.50"] and "1.020" in row and "(1.000..1.050)" in row
    assert next(l for l in lines if l.startswith("checkpoint")).split()[1] == "FAIL"
    assert "  FAIL mfu-floor: gpt-1b eager MFU 30.0% < floor 35%" in lines
    assert "  FAIL checkpoint: 3 of 40 tensors differ" in lines
    assert lines[-1] == "7/9 checks passed; exit code 1"
    d = json.loads(json.dumps(gc.summary_dict(results, meta, code)))
    assert d["exit_code"] == 1 and d["passed"] is False and d["complete"] is True and len(d["checks"]) == 9
    assert d["checks"][3]["figures"]["mfu"] == 0.3
    partial = gc.summary_dict(results[:2], meta, None, running="sdpa")
    assert (partial["complete"], partial["running"], partial["exit_code"], partial["passed"]) == (False, "sdpa", None, False)


def test_the_watchdog_ends_a_stuck_check_and_the_summary_so_far_stays(tmp_path):
    summary = tmp_path / "gpu_check_summary.json"
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from bench import gpu_check as g; "
            f"from pathlib import Path; p = Path({str(summary)!r}); "
            "done = [g.CheckResult('distributed', True, 'ok')]; "
            "g.write_summary(p, g.summary_dict(done, {}, None, running='stuck')); "
            "g.run_check('stuck', lambda: (time.sleep(60), ('never', {}))[1], watchdog_s=1)")
    res = run_cli([sys.executable, "-c", code], timeout=60)
    assert res.returncode == 1 and "Timeout" in res.stderr and "time.sleep" not in res.stdout
    d = json.loads(summary.read_text())
    assert d["running"] == "stuck" and d["complete"] is False and [c["name"] for c in d["checks"]] == ["distributed"]


def test_sdpa_pick_is_the_fastest_correct_backend_cudnn_first_on_ties():
    assert gc.pick_sdpa({"cudnn": 1.0, "flash": 2.0, "efficient": 3.0}, {"cudnn": True, "flash": True, "efficient": True}) == "cudnn"
    assert gc.pick_sdpa({"cudnn": 1.0, "flash": 2.0, "efficient": 3.0}, {"cudnn": False, "flash": True, "efficient": True}) == "flash"
    assert gc.pick_sdpa({"cudnn": 2.0, "flash": 2.0, "efficient": 1.5}, {"cudnn": True, "flash": True, "efficient": True}) == "efficient"
    assert gc.pick_sdpa({"cudnn": 2.0, "flash": 2.0, "efficient": None}, {"cudnn": True, "flash": True}) == "cudnn"
    assert gc.pick_sdpa({"cudnn": None, "flash": None, "efficient": 1.0}, {"efficient": False}) is None


def test_nvidia_smi_parse():
    got = gc.parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 700.00, 700.00, 1980, 550.54.15\n")
    assert got == {"name": "NVIDIA H100 80GB HBM3", "memory_total_mib": 81559.0, "power_limit_w": 700.0,
                   "power_max_limit_w": 700.0, "sm_clock_max_mhz": 1980.0, "driver": "550.54.15"}
    assert gc.parse_nvidia_smi("NVIDIA A100, 40960, [N/A], 400, 1410, 535")["power_limit_w"] is None
    assert gc.parse_nvidia_smi("garbage") == {}


# ---- the script -----------------------------------------------------------------------------------

def test_without_cuda_it_exits_2_with_one_line():
    res = run_cli([sys.executable, SCRIPT], env={"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"}, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert res.stderr.strip().splitlines() == [gc.NO_CUDA_MESSAGE]
    assert res.stdout == ""


def test_cpu_smoke_runs_the_whole_flow(tmp_path):
    res = run_cli([sys.executable, SCRIPT, "--cpu-smoke", "--compile", "--compile-backend", "aot_eager",
                   "--out", str(tmp_path)], env={"DS_ACCELERATOR": "cpu"}, timeout=120)
    assert res.returncode == 0, f"STDOUT:\n{res.stdout[-4000:]}\nSTDERR:\n{res.stderr[-4000:]}"
    d = json.loads((tmp_path / "gpu_check_summary.json").read_text())
    names = [c["name"] for c in d["checks"]]
    assert names == ["preflight", "distributed", "sdpa", "throughput:gpt-1b", "throughput:phi3-mini-4l",
                     "throughput:gpt-1b+compile", "zero3-ckpt:phi3-mini-4l", "throughput:mup-alibi", "checkpoint"]
    assert d["exit_code"] == 0 and d["complete"] is True and all(c["ok"] for c in d["checks"])
    assert d["meta"]["cpu_smoke"] is True and d["meta"]["precision"] == "fp32"
    by = {c["name"]: c for c in d["checks"]}
    assert by["distributed"]["figures"]["backend"] == "gloo" and by["distributed"]["figures"]["pg_timeout_s"] == 180
    assert by["preflight"]["figures"]["torch"] and by["preflight"]["figures"]["deepspeed"]
    sdpa = by["sdpa"]["figures"]
    assert sdpa["chosen"] == "flash" == d["meta"]["sdpa"] and sdpa["correct"]["flash"]  # the one CPU kernel of the three
    tp = by["throughput:gpt-1b"]["figures"]
    assert tp["tokens_per_s"] > 0 and 0 < tp["mfu"] < 1 and tp["ours_over_bare"] > 0 and tp["sdpa"] == "flash"
    assert tp["micro_batches_per_update"] == 2 and tp["tokens_per_step"] == 64 * 2 * 2
    assert len(tp["losses_ours"]) == 1 and all(math.isfinite(x) for x in tp["losses_ours"])
    assert tp["first_loss_rel_diff"] < 1e-4  # fp32, the same weights and batch: the same first loss
    assert by["throughput:gpt-1b+compile"]["figures"]["first_loss_rel_diff_to_eager"] < 1e-3
    assert by["zero3-ckpt:phi3-mini-4l"]["figures"]["zero_stage"] == 3
    assert "activation checkpointing" in by["zero3-ckpt:phi3-mini-4l"]["detail"]
    assert "alibi, muP" in by["throughput:mup-alibi"]["detail"] and by["throughput:mup-alibi"]["figures"]["sdpa"] == "default"
    for name in names[3:]:  # every engine of a check is destroyed after it
        assert by[name]["figures"]["engines_destroyed"] >= 1, name
    assert re.search(r"all \d+ tensors equal", by["checkpoint"]["detail"])
    for name in names:
        assert f"PASS {name}:" in res.stdout
    assert "9/9 checks passed; exit code 0" in res.stdout


@pytest.mark.gpu
def test_real_gpu_check_quick(tmp_path):
    res = run_cli([sys.executable, SCRIPT, "--quick", "--compile", "--out", str(tmp_path)], env={"DS_ACCELERATOR": "cuda"},
                  timeout=600)
    summary = tmp_path / "gpu_check_summary.json"
    assert summary.is_file(), f"exit {res.returncode}\nSTDOUT:\n{res.stdout[-6000:]}\nSTDERR:\n{res.stderr[-4000:]}"
    d = json.loads(summary.read_text())
    failed = [f"{c['name']}: {c['detail']}" for c in d["checks"] if not c["ok"]]
    assert res.returncode == 0 and not failed, f"{failed}\nSTDOUT:\n{res.stdout[-6000:]}\nSTDERR:\n{res.stderr[-4000:]}"
    by = {c["name"]: c for c in d["checks"]}
    assert by["distributed"]["figures"]["backend"] == "nccl" and by["sdpa"]["figures"]["chosen"]
    for name, c in by.items():  # what one check leaves allocated, the next one's peak would measure
        if "allocated_after_gib" in c["figures"]:
            assert c["figures"]["allocated_after_gib"] < 1.0, (name, c["figures"]["allocated_after_gib"])
