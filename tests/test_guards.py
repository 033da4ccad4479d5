"""Stability guards: non-finite updates skipped on every rank alike, the K-in-a-row stop, loss spikes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain import faults
from pretrain.training.loop import SpikeDetector
from tests.conftest import ROOT, run_pretrain, run_ranks, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")


def records(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["step"]]  # not step 0


@pytest.mark.distributed
def test_non_finite_update_is_skipped_on_all_ranks(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    res = run_ranks(["--config", DEMO, *tiny_overrides(tiny_data, run_dir)], 2, env=faults.arm({"train.nan_loss": [3]}))
    assert res.returncode == 0, res.stderr[-4000:]
    recs = records(run_dir)
    assert [r["step"] for r in recs] == list(range(1, 7))
    assert recs[2].get("skipped") == 1 and all("skipped" not in r for r in recs if r["step"] != 3)
    assert "step 3: non-finite loss or gradients" in res.stdout
    # The skipped update left the weights alone: training goes on with finite losses, the LR follows the step.
    assert all(r["loss"] == r["loss"] for r in recs if r["step"] != 3) and recs[-1]["loss"] < recs[0]["loss"]
    assert recs[-1]["lr"] == 0.0
    for key in ("tflops", "samples_per_s", "param_norm", "memory_gb", "data_wait_s"):
        assert key in recs[-1], key


@pytest.mark.distributed
def test_too_many_consecutive_skips_stop_the_run(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    ov = tiny_overrides(tiny_data, run_dir, **{"train.max_consecutive_skips": 2, "checkpoint.interval": 2})
    res = run_pretrain(["--config", DEMO, *ov], env=faults.arm({"train.nan_loss": [3, 4, 5]}))
    assert res.returncode == 4, res.stderr[-3000:]
    assert "2 consecutive updates skipped as non-finite (steps 3..4); stopping, the last good checkpoint is kept" in res.stderr
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"


def test_spike_detector():
    det = SpikeDetector(window=10, threshold=4.0)
    base = [3.0 + 0.01 * (i % 3) for i in range(10)]
    assert all(det.observe(x) is None for x in base)
    z = det.observe(3.5)
    assert z is not None and z > 4.0
    assert det.observe(3.01) is None  # an ordinary loss afterwards is not a spike
    assert SpikeDetector(window=0, threshold=1.0).observe(100.0) is None  # off


@pytest.mark.distributed
def test_loss_spike_is_detected_and_optionally_skipped(tiny_data, tmp_path):
    base = {"train.max_steps": 16, "train.spike_window": 10, "train.spike_threshold": 3.0, "schedule.name": "constant",
            "schedule.end_ratio": "null", "optimizer.lr": 0.01, "eval.interval": 0, "checkpoint.interval": 0}
    env = faults.arm({"train.noise_tokens": [14]})  # update 14 sees uniformly random tokens
    seen = tmp_path / "seen"
    res = run_pretrain(["--config", DEMO, *tiny_overrides(tiny_data, seen, **base)], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = records(seen)
    assert recs[13].get("loss_spike_z", 0) > 3.0 and "skipped" not in recs[13]
    assert "step 14: loss spike" in res.stdout
    skip = tmp_path / "skip"
    res = run_pretrain(["--config", DEMO,
                   *tiny_overrides(tiny_data, skip, **base, **{"train.skip_spikes": "true"})], env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    recs = records(skip)
    assert recs[13]["skipped"] == 1 and recs[13]["loss_spike_z"] > 3.0 and "update skipped" in res.stdout
    assert [r["step"] for r in recs] == list(range(1, 17))
