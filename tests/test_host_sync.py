"""Host syncs only where something needs the numbers: losses and norms stay on the device between logging
steps, read in one all-reduce and one copy, and metrics.jsonl keeps one record per update, unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain import faults
from pretrain.training.step import StepBuffer
from tests.conftest import ROOT, run_pretrain, run_ranks, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
# What the logging interval may change in a record: the host's timings and the logging step's extras.
TIMING = {"step_time_s", "data_wait_s", "tokens_per_s", "samples_per_s", "tflops", "mfu", "eval_time_s"}
EXTRAS = {"param_norm", "memory_gb", "dual_c0", "dual_window50"}


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.distributed
def test_buffered_records_equal_per_step_sync(tiny_data, tmp_path):
    """2 ranks: syncing every 4 updates writes the same per-update records, bit for bit, as syncing every update
    (loss and z-loss averaged over ranks, the global gradient norm from rank 0)."""
    ov = {"train.max_steps": 6, "model.z_loss": 1e-4, "model.dropout": 0.1, "eval.interval": 3,
          "checkpoint.interval": 0, "logging.tensorboard": "false"}
    runs = {}
    for interval in (1, 4):
        run_dir = tmp_path / f"every{interval}"
        res = run_ranks(["--config", DEMO, *tiny_overrides(tiny_data, run_dir, **{**ov, "logging.interval": interval})])
        assert res.returncode == 0, res.stderr[-4000:]
        runs[interval] = records(run_dir)
    every, buffered = runs[1], runs[4]
    assert [r["step"] for r in buffered] == [r["step"] for r in every] == list(range(0, 7))
    for a, b in zip(every, buffered, strict=True):
        assert {k: v for k, v in a.items() if k not in TIMING | EXTRAS} == \
               {k: v for k, v in b.items() if k not in TIMING | EXTRAS}, a["step"]
        assert [k for k in a if k not in EXTRAS] == [k for k in b if k not in EXTRAS]  # the same key order
    assert all(r["grad_norm"] > 0 and r["z_loss"] > 0 for r in buffered[1:])
    assert "param_norm" in buffered[4] and "param_norm" not in buffered[3]  # logged at the logging steps only


def test_one_read_per_logging_interval(tiny_data, tmp_path, monkeypatch):
    """The loop reads the device values at the logging steps (and the last), not after every update."""
    sizes = []
    real = StepBuffer.read

    def counting_read(self):
        sizes.append(len(self))
        return real(self)

    monkeypatch.setattr(StepBuffer, "read", counting_read)
    run_dir = tmp_path / "run"
    ov = tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 7, "logging.interval": 3, "eval.interval": 0,
                                                "checkpoint.interval": 0, "logging.tensorboard": "false"})
    res = run_pretrain(["--config", DEMO, *ov])
    assert res.returncode == 0, res.stderr[-3000:]
    assert sizes == [3, 3, 1]  # steps 1-3, 4-6, 7 (the last)
    assert [r["step"] for r in records(run_dir)] == list(range(0, 8))  # still one record per update


def test_consecutive_skips_found_between_syncs(tiny_data, tmp_path):
    """Non-finite updates between two host syncs still stop the run, naming the right steps, before the save
    that the sync precedes; the records before them are written."""
    run_dir = tmp_path / "run"
    ov = tiny_overrides(tiny_data, run_dir, **{"train.max_consecutive_skips": 2, "logging.interval": 100,
                                                "eval.interval": 0, "checkpoint.interval": 4})
    res = run_pretrain(["--config", DEMO, *ov], env=faults.arm({"train.nan_loss": [2, 3]}))
    assert res.returncode == 4, res.stderr[-3000:]
    assert "2 consecutive updates skipped as non-finite (steps 2..3)" in res.stderr
    recs = records(run_dir)
    assert [r["step"] for r in recs] == [0, 1, 2]  # as with a sync every update: up to the first skip of the two
    assert recs[2]["skipped"] == 1 and recs[2]["loss"] is None and recs[2]["nonfinite"]["loss"] == "nan"
    assert not (run_dir / "checkpoints" / "latest").exists()  # step 4 was not saved
