"""pretrain/plan.py: the memory plan against DeepSpeed's own estimators and a measured CPU run; refusals and
their suggestions; the time and checkpoint figures; the command line.

Run as a script (``python tests/test_plan.py PORT SPECS CKPT_DIR``) it is the measured side: a fresh process
that trains each spec two steps in a world of one and prints its peak resident-memory growth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

GiB = 2**30


def cfg_of(model: dict, seq: int = 64, micro: int = 2, global_batch: int | None = None, ds: str = "ds_configs/zero2.json",
           precision: str = "bf16", **train):
    from pretrain.run_config import run_config_from_dict

    return run_config_from_dict({
        "name": "plan_test", "data": {"path": "no/such/data", "seq_len": seq}, "model": model,
        "train": {"micro_batch_size": micro, "global_batch_size": global_batch or micro, "max_steps": 100,
                  "precision": precision, **train},
        "deepspeed": {"config": ds}})


def ds_json(tmp_path: Path, stage: int, accum: str | None = "fp32", comm: str | None = None, **zero) -> str:
    body = {"zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True, **zero}}
    if accum:
        body["data_types"] = {"grad_accum_dtype": accum}
    if comm:
        body["communication_data_type"] = comm
    path = tmp_path / f"zero{stage}_{accum}_{comm}.json"
    path.write_text(json.dumps(body))
    return str(path)


PHI3 = {"preset": "phi3-mini"}


# ---- model states against DeepSpeed's estimators --------------------------------------------------

@pytest.mark.parametrize("gpus", [1, 8, 64])
def test_zero2_model_states_equal_deepspeeds_estimate(tmp_path, gpus):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    from pretrain.plan import plan_memory

    # bf16 gradients (DeepSpeed's assumption): 2N + 18N/W, exactly
    plan = plan_memory(cfg_of(PHI3, 4096, 1, ds=ds_json(tmp_path, 2, accum=None)), gpus, "H100-80GB", suggest=False)
    n = plan.n_params
    _, gpu = estimate_zero2_model_states_mem_needs(n, num_gpus_per_node=gpus, cpu_offload=False)
    assert plan.model_states == pytest.approx(gpu, abs=2)
    # fp32 accumulation (ds_configs/zero2.json): DeepSpeed keeps one fp32 partition, no bf16 one: 2N/W less
    shipped = plan_memory(cfg_of(PHI3, 4096, 1, ds="ds_configs/zero2.json"), gpus, "H100-80GB", suggest=False)
    assert shipped.model_states == pytest.approx(gpu - 2 * n / gpus, abs=2)


@pytest.mark.parametrize("gpus", [2, 8])
def test_zero3_model_states_equal_deepspeeds_estimate_and_largest_module(gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs, model_to_params

    from pretrain.model.config import GPTConfig
    from pretrain.plan import largest_module_params, plan_memory

    small = GPTConfig(vocab_size=1000, d_model=64, n_layers=2, n_heads=4, d_ff=96, max_seq_len=64)
    total, largest = model_to_params(small.build())
    assert (total, largest) == (small.num_params(), largest_module_params(small))
    plan = plan_memory(cfg_of(PHI3, 4096, 1, ds="ds_configs/zero3.json"), gpus, "H100-80GB", suggest=False)
    from pretrain.model.presets import get_preset

    big = largest_module_params(get_preset("phi3-mini"))
    _, gpu, largest_mem = estimate_zero3_model_states_mem_needs(plan.n_params, big, num_gpus_per_node=gpus,
                                                                cpu_offload=False, cpu_offload_params=False)
    assert plan.model_states == pytest.approx(gpu, abs=2)
    assert next(p.bytes for p in plan.parts if p.name == "gathered module") == largest_mem


def test_zero_stages_shard_what_they_should():
    from pretrain.plan import plan_memory

    def parts(ds, gpus):
        p = plan_memory(cfg_of(PHI3, 4096, 1, ds=ds), gpus, "H200", suggest=False)
        return {x.name: x.bytes for x in p.parts}, p.n_params

    for stage in (1, 2, 3):
        one, n = parts(f"ds_configs/zero{stage}.json", 1)
        eight, _ = parts(f"ds_configs/zero{stage}.json", 8)
        assert eight["optimizer states"] == pytest.approx(one["optimizer states"] / 8) == pytest.approx(12 * n / 8)
        assert (eight["gradients"] < one["gradients"]) == (stage >= 2)
        assert (eight["parameters"] < one["parameters"]) == (stage == 3)
    assert parts("ds_configs/zero1.json", 8)[0]["gradients"] == 4 * n  # BF16_Optimizer's whole fp32 gradient


# ---- the plan against a measured CPU run ------------------------------------------------------------

MEASURED = [  # ~13M parameters: model states ~250 MB in fp32, activations and loss ~100-220 MB
    {"model": {"d_model": 384, "n_layers": 4, "n_heads": 6, "vocab_size": 8192, "max_seq_len": 128}, "seq": 128,
     "micro": 8, "stage": 2, "save": True},
    {"model": {"d_model": 384, "n_layers": 4, "n_heads": 6, "vocab_size": 8192, "max_seq_len": 128,
               "activation_checkpointing": True}, "seq": 128, "micro": 8, "stage": 2},
    {"model": {"d_model": 384, "n_layers": 4, "n_heads": 6, "vocab_size": 8192, "max_seq_len": 128}, "seq": 128,
     "micro": 8, "stage": 3},
]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_plan_is_within_25_percent_of_a_measured_cpu_run(tmp_path):
    """A fresh process (its allocator fixed to give freed tensors back, so that its resident memory follows the live
    tensors as the CUDA caching allocator's allocated bytes do) trains each spec two steps in fp32 on a CPU; the
    growth of its peak resident memory over the run is the measured figure."""
    from pretrain.plan import plan_memory
    from tests.conftest import free_port, run_cli

    res = run_cli([sys.executable, __file__, str(free_port()), json.dumps(MEASURED), str(tmp_path / "ckpt")],
                  env={"DS_ACCELERATOR": "cpu", "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    measured = json.loads(res.stdout.strip().splitlines()[-1])
    for spec, got in zip(MEASURED, measured, strict=True):
        cfg = cfg_of(spec["model"], spec["seq"], spec["micro"], ds=f"ds_configs/zero{spec['stage']}.json", precision="fp32")
        plan = plan_memory(cfg, 1, "cpu")
        assert got["grown"] > 200e6, got  # the states are many MB: a 25% check means something
        ratio = plan.allocated_peak / got["grown"]
        assert 0.75 <= ratio <= 1.25, (spec, plan.text(), got)
        if spec.get("save"):
            assert 0.9 <= plan.checkpoint_bytes / got["checkpoint_bytes"] <= 1.1, (plan.checkpoint_bytes, got)


def _measure(port: str, specs: list[dict], ckpt_dir: str) -> None:
    import gc
    import os

    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port)
    import torch

    from pretrain.config_loader import Problems, Sources
    from pretrain.distributed import init_distributed
    from pretrain.hardware import PrecisionChoice
    from pretrain.run_config import deepspeed_config
    from pretrain.trainer import build_engine
    from pretrain.training.step import train_step

    def status(key: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    def run(cfg, steps: int, save: str = "") -> int:
        ds = deepspeed_config(cfg, PrecisionChoice("fp32", "test"), Problems(Sources("test")))
        torch.manual_seed(0)
        engine = build_engine(cfg.model.build(), cfg.optimizer, ds, "cpu")
        gen = torch.Generator().manual_seed(1)
        for _ in range(steps):
            batch = torch.randint(0, cfg.model.vocab_size, (cfg.train.micro_batch_size, cfg.seq_len + 1), generator=gen)
            train_step(engine, [batch], cfg.seq_len, "cpu")
        size = 0
        if save:
            engine.save_checkpoint(save, tag="t")
            size = sum(f.stat().st_size for f in Path(save).rglob("*") if f.is_file())
        engine.destroy()
        del engine
        gc.collect()
        return size

    init_distributed(1)
    torch.set_num_threads(2)
    run(cfg_of({"preset": "tiny", "vocab_size": 256}, 16, 2, precision="fp32"), 2)  # DeepSpeed's one-time set-up
    out = []
    for spec in specs:
        cfg = cfg_of(spec["model"], spec["seq"], spec["micro"], ds=f"ds_configs/zero{spec['stage']}.json", precision="fp32")
        gc.collect()
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the current resident set
        size = run(cfg, 2)
        grown = status("VmHWM") - base
        if spec.get("save"):
            size = run(cfg, 1, save=ckpt_dir)
        out.append({"grown": grown, "checkpoint_bytes": size})
    print(json.dumps(out))


# ---- refusals and suggestions ------------------------------------------------------------------------

def test_a_config_that_cannot_fit_is_refused_with_the_part_and_the_changes_that_fit():
    from pretrain.plan import plan_memory

    cfg = cfg_of({**PHI3, "activation_checkpointing": False}, 4096, 4, global_batch=512, ds="ds_configs/zero2.json")
    plan = plan_memory(cfg, 8, "A100-40GB")
    assert not plan.fits and plan.total > plan.device.memory
    # every part counted once: the peak phase's parts (the resident ones among them) plus the margin
    counted = [p for p in plan.parts if p.live_in(plan.peak_phase_key) or p.phase == "margin"]
    assert plan.total == pytest.approx(sum(p.bytes for p in counted))
    [problem] = plan.problems()
    assert "does not fit" in problem and "A100-40GB" in problem and "the largest part is activations" in problem
    assert plan.suggestions, problem
    for changes, fixed in plan.suggestions:
        assert fixed.fits and fixed.total <= fixed.device.memory
        assert any(c in problem for c in changes)
    # Checkpointing alone fits (ZeRO-2 keeps the whole bf16 model per GPU, ~30 GiB with it); ZeRO-3 alone does not
    # (the activations stay). The first suggestion is the single change that fits, and it is what that config plans.
    ckpt_only = plan_memory(cfg_of({**PHI3, "activation_checkpointing": True}, 4096, 4, global_batch=512,
                                   ds="ds_configs/zero2.json"), 8, "A100-40GB")
    zero3_only = plan_memory(cfg_of({**PHI3, "activation_checkpointing": False}, 4096, 4, global_batch=512,
                                    ds="ds_configs/zero3.json"), 8, "A100-40GB")
    assert ckpt_only.fits and not zero3_only.fits
    changes, first = plan.suggestions[0]
    assert changes == ["model.activation_checkpointing=true"]
    again = ckpt_only
    assert again.fits and again.total == pytest.approx(first.total)


def test_a_smaller_micro_batch_keeps_the_global_batch():
    from pretrain.plan import plan_memory

    # ZeRO-3 and checkpointing already on: only the micro-batch is left to change
    cfg = cfg_of({**PHI3, "activation_checkpointing": True}, 4096, 32, global_batch=512, ds="ds_configs/zero3.json")
    plan = plan_memory(cfg, 8, "A100-40GB")
    assert not plan.fits
    changes, fixed = plan.suggestions[0]
    assert len(changes) == 1 and changes[0].startswith("train.micro_batch_size=")
    micro = int(changes[0].split("=")[1].split()[0])
    assert micro < 32 and fixed.layout.grad_accum * micro * 8 == 512 and fixed.fits


def test_the_shipped_phi3_config_fits_on_8_h100_and_8_a100_40gb_without_data():
    from pretrain.plan import plan_memory
    from pretrain.run_config import load_run_config

    cfg = load_run_config(ROOT / "configs" / "phi3_mini.yaml")
    for gpu in ("H100-80GB", "A100-40GB"):
        plan = plan_memory(cfg, 8, gpu)
        assert plan.fits, plan.text()
        assert plan.seq_len == 4096 and "model.max_seq_len" in plan.seq_len_from and plan.precision == "bf16"
        assert plan.layout.stage == 3 and plan.layout.checkpointing and plan.layout.grad_accum == 16
    assert plan_memory(cfg, 8, "A100-40GB", seq_len=2048).seq_len == 2048


# ---- time and checkpoint -------------------------------------------------------------------------------

def test_step_time_follows_the_peak_table_and_mfu():
    from pretrain.hardware import gpu_peak_flops
    from pretrain.plan import plan_memory

    for ckpt, factor in ((False, 1.0), (True, 4 / 3)):
        cfg = cfg_of({**PHI3, "activation_checkpointing": ckpt}, 4096, 4, global_batch=512, ds="ds_configs/zero3.json")
        for gpu, name in (("H100-80GB", "H100"), ("A100-80GB", "A100")):
            plan = plan_memory(cfg, 8, gpu, mfu=0.5, suggest=False)
            want = 512 * 4096 * plan.flops_per_token * factor / (8 * gpu_peak_flops(name) * 0.5)
            assert plan.step_s == pytest.approx(want) and plan.tokens_per_s == pytest.approx(512 * 4096 / want)
    assert plan.checkpoint_bytes == 14 * plan.n_params  # bf16 weights + fp32 master + two moments


@pytest.mark.parametrize("kwargs, match", [
    ({"gpus": 0}, "--gpus = 0"), ({"mfu": float("nan")}, "--mfu"), ({"mfu": 1.5}, "--mfu"),
    ({"gpu": "H100"}, "expected one of H100-80GB"), ({"seq_len": 8192}, "at most model.max_seq_len"),
])
def test_bad_inputs_raise_a_plan_error_naming_them(kwargs, match):
    from pretrain.plan import PlanError, plan_memory

    args = {"gpus": 8, "gpu": "H100-80GB", **kwargs}
    with pytest.raises(PlanError, match=match):
        plan_memory(cfg_of(PHI3, 4096, 1), args.pop("gpus"), args.pop("gpu"), **args)


def test_a_ds_json_the_plan_cannot_read_is_named(tmp_path):
    from pretrain.plan import PlanError, plan_memory

    with pytest.raises(PlanError, match="stage = 0"):
        plan_memory(cfg_of(PHI3, ds=ds_json(tmp_path, 0)), 8, "H100-80GB")
    with pytest.raises(PlanError, match="reduce_bucket_size = inf"):
        plan_memory(cfg_of(PHI3, ds=ds_json(tmp_path, 2, reduce_bucket_size=float("inf"))), 8, "H100-80GB")
    with pytest.raises(PlanError, match="not found"):
        plan_memory(cfg_of(PHI3, ds=str(tmp_path / "missing.json")), 8, "H100-80GB")


# ---- the command line ------------------------------------------------------------------------------------

def _cli(args):
    from pretrain.plan import main
    from tests.inprocess import call_main

    return call_main(main, args)


def test_cli_prints_the_plan_and_exits_by_the_verdict():
    code, out, err = _cli(["--config", "configs/phi3_mini.yaml", "--gpus", "8", "--gpu", "A100-40GB"])
    assert code == 0, err
    for word in ("activations", "logits and loss", "optimizer states", "CUDA context", "FITS", "tokens/s", "checkpoint"):
        assert word in out, out
    code, out, err = _cli(["--config", "configs/phi3_mini.yaml", "--gpus", "8", "--gpu", "A100-40GB",
                           "model.activation_checkpointing=false", "deepspeed.config=ds_configs/zero2.json", "--json"])
    assert code == 1
    d = json.loads(out)
    assert not d["fits"] and d["problems"] and d["suggestions"] and d["total"] > d["memory"]


@pytest.mark.parametrize("args, match", [
    (["--gpus", "0"], "--gpus 0"), (["--gpu", "V100"], "--gpu 'V100'"), (["--mfu", "nan"], "--mfu nan"),
    (["--seq-len", "-1"], "--seq-len -1"), (["stray"], "unrecognized arguments: stray"),
])
def test_cli_refuses_bad_flags(args, match):
    base = {"--gpus": "8", "--gpu": "H100-80GB"}
    argv = ["--config", "configs/phi3_mini.yaml"]
    for k, v in base.items():
        if k not in args:
            argv += [k, v]
    code, out, err = _cli(argv + args)
    assert code == 2 and match in err and out == ""


def test_cli_needs_a_vocabulary_without_data():
    code, out, err = _cli(["--config", "configs/demo_cpu.yaml", "--gpus", "1", "--gpu", "H100-80GB",
                           "data.path=no/such/dir"])
    assert code == 2 and "model.vocab_size is not set" in err and "no/such/dir" in err
    code, out, err = _cli(["--config", "configs/demo_cpu.yaml", "--gpus", "1", "--gpu", "H100-80GB",
                           "data.path=no/such/dir", "model.vocab_size=512", "data.seq_len=256"])
    assert code == 0 and "FITS" in out


if __name__ == "__main__":
    _measure(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3])
