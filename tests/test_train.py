"""End-to-end training runs with the real DeepSpeed engine on CPU ranks (gloo)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.schedules import ScheduleConfig
from tests.conftest import ROOT, free_port, run_cli, run_pretrain, run_ranks, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
pytestmark = pytest.mark.distributed


def metrics(run_dir: Path) -> list[dict]:
    """The per-update records (the step-0 record of the initial weights' validation is left out)."""
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["step"]]


def check_run(res, run_dir: Path, steps: int) -> list[dict]:
    assert res.returncode == 0, f"exit {res.returncode}\nSTDOUT:\n{res.stdout[-4000:]}\nSTDERR:\n{res.stderr[-6000:]}"
    recs = metrics(run_dir)
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    for r in recs:
        assert {"step", "loss", "lr", "tokens", "grad_norm", "tokens_per_s"} <= set(r)
    return recs


def test_deepspeed_two_ranks_zero2_bf16(tiny_data, tmp_path):
    """`deepspeed --num_gpus 2 pretrain.py`: metrics, TensorBoard, checkpoint, plot, exact LR schedule."""
    run_dir = tmp_path / "run"
    port = free_port()
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(port), "pretrain.py", "--config", DEMO,
           *tiny_overrides(tiny_data, run_dir)]
    res = run_cli([str(Path(sys.executable).parent / cmd[0]), *cmd[1:]])
    recs = check_run(res, run_dir, 6)
    # DeepSpeed's CPU all-reduce buffers (66 MB per rank) do not outlive the run.
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"))

    # Tokens: 8 sequences x 64 tokens per update.
    assert [r["tokens"] for r in recs] == [512 * k for k in range(1, 7)]
    # The LR is the schedule's, exactly, at every step (peak 3e-3 from the YAML, warmup 10% of 6 -> 1 step).
    sched = ScheduleConfig(name="linear", warmup_fraction=0.1, end_ratio=0.0).build(6)
    assert [r["lr"] for r in recs] == pytest.approx([3e-3 * sched(s) for s in range(6)], rel=1e-12, abs=1e-15)
    assert recs[-1]["lr"] == 0.0
    # The dual view of the schedule so far: weight left on the initial weights shrinks, updates carry the rest.
    c0 = [r["dual_c0"] for r in recs]
    assert c0[0] < 1.0 and all(a > b for a, b in zip(c0[:-1], c0[1:-1], strict=False))
    assert all(1 <= r["dual_window50"] <= r["step"] for r in recs)
    # Validation at 3 and at the end; a finite loss that went down.
    assert [r["step"] for r in recs if "val_loss" in r] == [3, 6]
    assert all(r["loss"] == r["loss"] for r in recs) and recs[-1]["loss"] < recs[0]["loss"]
    # Outputs.
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / "loss.png").stat().st_size > 10_000
    assert (run_dir / "config.yaml").is_file() and (run_dir / "ds_config.json").is_file()
    ckpt = run_dir / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000006"
    marker = json.loads((ckpt / "step_00000006" / "COMPLETE").read_text())
    assert marker["world_size"] == 2 and marker["step"] == 6
    names = set(json.loads((ckpt / "step_00000006" / "MANIFEST.json").read_text())["files"])
    assert {"trainer_state_rank0.json", "trainer_state_rank1.json"} <= names
    assert any("zero_pp_rank_1" in n for n in names)  # ZeRO partitions of both ranks
    assert not (ckpt / "step_00000006" / "latest").exists() and not (ckpt / "latest_universal").exists()
    assert "step 6/6" in res.stdout

    # The report compares the final validation loss with a unigram model of the same tokens.
    from pretrain.report import report

    out = report(run_dir)
    assert out["final_val_loss"] == recs[-1]["val_loss"]
    assert 3.0 < out["unigram_val_loss"] < math.log(512)  # well below uniform over the vocabulary


def test_plain_python_single_process_and_resume(tiny_data, tmp_path):
    """`python pretrain.py` is a world of one; relaunching with a longer budget resumes from the checkpoint."""
    run_dir = tmp_path / "run"
    base = [sys.executable, "pretrain.py", "--config", DEMO]
    ov = tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 4, "checkpoint.interval": 2, "model.z_loss": 1e-4})
    first = check_run(run_cli(base + ov), run_dir, 4)
    assert all(r["z_loss"] > 0 for r in first)  # the z-loss term is logged apart from the cross-entropy
    ov = tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 6, "checkpoint.interval": 2, "model.z_loss": 1e-4})
    res = run_pretrain(base[2:] + ov)  # the same main, in this process (no second interpreter start)
    recs = check_run(res, run_dir, 6)
    assert "resumed from" in res.stdout and "step_00000004" in res.stdout
    assert recs[:4] == first  # earlier records kept as they were
    assert recs[-1]["tokens"] == 6 * 8 * 64
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert kept == ["step_00000004", "step_00000006"]  # keep_last 2


@pytest.mark.parametrize("stage,optimizer,launcher", [(1, "adamw", None), (3, "sgd", "torchrun")])
def test_two_ranks_other_zero_stages(tiny_data, tmp_path, stage, optimizer, launcher):
    """ZeRO-1 with AdamW and ZeRO-3 with SGD on 2 ranks; the ZeRO-3 run under torchrun."""
    run_dir = tmp_path / "run"
    extra = {"optimizer.momentum": 0.9, "optimizer.lr": 0.3} if optimizer == "sgd" else {}
    ov = tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 3, "deepspeed.config": f"ds_configs/zero{stage}.json",
                                                "optimizer.name": optimizer, **extra})
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
               "pretrain.py", "--config", DEMO, *ov]
        res = run_cli(cmd)
    else:
        res = run_ranks(["--config", DEMO, *ov], 2)
    recs = check_run(res, run_dir, 3)
    assert recs[-1]["loss"] < recs[0]["loss"]
    files = json.loads((run_dir / "checkpoints" / "step_00000003" / "MANIFEST.json").read_text())["files"]
    assert any("zero_pp_rank_1" in n for n in files)


@pytest.mark.gpu
def test_single_gpu_bf16_uses_cuda(tiny_data, tmp_path):
    """On a GPU machine the same command picks CUDA + NCCL by itself (SDPA then uses flash kernels)."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in __import__("os").environ.items() if k != "DS_ACCELERATOR"}
    res = run_cli([sys.executable, "pretrain.py", "--config", DEMO, *tiny_overrides(tiny_data, run_dir)],
                  env={**env, "DS_ACCELERATOR": "cuda"})
    recs = check_run(res, run_dir, 6)
    assert recs[-1]["loss"] < recs[0]["loss"]


def test_sources_mixed_by_proportion(per_source_data, tmp_path):
    run_dir = tmp_path / "run"
    ov = tiny_overrides(per_source_data, run_dir, **{"train.max_steps": 3, "data.mix": "{RedPajamaGitHub: 0.7, RedPajamaBook: 0.3}"})
    res = run_pretrain(["--config", DEMO, *ov])
    check_run(res, run_dir, 3)
    bad = run_pretrain(["--config", DEMO, "--dry-run",
                   *tiny_overrides(per_source_data, run_dir, **{"data.mix": "{RedPajamaC4: 1.0}"})])
    assert bad.returncode == 2 and "sources of" in bad.stderr and "RedPajamaBook, RedPajamaGitHub (unknown: RedPajamaC4)" in bad.stderr


def test_data_through_a_local_cache_and_unreachable_remote(tiny_data, tmp_path):
    """data.path read through cache_dir (as for s3:// data: here a local directory plays the remote)."""
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    res = run_pretrain(["--config", DEMO,
                   *tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 2, "data.cache_dir": str(cache)})])
    check_run(res, run_dir, 2)
    assert (cache / "manifest.json").is_file() and list((cache / "train").rglob("shard.*"))
    bad = run_pretrain(["--config", DEMO, "--dry-run",
                   *tiny_overrides(tiny_data, run_dir, **{"data.path": "s3://no-such-bucket-pretrain-test/tokens",
                                                          "data.cache_dir": str(tmp_path / "c2"), "data.download_timeout": 10})])
    assert bad.returncode == 2, bad.stderr
    assert "data.path = 's3://no-such-bucket-pretrain-test/tokens': expected reachable data with a manifest.json" in bad.stderr


def test_compile_matches_eager_loss_curve(tiny_data, tmp_path):
    """train.compile: true (inductor's C++ backend on CPU) trains the same curve as eager over 20 steps.

    Also checks what the run records of the hardware: the precision and why, the threads, and an MFU
    against a measured peak on CPU.
    """
    curves = {}
    for flag in ("false", "true"):
        run_dir = tmp_path / f"compile-{flag}"
        ov = tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 20, "train.compile": flag, "eval.interval": 0,
                                                   "checkpoint.interval": 0, "model.dropout": 0.0})
        res = run_pretrain(["--config", DEMO, *ov])
        curves[flag] = [r["loss"] for r in check_run(res, run_dir, 20)]
        if flag == "true":
            assert "torch.compile on" in res.stdout
    hw = json.loads((tmp_path / "compile-true" / "hardware.json").read_text())
    assert hw["precision"] in ("bf16", "fp32") and hw["precision_reason"] and hw["threads_per_rank"] >= 1
    assert hw["peak_tflops_per_rank"] > 0 and "measured" in hw["peak_source"]
    assert all(0 < r["mfu"] < 1 for r in metrics(tmp_path / "compile-true"))
    tol = 2e-2 if hw["precision"] == "bf16" else 1e-3  # relative: kernels fuse and reorder sums differently
    assert curves["true"] == pytest.approx(curves["false"], rel=tol)


def test_in_process_runs_back_to_back_match_separate_processes(tiny_data, tmp_path):
    """`pretrain.train()` twice in one process: bitwise the losses of the same two runs as separate launches.

    Nothing leaks between the runs: process group and DeepSpeed's cached groups, streaming's shared
    memory, RNG, threads and signal handlers; and no engine (with its model) outlives its run.
    """
    runs = {name: tiny_overrides(tiny_data, tmp_path / "sep" / name, **{"train.seed": seed, "model.dropout": 0.1})
            for name, seed in (("a", 1), ("b", 2))}
    script = (
        "import json, signal, sys, torch\n"
        "from pretrain import train\n"
        "before = (torch.get_num_threads(), signal.getsignal(signal.SIGTERM))\n"
        f"runs = {json.dumps({k: [o.replace(str(tmp_path / 'sep'), str(tmp_path / 'one')) for o in v] for k, v in runs.items()})}\n"
        "out = {k: train(sys.argv[1], v) for k, v in runs.items()}\n"
        "assert (torch.get_num_threads(), signal.getsignal(signal.SIGTERM)) == before\n"
        "import gc; from deepspeed.runtime.engine import DeepSpeedEngine; gc.collect()\n"
        "assert not [o for o in gc.get_objects() if isinstance(o, DeepSpeedEngine)], 'an engine outlived its run'\n"
        "print(json.dumps({k: [r.code, str(r.run_dir), r.step, r.val_loss] for k, r in out.items()}))\n"
    )
    # The three processes side by side, one thread each (the same thread count gives the same sums), set up
    # as `python -m experiments --slots K` sets up its runs: no cleaning of the others' shared memory, and
    # one lock around creating the data loaders.
    cmds = [[sys.executable, "pretrain.py", "--config", DEMO, *ov] for ov in runs.values()]
    cmds.append([sys.executable, "-c", script, DEMO])
    env = {**os.environ, "PRETRAIN_THREADS": "1", "PYTHONUNBUFFERED": "1", "PRETRAIN_CLEAN_STALE_SHM": "0",
           "PRETRAIN_SHM_LOCK": str(tmp_path / "shm.lock")}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in cmds]
    outs = [p.communicate(timeout=600) for p in procs]
    for name, (proc, (out, err)) in zip(runs, zip(procs, outs, strict=True), strict=False):  # the last process: the in-process script
        check_run(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), tmp_path / "sep" / name, 6)
    res = subprocess.CompletedProcess(procs[-1].args, procs[-1].returncode, *outs[-1])
    assert res.returncode == 0, res.stderr[-4000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    for name in runs:
        code, run_dir, step, val_loss = summary[name]
        assert (code, run_dir, step) == (0, str(tmp_path / "one" / name), 6)
        sep, one = metrics(tmp_path / "sep" / name), metrics(tmp_path / "one" / name)
        assert [r["loss"] for r in one] == [r["loss"] for r in sep]  # bitwise
        assert val_loss == one[-1]["val_loss"] == sep[-1]["val_loss"]
    assert metrics(tmp_path / "one" / "a")[-1]["loss"] != metrics(tmp_path / "one" / "b")[-1]["loss"]
