"""What a cluster needs from a resize: the universal conversion outside any collective (offline with
``python -m pretrain.convert``, reused by the launch), optimizer step tensors where the optimizer needs them
after a universal load, and each rank on a GPU it can see."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pretrain import checkpoint, convert
from pretrain.distributed import device_index
from tests.conftest import ROOT, run_pretrain, run_ranks, tiny_overrides
from tests.inprocess import call_main

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
OV = {"train.max_steps": 6, "checkpoint.interval": 3, "eval.interval": 0, "logging.tensorboard": "false"}


@pytest.mark.distributed
def test_offline_conversion_is_reused_by_a_launch_on_another_world_size(tiny_data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    res = run_ranks(["--config", DEMO, "--stop-after-steps", "3", *tiny_overrides(tiny_data, run_dir, **OV)])
    assert res.returncode == 75, res.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    source, out = ckpts / "step_00000003", ckpts / ".universal" / "step_00000003"
    killed = ckpts / ".universal" / ".tmp-step_00000003"  # a conversion killed midway
    killed.mkdir(parents=True)
    (killed / "part.pt").write_bytes(b"half")

    code, stdout, stderr = call_main(convert.main, [str(run_dir), "--world-size", "1", "--workers", "2"])
    assert code == 0, stderr
    assert "converting" in stdout and f"universal checkpoint: {out}" in stdout
    assert convert.is_converted(out, source) and not killed.exists()
    assert json.loads((out / ".done").read_text())["source"] == str(source.resolve())
    code, stdout, _ = call_main(convert.main, [str(source), "--world-size", "1"])
    assert code == 0 and "converting" not in stdout  # done already: reused

    # The launch on 1 rank uses it; every optimizer step ends up on its parameter's device.
    seen = []
    real = checkpoint.optimizer_steps_to_device

    def inspecting(optimizer):
        moved = real(optimizer)
        base = optimizer.optimizer
        seen.extend((base.state[p]["step"].device, p.device) for g in base.param_groups for p in g["params"]
                    if "step" in base.state.get(p, {}))
        return moved

    monkeypatch.setattr(checkpoint, "optimizer_steps_to_device", inspecting)
    res = run_pretrain(["--config", DEMO, *tiny_overrides(tiny_data, run_dir, **OV)])
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"using the universal checkpoint {out} made before" in res.stdout
    assert "at step 3 (converted from 2 ranks)" in res.stdout and "converting" not in res.stdout
    assert seen and all(step_dev == param_dev for step_dev, param_dev in seen)
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["step"]] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) for r in recs if r["step"])
    assert not out.exists()  # the step-6 save pruned the conversion of step 3


def test_optimizer_steps_go_where_the_optimizer_reads_them():
    """Fused or capturable: on the parameter's device (here 'meta', the only other device a CPU has); otherwise on
    the CPU; a step that is not a float tensor becomes one."""
    on_device = torch.nn.Parameter(torch.zeros(2, device="meta"))
    on_host = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [on_device]}, {"params": [on_host]}])
    opt.param_groups[0]["capturable"] = True
    opt.state[on_device]["step"] = torch.tensor(3.0)  # where a universal load leaves it
    opt.state[on_host]["step"] = torch.tensor(3, dtype=torch.int64)
    assert checkpoint.optimizer_steps_to_device(opt) == 2
    assert opt.state[on_device]["step"].device.type == "meta"
    assert opt.state[on_host]["step"].device.type == "cpu" and opt.state[on_host]["step"].dtype == torch.float32
    assert checkpoint.optimizer_steps_to_device(opt) == 0  # already in place


def test_each_rank_uses_a_gpu_it_sees():
    assert [device_index(r, 8) for r in (0, 7)] == [0, 7]
    assert device_index(3, 1) == 0  # the scheduler showed rank 3 only its own GPU
    assert device_index(5, 4) == 1
    with pytest.raises(RuntimeError, match="no CUDA device"):
        device_index(0, 0)


def test_convert_refuses_bad_input(tmp_path):
    code, _, err = call_main(convert.main, [str(tmp_path), "--world-size", "0"])
    assert code == 2 and "0 is out of range" in err
    code, _, err = call_main(convert.main, [str(tmp_path / "nowhere"), "--world-size", "2"])
    assert code == 3 and "neither a run directory with checkpoints" in err and "nowhere" in err
    assert not (tmp_path / "nowhere").exists()
