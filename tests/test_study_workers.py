"""Standing workers (experiments.worker): a study's results do not depend on where its runs ran, a worker that
dies is replaced, and the runner and the study import one way."""

from __future__ import annotations

import ast
import dataclasses
import os
import signal
import subprocess
import sys
import threading

from experiments import build_study
from experiments.runner import Runner, default_slots
from tests.conftest import ROOT

# What a run computes (its metrics per step, without the timings) and what the study reads from it.
COMPUTED = ("loss", "grad_norm", "lr", "val_loss", "param_norm", "tokens")
OUTCOME = ("status", "final_val_loss", "best_val_loss", "final_train_loss", "tokens", "steps")


def _study(tiny_data):
    # skiplr at tiny scale: 3 runs of 20 steps, one of them a branch from another's checkpoint at step 10
    return build_study("skiplr", "tiny", overrides=[f"data.path={tiny_data}", "eval.max_samples=16"],
                       variant="scratch")


def _computed(results) -> dict:
    out = {}
    for label, rec in results.records.items():
        out[label] = {"outcome": {k: getattr(rec, k) for k in OUTCOME},
                      "steps": [{k: m.get(k) for k in COMPUTED} for m in rec.metrics()]}
    return out


def _kill_first_run_worker(runner: Runner, killed: list, stop: threading.Event) -> None:
    """SIGKILL the first worker seen busy with a run (once the run has started: its log exists)."""
    while not stop.wait(0.05):
        for slot, worker in list(runner.workers.items()):
            if worker.result is not None and worker.alive() and worker.run_log is not None and worker.run_log.exists():
                killed.append((slot, worker.pid, worker.run_log))
                os.kill(worker.pid, signal.SIGKILL)
                return


def test_standing_workers_give_the_same_results_as_a_process_per_run_and_replace_a_dead_worker(tiny_data, tmp_path):
    # in directories of their own: a study reuses the finished runs of its sibling directories
    separate = Runner(_study(tiny_data), tmp_path / "separate" / "study", slots=2, standing=False, progress=False).run()

    study = _study(tiny_data)  # the same study, one run of it isolated (its own process beside the workers)
    study = dataclasses.replace(study, runs=[dataclasses.replace(r, isolated=r.label.endswith("seed0/phi2")) for r in study.runs])
    runner = Runner(study, tmp_path / "standing" / "study", slots=2, standing=True, progress=False)
    killed: list = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_run_worker, args=(runner, killed, stop), daemon=True)
    killer.start()
    try:
        standing = runner.run()
    finally:
        stop.set()
        killer.join()

    # A worker killed in its run: the run is retried in a new worker, and every run is done all the same.
    assert len(killed) == 1, "no worker was seen running a run"
    assert {r.status for r in standing.records.values()} == {"done"}, [r.error for r in standing.records.values()]
    assert runner.workers == {}  # the runner ended its workers
    assert runner.worker_runs == 3  # phi1 twice (killed, retried), phi3; phi2 ran in its own process
    assert runner.worker_processes >= 2  # the killed worker was replaced
    assert (tmp_path / "standing" / "study" / "workers" / f"slot{killed[0][0]}.log").exists()

    # Bit for bit: every step's loss, gradient norm, LR, validation loss and weight norm, and every outcome.
    got, want = _computed(standing), _computed(separate)
    assert set(got) == set(want) == {r.label for r in study.runs}
    for label in want:
        assert len(want[label]["steps"]) >= 10, label  # 20 steps, the branch 10 after its branch point
        assert got[label] == want[label], f"run {label}: standing workers and separate processes differ"
    branch = next(v for k, v in standing.records.items() if k.endswith("seed0/phi3"))
    assert branch.metrics()[0]["step"] == 11  # the branch trained only after its branch point (no step-0 evaluation)


def test_default_slots_follow_the_cores_at_each_runs_threads(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("PRETRAIN_THREADS", raising=False)
    assert 1 <= default_slots() <= cores
    assert default_slots(threads_per_run=cores) == 1
    monkeypatch.setenv("PRETRAIN_THREADS", str(cores))
    assert default_slots() == 1
    runner = Runner(build_study("d2z", "tiny"), ROOT / "runs" / "unused", slots=cores, progress=False)
    assert runner.threads() == 1  # the cores divided among the slots, as for a process per run


def test_runner_and_study_import_one_way():
    code = ("import sys, experiments.study; "
            "assert 'experiments.runner' not in sys.modules, 'experiments.study imported the runner'; "
            "import experiments.runner, experiments.worker; "
            "assert 'torch' not in sys.modules and 'deepspeed' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    tree = ast.parse((ROOT / "experiments" / "study.py").read_text())  # not even for type checking
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m and m.split(".")[-1] in ("runner", "worker")], imported


def test_refit_of_a_study_runs_csv(tmp_path):
    """bench/study_overhead.py --refit: a + b x steps over a study's own runs.csv (a branch counts the updates it
    trained itself), the fixed share, and a file that is no runs.csv refused by name."""
    import csv

    import pytest

    from bench import study_overhead as so

    path = tmp_path / "runs.csv"
    rows = [("done", 100, "", 2.0 + 0.05 * 100), ("done", 300, "", 2.0 + 0.05 * 300), ("done", 500, 400, 2.0 + 0.05 * 100),
            ("done", 1000, "", 2.0 + 0.05 * 1000), ("failed", 1000, "", 0.5)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "status", "steps", "branch_step", "wall_s"])
        w.writerows((f"r{i}", *r) for i, r in enumerate(rows))
    got = so.refit(path)
    assert got["runs"] == 4 and abs(got["a"] - 2.0) < 1e-9 and abs(got["b"] - 0.05) < 1e-12
    assert abs(got["share"] - 8.0 / (8.0 + 0.05 * 1500)) < 1e-9
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="other.csv"):
        so.refit(tmp_path / "other.csv")
