"""Checkpoints you can trust: exact resume, preemption, kill -9 during saves, damaged files,
world-size changes and WSD cooldown branches, all with real DeepSpeed ranks on CPU."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pretrain import faults
from pretrain.checkpoint import CheckpointDir, CheckpointError, weights_only_loading
from pretrain.schedules import ScheduleConfig
from tests.conftest import ROOT, free_port, run_pretrain, run_ranks, spawn_ranks, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
pytestmark = pytest.mark.distributed

# 2 ranks x micro-batch 2 x grad accum 2 = 8 sequences per update; dropout on so RNG state matters.
EXACT = {"train.max_steps": 8, "checkpoint.interval": 4, "model.dropout": 0.1, "eval.interval": 4}


def ranks_cmd(nproc: int) -> list[str]:
    """The DeepSpeed launcher (it passes a rank's exit code on, e.g. 75 for 'stopped, relaunch')."""
    return [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(free_port())]


def launch(tiny_data, run_dir: Path, nproc: int = 2, extra_args=(), env=None, **overrides) -> subprocess.CompletedProcess:
    args = ["--config", DEMO, *extra_args, *tiny_overrides(tiny_data, run_dir, **overrides)]
    if nproc == 1:
        return run_pretrain(args, env=env)  # in this process: no interpreter start per run
    return run_ranks(args, nproc, env=env)  # the ranks without a launcher process (launchers: test_train, test_multinode)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["step"]}


def ok(res, code=0):
    assert res.returncode == code, f"exit {res.returncode} (wanted {code})\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res


@pytest.fixture(scope="module")
def straight_run(tiny_data, tmp_path_factory) -> Path:
    """The uninterrupted 2-rank run every resumed run is compared with (its run directory)."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    ok(launch(tiny_data, run_dir, **EXACT))
    return run_dir


@pytest.fixture(scope="module")
def straight(straight_run):
    return losses(straight_run)


def test_ranks_hash_their_own_files_into_the_same_manifest(straight_run):
    """Each rank hashed its share of a 2-rank save; the manifest is the one a serial hash of every file gives."""
    from pretrain.checkpoint import MANIFEST, hash_files, manifest_names, rank_share

    ckpt = CheckpointDir(straight_run / "checkpoints")
    tags = ckpt.complete_tags()
    assert tags == ["step_00000004", "step_00000008"]
    for tag in tags:
        path = ckpt.root / tag
        names = manifest_names(path)
        serial = json.dumps({"files": hash_files(path, names)}, indent=1)
        assert (path / MANIFEST).read_text() == serial  # byte for byte
        assert not ckpt.verify(tag)
        shares = [rank_share(names, r, 2) for r in (0, 1)]
        assert sorted(shares[0] + shares[1]) == names  # every file hashed by exactly one rank
        assert "trainer_state_rank1.json" in shares[1] and "trainer_state_rank0.json" in shares[0]
        assert any("zero_pp_rank_1_" in n for n in shares[1]) and not any("zero_pp_rank_1_" in n for n in shares[0])


def test_rank_0_checks_the_partial_manifests(tmp_path):
    """A file no rank hashed, or hashed at another size than rank 0 sees, is hashed again by rank 0."""
    from pretrain.checkpoint import hash_files, merge_manifest

    for name, data in (("a.pt", b"a" * 10), ("b.pt", b"b" * 20), ("c.json", b"{}")):
        (tmp_path / name).write_bytes(data)
    (tmp_path / ".hidden").write_bytes(b"x")
    truth = hash_files(tmp_path, ["a.pt", "b.pt", "c.json"])
    stale = {"b.pt": {"bytes": 5, "sha256": "0" * 64}}  # hashed before the file was whole
    files, redone = merge_manifest(tmp_path, [{"a.pt": truth["a.pt"]}, stale])
    assert files == truth and redone == ["b.pt", "c.json"]


def test_resume_is_bitwise_exact(tiny_data, tmp_path, straight):
    run_dir = tmp_path / "run"
    first = ok(launch(tiny_data, run_dir, extra_args=["--stop-after-steps", "4"], **EXACT), code=75)
    assert "stopped at step 4 of 8" in first.stdout
    ok(launch(tiny_data, run_dir, **EXACT))
    resumed = losses(run_dir)
    assert sorted(resumed) == list(range(1, 9))
    assert resumed == straight  # every step, bit for bit (same samples, same dropout masks)

    # Negative control: without the RNG states the dropout masks differ, and so does the loss.
    control_dir = tmp_path / "control"
    ok(launch(tiny_data, control_dir, extra_args=["--stop-after-steps", "4"], **EXACT), code=75)
    ok(launch(tiny_data, control_dir, **EXACT, **{"checkpoint.restore_rng": "false"}))
    control = losses(control_dir)
    assert all(control[s] == straight[s] for s in range(1, 5))
    assert all(control[s] != straight[s] for s in range(5, 9))


def test_preemption_signal_saves_the_same_step_on_all_ranks(tiny_data, tmp_path, straight):
    run_dir = tmp_path / "run"
    cmd = ranks_cmd(2) + ["pretrain.py", "--config", DEMO,
                         *tiny_overrides(tiny_data, run_dir, **{**EXACT, "train.max_steps": 400, "checkpoint.interval": 0})]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.2)
    import psutil

    ranks = [p for p in psutil.Process(proc.pid).children(recursive=True) if "--local_rank" in " ".join(p.cmdline())]
    assert len(ranks) == 2
    ranks[1].send_signal(signal.SIGTERM)  # one rank only
    time.sleep(0.05)
    ranks[1].send_signal(signal.SIGTERM)  # a second signal during the save does no harm
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 75, out[-3000:]
    assert "stopped at step" in out and "exit code 75" in out, out[-3000:]
    ckpt = run_dir / "checkpoints"
    tag = (ckpt / "latest").read_text().strip()
    marker = json.loads((ckpt / tag / "COMPLETE").read_text())
    step = marker["step"]
    assert step >= 3 and marker["world_size"] == 2
    assert {f"trainer_state_rank{r}.json" for r in (0, 1)} <= set(os.listdir(ckpt / tag))
    states = [json.loads((ckpt / tag / f"trainer_state_rank{r}.json").read_text())["state"]["step"] for r in (0, 1)]
    assert states == [step, step]  # both ranks saved the same step
    assert max(losses(run_dir)) == step


def _run_until_paused(tiny_data, run_dir: Path, phase: str, nproc: int) -> None:
    """Start the ranks, wait until the save pauses at ``phase`` (test hook), then kill -9 every rank."""
    args = ["--config", DEMO, *tiny_overrides(tiny_data, run_dir, **{**EXACT, "checkpoint.interval": 2})]
    procs, port = spawn_ranks(args, nproc, faults.arm({"checkpoint.pause": phase}), subprocess.DEVNULL, subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        ckpt = run_dir / "checkpoints"
        name = phase.split("#")[0].replace("@", "-rank") if "@" in phase else f"{phase.split('#')[0]}-rank0"
        while not (ckpt / f".paused-{name}").exists():
            assert all(p.poll() is None for p in procs), f"the run ended before pausing at {phase}"
            assert time.time() < deadline, f"no pause at {phase}"
            time.sleep(0.2)
    finally:
        for p in procs:
            p.kill()  # SIGKILL
            p.wait()
    if nproc > 1:  # DeepSpeed's CPU all-reduce buffers of killed ranks stay in /dev/shm (66 MB each)
        for f in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_{port}_*"):
            f.unlink(missing_ok=True)


@pytest.mark.parametrize(
    "phase,nproc,newest",
    [
        ("engine_save@1#4", 2, 2),  # between shards: rank 0 has written step 4's files, rank 1 not
        ("manifest#4", 2, 2),  # every shard and the manifest written, not the marker
        ("prune#6", 1, 6),  # step 6 committed; step 2's marker deleted, its files not yet
    ],
)
def test_kill_9_during_a_save_resumes_from_the_newest_complete(tiny_data, tmp_path, straight, phase, nproc, newest):
    run_dir = tmp_path / "run"
    _run_until_paused(tiny_data, run_dir, phase, nproc)
    ckpt = CheckpointDir(run_dir / "checkpoints")
    assert ckpt.complete_tags()[-1] == f"step_{newest:08d}"
    res = ok(launch(tiny_data, run_dir, nproc=nproc, **{**EXACT, "checkpoint.interval": 2}))
    assert f"resumed from {run_dir / 'checkpoints' / f'step_{newest:08d}'}" in res.stdout
    if nproc == 2:  # the same processes layout as the straight run: the whole curve matches it exactly
        assert losses(run_dir) == straight
    else:
        assert sorted(losses(run_dir)) == list(range(1, 9))
    left = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert left == ["step_00000006", "step_00000008"]  # the half-written and half-pruned ones are gone


def test_damaged_file_falls_back_to_the_previous_checkpoint(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    ok(launch(tiny_data, run_dir, nproc=1, **{"train.max_steps": 4, "checkpoint.interval": 2}))
    newest = run_dir / "checkpoints" / "step_00000004"
    victim = next(newest.glob("*optim_states.pt"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    victim.write_bytes(bytes(data))
    res = ok(launch(tiny_data, run_dir, nproc=1, **{"train.max_steps": 6, "checkpoint.interval": 2}))
    assert f"skipping checkpoint {newest}: {victim}: sha256 differs from the manifest" in res.stderr
    assert "resumed from" in res.stdout and "step_00000002 at step 2" in res.stdout
    # Every checkpoint damaged: a clear error, nothing trained.
    for f in (run_dir / "checkpoints").glob("step_*/mp_rank_00_model_states.pt"):
        f.write_bytes(f.read_bytes()[:-10])
    res = launch(tiny_data, run_dir, nproc=1, **{"train.max_steps": 9, "checkpoint.interval": 2})
    assert res.returncode == 3 and "no loadable checkpoint" in res.stderr and "bytes, the manifest says" in res.stderr


def test_deepspeed_files_load_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "y": Evil()}, path)
    with weights_only_loading():
        with pytest.raises(CheckpointError, match="refused: it holds a pickled object that is not weights"):
            torch.load(path, weights_only=False)  # DeepSpeed asks for False; it gets True
    assert not (tmp_path / "pwned").exists()
    assert torch.load is not None and torch.load.__name__ == "load"  # restored after the block


def test_checkpoint_outside_the_directory_is_refused(tmp_path):
    ckpt = CheckpointDir(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        ckpt.load(engine=None, tag="../elsewhere/step_00000001", dist=None)
    with pytest.raises(CheckpointError, match="outside the checkpoint directory"):
        ckpt.path("step_00000001/../../x")
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        CheckpointDir.open(tmp_path)


@pytest.mark.parametrize("saved_world,resumed_world", [(2, 1), (1, 2)])
def test_resume_on_another_world_size(tiny_data, tmp_path, straight, saved_world, resumed_world):
    run_dir = tmp_path / "run"
    ok(launch(tiny_data, run_dir, nproc=saved_world, extra_args=["--stop-after-steps", "4"], **EXACT), code=75)
    res = ok(launch(tiny_data, run_dir, nproc=resumed_world, **EXACT))
    assert f"(converted from {saved_world} ranks)" in res.stdout
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 9))
    # The same samples in every global batch; only the summation order and dropout masks differ.
    for s in range(1, 9):
        assert got[s] == pytest.approx(straight[s], rel=0.02), (s, got[s], straight[s])


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_wsd_cooldown_branch_from_a_stable_phase_checkpoint(tiny_data, tmp_path):
    main_dir = tmp_path / "main"
    # The main run: warmup 2 then stable (a WSD whose cooldown is never reached), permanent branch points every 4 steps.
    main_ov = {"train.max_steps": 8, "checkpoint.interval": 2, "checkpoint.keep_last": 1, "checkpoint.permanent_every": 4,
               "schedule.name": "constant", "schedule.warmup_steps": 2, "schedule.end_ratio": "null"}
    ok(launch(tiny_data, main_dir, nproc=1, **main_ov))
    kept = sorted(p.name for p in (main_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert kept == ["step_00000004", "step_00000006", "step_00000008"]  # permanent 4 and 8 survive; 2 is pruned
    before = _hashes(main_dir)

    branch_dir = tmp_path / "cooldown"
    src = main_dir / "checkpoints" / "step_00000004"
    branch_ov = {"train.max_steps": 7, "schedule.name": "wsd", "schedule.warmup_steps": 2,
                 "schedule.params": "{decay_steps: 3, shape: linear}", "checkpoint.interval": 0}
    res = ok(launch(tiny_data, branch_dir, nproc=1, extra_args=["--branch-from", str(src)], **branch_ov))
    assert f"branched from {src.resolve()} at step 4" in res.stdout
    recs = [json.loads(l) for l in (branch_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [5, 6, 7]
    sched = ScheduleConfig(name="wsd", warmup_steps=2, params={"decay_steps": 3, "shape": "linear"}).build(7)
    assert [r["lr"] for r in recs] == pytest.approx([3e-3 * sched(s) for s in (4, 5, 6)], abs=1e-15)
    assert recs[-1]["lr"] == 0.0
    assert recs[0]["tokens"] == 5 * 8 * 64  # the data position continues from the parent's
    lineage = json.loads((branch_dir / "lineage.json").read_text())
    assert lineage["step"] == 4 and lineage["parent_checkpoint"] == str(src.resolve())
    assert lineage["config_diff"]["schedule.name"] == ["constant", "wsd"]
    assert lineage["config_diff"]["train.max_steps"] == [8, 7]
    assert _hashes(main_dir) == before  # the parent's files and pointer are untouched

    # A branch that cannot work is refused, saying why.
    res = launch(tiny_data, tmp_path / "bad", nproc=1, extra_args=["--branch-from", str(src)], **{**branch_ov, "model.n_layers": 3})
    assert res.returncode == 3 and "the model differs from the one saved (model.n_layers: 2 -> 3)" in res.stderr


def test_schedule_branch_points_are_permanent():
    sched = ScheduleConfig(name="skiplr", warmup_steps=10, params={"eta_before": 0.1, "eta_after": 0.01, "k_s": 40})
    assert sched.branch_points(100) == [10, 39]  # end of warmup, the step before the switch
    wsd = ScheduleConfig(name="wsd", warmup_steps=5, params={"decay": 0.2})
    assert wsd.branch_points(100) == [5, 80]  # end of warmup, end of the stable phase


def test_time_based_saves(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    ok(launch(tiny_data, run_dir, nproc=1, **{"train.max_steps": 4, "checkpoint.interval": 0,
                                               "checkpoint.interval_minutes": 1e-6, "checkpoint.keep_last": 10}))
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step_"))
    assert kept == [f"step_{s:08d}" for s in range(1, 5)]  # the interval passed before every step's end
