"""The launch scripts: cooldown branches and SLURM (with stand-ins for SLURM's own commands)."""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli, run_pretrain, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")


@pytest.fixture(scope="module")
def main_checkpoint(tiny_data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("main") / "main"
    res = run_pretrain(["--config", DEMO,
                   *tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 3, "checkpoint.interval": 2})])
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir / "checkpoints" / "step_00000002"


def test_cooldowns_script_generates_runnable_branches(main_checkpoint):
    res = run_cli(["bash", "launch_scripts/cooldowns.sh", str(main_checkpoint), "2 5", "schedule.params.shape=1-sqrt"],
                  env={"DRY_RUN": "1", "NUM_RANKS": "2"})
    assert res.returncode == 0, res.stderr
    cmds = [shlex.split(l) for l in res.stdout.splitlines() if l.startswith("deepspeed ")]
    assert len(cmds) == 2
    for cmd, d in zip(cmds, (2, 5), strict=True):
        assert f"train.max_steps={2 + d}" in cmd and f"run_dir={main_checkpoint.parents[1]}-cooldown{d}" in cmd
        assert cmd[cmd.index("--branch-from") + 1] == str(main_checkpoint)
        # The same arguments pass the trainer's checks (dry run: config, data, schedule, branch source).
        args = cmd[cmd.index("pretrain.py"):]
        check = run_pretrain([*args[1:], "--dry-run"])
        assert check.returncode == 0, check.stderr
        assert f"{2 + d} steps" in check.stdout and "schedule cooldown" in check.stdout


def test_cooldowns_script_refuses_a_non_checkpoint(tmp_path):
    res = run_cli(["bash", "launch_scripts/cooldowns.sh", str(tmp_path), "10"], env={"DRY_RUN": "1"})
    assert res.returncode == 2 and "is not a complete checkpoint" in res.stderr


def _stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize("exit_code,requeued", [(75, True), (0, False), (1, False), (137, True)])
def test_slurm_script_requeues_when_stopped_early(tmp_path, exit_code, requeued):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    _stand_in(bin_dir, "scontrol", f'echo "scontrol $*" >> {log}\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a\\ngpu-b\\n"\nexit 0\n')
    _stand_in(bin_dir, "srun", f'echo "srun $*" >> {log}\nexit {exit_code}\n')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[a-b]",
           "SLURM_SUBMIT_DIR": str(ROOT), "PYTHON": sys.executable}
    res = run_cli(["bash", "launch_scripts/slurm_pretrain.sbatch", DEMO, "optimizer.lr=1e-3"], env=env)
    assert res.returncode == exit_code, res.stdout + res.stderr
    calls = log.read_text()
    srun = next(l for l in calls.splitlines() if l.startswith("srun "))
    assert "pretrain.py --config" in srun and "optimizer.lr=1e-3" in srun and "RANK=$SLURM_PROCID" in srun
    assert ("scontrol requeue 4242" in calls) == requeued
    assert "gpu-a:" in res.stdout  # rendezvous at the first node


def test_slurm_script_dry_run_prints_the_command(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stand_in(bin_dir, "scontrol", 'printf "n1\\nn2\\n"\n')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_SUBMIT_DIR": str(ROOT), "DRY_RUN": "1", "PYTHON": sys.executable}
    res = run_cli(["bash", "launch_scripts/slurm_pretrain.sbatch", DEMO], env=env)
    assert res.returncode == 0, res.stderr
    assert "srun --kill-on-bad-exit=1" in res.stdout and "pretrain.py --config" in res.stdout
