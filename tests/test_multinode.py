"""Multi-node launch scripts, on one machine.

Two torchrun "nodes" (two launchers, one rank each) meet through a c10d rendezvous on 127.0.0.1 and
train together; DeepSpeed's launcher does the same without ssh (NO_SSH=1 NODE_RANK=K). Both nodes
share the run directory and the data directory, as nodes on a shared filesystem do. Each node gets
what a separate machine has of its own: /dev/shm (mosaicml-streaming keeps its per-node state there
under fixed names, so two nodes on one /dev/shm collide) and TMPDIR (streaming's file locks).
Also: the scripts' dry runs, and exit code 75 ("saved and stopped, relaunch") through torchrun.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, run_cli, tiny_overrides

DEMO = str(ROOT / "configs" / "demo_cpu.yaml")
TORCHRUN_SH = "launch_scripts/train_multinode_torchrun.sh"
DEEPSPEED_SH = "launch_scripts/train_multinode_deepspeed.sh"
VENV_BIN = str(Path(sys.executable).parent)
NODE_TIMEOUT = 300  # seconds for a two-node run (it takes ~30 s; generous for a loaded machine)


# -- helpers ---------------------------------------------------------------------------------------
def own_dev_shm_prefix() -> list[str] | None:
    """A command prefix that gives the command an empty /dev/shm of its own, as on another machine.

    None where mount namespaces are not available (no root, no unprivileged user namespaces).
    """
    mount = ["sh", "-c", 'mount -t tmpfs tmpfs /dev/shm && exec "$@"', "sh"]
    candidates = [["unshare", "--user", "--map-root-user", "--mount"]]
    if os.geteuid() == 0:
        candidates.insert(0, ["unshare", "--mount"])
    for prefix in candidates:
        try:
            probe = subprocess.run([*prefix, *mount, "sh", "-c", "test -z \"$(ls -A /dev/shm)\""],
                                   capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return [*prefix, *mount]
    return None


def kill_tree(proc: subprocess.Popen) -> None:
    """Kill a launcher and everything under it (torchrun starts its workers in sessions of their own)."""
    try:
        import psutil

        children = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # already gone, or no psutil
        children = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass
    if children:
        import psutil

        psutil.wait_procs(children, timeout=30)


class Nodes:
    """Launchers started side by side, each in its own session, logging to a file; all killed on exit."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            if p.poll() is None:
                kill_tree(p)

    def env(self, n: int, **extra: str) -> dict[str, str]:
        tmp = self.tmp_path / f"node{n}-tmp"
        tmp.mkdir(exist_ok=True)
        return {**os.environ, "SKIP_SETUP": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "TMPDIR": str(tmp), **extra}

    def start(self, cmd: list[str], env: dict[str, str]) -> None:
        log = self.tmp_path / f"node{len(self.procs)}.log"
        with open(log, "w") as out:
            self.procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        self.logs.append(log)

    def wait(self, timeout: float = NODE_TIMEOUT) -> list[int]:
        """Exit codes; a node that fails makes the others be killed soon after (no hung rendezvous)."""
        deadline = time.monotonic() + timeout
        first_failure = None
        while any(p.poll() is None for p in self.procs):
            now = time.monotonic()
            if first_failure is None and any(p.poll() not in (None, 0) for p in self.procs):
                first_failure = now
            if now > deadline or (first_failure is not None and now - first_failure > 60):
                for p in self.procs:
                    if p.poll() is None:
                        kill_tree(p)
                pytest.fail(f"nodes did not finish (timeout {timeout} s or a failed peer)\n{self.report()}")
            time.sleep(0.5)
        return [p.returncode for p in self.procs]

    def report(self) -> str:
        return "\n".join(f"--- node {i} (exit {p.returncode}): {log}\n{log.read_text()[-5000:]}"
                         for i, (p, log) in enumerate(zip(self.procs, self.logs, strict=True)))


def check_two_rank_run(run_dir: Path, steps: int) -> list[dict]:
    recs = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["step"]]
    assert [r["step"] for r in recs] == list(range(1, steps + 1))
    assert [r["tokens"] for r in recs] == [8 * 64 * k for k in range(1, steps + 1)]
    assert all(r["loss"] == r["loss"] for r in recs) and recs[-1]["loss"] < recs[0]["loss"]
    ckpt = run_dir / "checkpoints"
    tag = f"step_{steps:08d}"
    assert (ckpt / "latest").read_text().strip() == tag
    marker = json.loads((ckpt / tag / "COMPLETE").read_text())
    assert marker["world_size"] == 2 and marker["step"] == steps
    files = set(json.loads((ckpt / tag / "MANIFEST.json").read_text())["files"])
    assert {"trainer_state_rank0.json", "trainer_state_rank1.json"} <= files
    assert any("zero_pp_rank_1" in f for f in files)  # ZeRO partition of the other node's rank
    for rank in (0, 1):
        assert json.loads((ckpt / tag / f"trainer_state_rank{rank}.json").read_text())["state"]["step"] == steps
    return recs


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    """A directory with this interpreter's python, deepspeed and torchrun, to put first on PATH.

    Only those: putting the whole venv bin first would also switch DeepSpeed's JIT build to the
    venv's `ninja` when the rest of the suite uses the system's (another version, whose build log
    the other does not read): the communication op would be rebuilt (minutes) at every switch.
    """
    bin_dir = tmp_path_factory.mktemp("tools")
    for name in ("python", "deepspeed", "torchrun"):  # wrappers: a symlink would lose the venv
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\nexec {shlex.quote(str(Path(VENV_BIN) / name))} "$@"\n')
        path.chmod(0o755)
    return bin_dir


@pytest.fixture
def own_dev_shm() -> list[str]:
    prefix = own_dev_shm_prefix()
    if prefix is None:
        pytest.skip("needs mount namespaces (unshare --mount) to give each node its own /dev/shm")
    return prefix


# -- two nodes, for real ---------------------------------------------------------------------------
def run_two_torchrun_nodes(tmp_path: Path, own_dev_shm: list[str], tools: Path, args: list[str]):
    """Both nodes of train_multinode_torchrun.sh: exit codes and logs."""
    endpoint = f"127.0.0.1:{free_port()}"
    rdzv_id = f"test-{uuid.uuid4().hex[:12]}"  # a new rendezvous for every launch, as for every job
    with Nodes(tmp_path / rdzv_id) as nodes:
        nodes.tmp_path.mkdir()
        for n in (0, 1):
            # The venv's python (and torchrun) first on PATH, no .venv: SKIP_SETUP=1.
            env = nodes.env(n, PATH=f"{tools}:{os.environ['PATH']}", NNODES="2", NPROC_PER_NODE="1",
                            RDZV_ENDPOINT=endpoint, RDZV_ID=rdzv_id, NODE_RANK=str(n), LOCAL_ADDR="127.0.0.1")
            nodes.start([*own_dev_shm, "bash", TORCHRUN_SH, *args], env)
        codes = nodes.wait()
        logs = [log.read_text() for log in nodes.logs]
        report = nodes.report()
    for n, log in enumerate(logs):
        assert f"== node {n} of 2: 1 ranks" in log and f"rendezvous c10d at {endpoint}" in log, report
    return codes, logs, report


@pytest.mark.distributed
def test_two_torchrun_nodes_over_loopback(tiny_data, tmp_path, own_dev_shm, tools):
    """Two launchers of train_multinode_torchrun.sh, one rank each, c10d rendezvous on 127.0.0.1:
    a launch stopped early (exit 75 from both nodes despite torchrun), then one that resumes and finishes."""
    # A private copy with only the compressed shards: the trainer itself must decompress them once per
    # node without the two "nodes" colliding on the shared directory.
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data, ignore=lambda d, names: [n for n in names if n.endswith(".mds")])
    assert not list(data.rglob("*.mds"))
    run_dir = tmp_path / "run"
    args = [DEMO, *tiny_overrides(data, run_dir)]

    codes, logs, report = run_two_torchrun_nodes(tmp_path, own_dev_shm, tools, [*args, "--stop-after-steps", "3"])
    assert codes == [75, 75], report
    assert all("torchrun exited with code 1; the ranks of this node saved a checkpoint" in log for log in logs)
    marker = json.loads((run_dir / "checkpoints" / "step_00000003" / "COMPLETE").read_text())
    assert marker["world_size"] == 2 and marker["step"] == 3

    codes, logs, report = run_two_torchrun_nodes(tmp_path, own_dev_shm, tools, args)
    assert codes == [0, 0], report
    check_two_rank_run(run_dir, 6)
    # One rank 0 (on the node torchrun made node 0) resumes, for a world of 2 ranks, and finishes.
    assert sum("world 2 x micro 2 x accum 2" in log for log in logs) == 1
    assert sum("resumed from" in log and "step_00000003 at step 3" in log for log in logs) == 1
    assert sum("done: 6 steps" in log for log in logs) == 1


@pytest.mark.distributed
def test_two_deepspeed_nodes_without_ssh(tiny_data, tmp_path, own_dev_shm, tools):
    """train_multinode_deepspeed.sh with NO_SSH=1 NODE_RANK=K on each node of a two-host hostfile."""
    run_dir = tmp_path / "run"
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two 'machines' with one rank each\n127.0.0.1 slots=1\nlocalhost slots=1\n")
    port = str(free_port())
    args = ["bash", DEEPSPEED_SH, str(hostfile), DEMO,
            *tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 3, "eval.interval": 0})]
    with Nodes(tmp_path) as nodes:
        for n in (0, 1):
            # PYTHON names the interpreter (its directory goes first on PATH), no .venv.
            env = nodes.env(n, PYTHON=str(tools / "python"), NO_SSH="1", NODE_RANK=str(n),
                            MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            nodes.start([*own_dev_shm, *args], env)
        codes = nodes.wait()
        assert codes == [0, 0], nodes.report()
        logs = [log.read_text() for log in nodes.logs]
    check_two_rank_run(run_dir, 3)
    assert "done: 3 steps" in logs[0]  # DeepSpeed numbers ranks by hostfile line: node 0 has rank 0


# -- exit code 75 through torchrun -----------------------------------------------------------------
def _worker(tmp_path: Path, code: int) -> Path:
    script = tmp_path / f"exit{code}.py"
    script.write_text(f"import sys\nprint('worker', sys.argv[1:])\nsys.exit({code})\n")
    return script


@pytest.mark.distributed
def test_torchrun_turns_75_into_1_and_keep_exit_code_records_it(tmp_path):
    """The behaviour the torchrun script works around, with the real torchrun."""
    exit_dir = tmp_path / "codes"
    exit_dir.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "1",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{free_port()}", "--rdzv_id", "t",
           "launch_scripts/keep_exit_code.py", str(_worker(tmp_path, 75)), "--config", "x.yaml"]
    res = run_cli(cmd, env={"PRETRAIN_EXIT_DIR": str(exit_dir)}, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert (exit_dir / "exit_rank0").read_text().strip() == "75"
    assert "worker ['--config', 'x.yaml']" in res.stdout  # the script got its own arguments


def _stand_in_torchrun(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "torchrun"
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _stand_in_env(bin_dir: Path, **extra: str) -> dict[str, str]:
    # The stand-in torchrun first (SKIP_SETUP=1 without PYTHON keeps PATH's order), then python.
    return {"PATH": f"{bin_dir}:{VENV_BIN}:{os.environ['PATH']}", "SKIP_SETUP": "1", "NNODES": "2",
            "NPROC_PER_NODE": "2", "RDZV_ENDPOINT": "127.0.0.1:29400", **extra}


@pytest.mark.parametrize("worker_codes,torchrun_code,expected", [
    ((75, 75), 1, 75),  # both ranks saved and stopped: relaunch
    ((75, 0), 1, 75),
    ((75, 1), 1, 1),  # one rank failed
    ((), 1, 1),  # killed before recording anything
    ((0, 0), 0, 0),
])
def test_torchrun_script_gives_back_75(tmp_path, worker_codes, torchrun_code, expected):
    """The script runs each rank through keep_exit_code.py and exits 75 when its ranks stopped that way."""
    workers = " ".join(str(_worker(tmp_path, c)) for c in worker_codes)
    _stand_in_torchrun(tmp_path / "bin", f"""
echo "$*" > {tmp_path}/torchrun_args
rank=0
for w in {workers}; do
  RANK=$rank python launch_scripts/keep_exit_code.py "$w" || true
  rank=$((rank + 1))
done
exit {torchrun_code}
""")
    res = run_cli(["bash", TORCHRUN_SH, DEMO, "train.max_steps=3"], env=_stand_in_env(tmp_path / "bin"), timeout=60)
    assert res.returncode == expected, res.stdout + res.stderr
    args = shlex.split((tmp_path / "torchrun_args").read_text())
    assert args[args.index("launch_scripts/keep_exit_code.py") + 1:] == ["pretrain.py", "--config", DEMO,
                                                                          "train.max_steps=3"]
    assert ("exit code 75 (relaunch to continue)" in res.stderr) == (expected == 75 and torchrun_code != 0)


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGUSR1, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize("sig,torchrun_sig,expected", [
    ("TERM", "TERM", 75), ("USR1", "USR1", 75), ("HUP", "TERM", 75),  # the ranks save and stop
    ("INT", "INT", 130),  # Ctrl-C: passed on once (the ranks do not catch SIGINT)
])
def test_torchrun_script_passes_signals_on_and_keeps_75(tmp_path, sig, torchrun_sig, expected):
    """Signals to the script reach torchrun (whose ranks then save and stop), and 75 comes back."""
    ready = tmp_path / "ready"
    on_signal = (f"RANK=0 python launch_scripts/keep_exit_code.py {_worker(tmp_path, 75)}; exit 1" if expected == 75
                 else "exit 130")
    _stand_in_torchrun(tmp_path / "bin", f"""
sleep 60 & sleeper=$!
trap 'kill $sleeper; {on_signal}' {torchrun_sig}
touch {ready}
wait
exit 3
""")
    env = {**os.environ, **_stand_in_env(tmp_path / "bin")}
    # As from a terminal or a scheduler: the signals at their defaults, even where this test runs with some
    # ignored (under nohup, or started in the background by a shell: a shell cannot trap an inherited SIG_IGN).
    proc = subprocess.Popen(["bash", TORCHRUN_SH, DEMO], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)
            time.sleep(0.1)
        proc.send_signal(getattr(signal, f"SIG{sig}"))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            kill_tree(proc)
    assert proc.returncode == expected, out + err


# -- dry runs and argument checks ------------------------------------------------------------------
def test_torchrun_script_dry_run(tmp_path):
    env = {"DRY_RUN": "1", "NNODES": "4", "NPROC_PER_NODE": "8", "RDZV_ENDPOINT": "node0:29400", "RDZV_ID": "job7",
           "NODE_RANK": "2", "LOCAL_ADDR": "10.0.0.3", "RDZV_CONF": "join_timeout=900"}
    res = run_cli(["bash", TORCHRUN_SH, DEMO, "optimizer.lr=1e-3", "optimizer.betas=[0.9, 0.99]"], env=env)
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout.strip().splitlines()[-1])
    assert cmd[0] == "torchrun"
    opt = dict(zip(cmd[1:cmd.index("launch_scripts/keep_exit_code.py"):2], cmd[2:cmd.index("launch_scripts/keep_exit_code.py"):2], strict=False))
    assert opt == {"--nnodes": "4", "--nproc_per_node": "8", "--rdzv_backend": "c10d", "--rdzv_endpoint": "node0:29400",
                   "--rdzv_id": "job7", "--rdzv_conf": "join_timeout=900,is_host=0", "--local_addr": "10.0.0.3",
                   "--signals_to_handle": "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1", "--shutdown_timeout": "300",
                   "--max_restarts": "0"}
    assert cmd[cmd.index("pretrain.py"):] == ["pretrain.py", "--config", DEMO, "optimizer.lr=1e-3",
                                              "optimizer.betas=[0.9, 0.99]"]
    # Node 0 hosts the rendezvous store; with the static backend the node rank goes to torchrun.
    res = run_cli(["bash", TORCHRUN_SH, DEMO], env={**env, "NODE_RANK": "0", "RDZV_CONF": ""})
    assert "--rdzv_conf is_host=1" in res.stdout
    res = run_cli(["bash", TORCHRUN_SH, DEMO], env={**env, "RDZV_BACKEND": "static"})
    assert "--node_rank 2 --rdzv_backend static" in res.stdout and "is_host" not in res.stdout
    # Without NODE_RANK, c10d numbers the nodes by arrival.
    res = run_cli(["bash", TORCHRUN_SH, DEMO], env={**env, "NODE_RANK": "", "RDZV_CONF": ""})
    assert res.returncode == 0 and "--node_rank" not in res.stdout and "--rdzv_conf" not in res.stdout


@pytest.mark.parametrize("env,message", [
    ({"RDZV_ENDPOINT": "h:1"}, "NNODES is required"),
    ({"NNODES": "2"}, "RDZV_ENDPOINT is required"),
    ({"NNODES": "two", "RDZV_ENDPOINT": "h:1"}, "NNODES=two is not a number of nodes"),
    ({"NNODES": "2", "RDZV_ENDPOINT": "h"}, "RDZV_ENDPOINT=h is not host:port"),
    ({"NNODES": "2", "RDZV_ENDPOINT": "h:1", "NPROC_PER_NODE": "0"}, "NPROC_PER_NODE=0"),
    ({"NNODES": "2", "RDZV_ENDPOINT": "h:1", "RDZV_BACKEND": "static"}, "static needs NODE_RANK"),
    ({"NNODES": "2", "RDZV_ENDPOINT": "h:1", "SHUTDOWN_TIMEOUT": "soon"}, "SHUTDOWN_TIMEOUT=soon"),
])
def test_torchrun_script_refuses_bad_settings(env, message):
    res = run_cli(["bash", TORCHRUN_SH, DEMO], env={"DRY_RUN": "1", "NNODES": "", "RDZV_ENDPOINT": "", **env})
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_deepspeed_script_dry_run(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# nodes\ngpu-a slots=8  # rank 0's node\n\ngpu-b\tslots=8\n")
    env = {"DRY_RUN": "1", "MASTER_PORT": "29611", "NUM_NODES": "2", "NUM_GPUS": "4"}
    res = run_cli(["bash", DEEPSPEED_SH, str(hostfile), DEMO, "optimizer.lr=1e-3", "name=a b"], env=env)
    assert res.returncode == 0, res.stderr
    cmd = shlex.split(res.stdout.strip().splitlines()[-1])
    head = cmd[:cmd.index("pretrain.py")]
    assert head == ["deepspeed", "--hostfile", str(hostfile), "--master_addr", "gpu-a", "--master_port", "29611",
                    "--num_nodes", "2", "--num_gpus", "4", "--launcher", "pdsh"]
    assert cmd[cmd.index("pretrain.py"):] == ["pretrain.py", "--config", DEMO, "optimizer.lr=1e-3", "name=a b"]
    assert "2 nodes (gpu-a gpu-b) through pdsh" in res.stderr
    # Per node without ssh; MASTER_ADDR overrides the first host's name.
    res = run_cli(["bash", DEEPSPEED_SH, str(hostfile), DEMO],
                  env={"DRY_RUN": "1", "NO_SSH": "1", "NODE_RANK": "1", "MASTER_ADDR": "10.1.0.1"})
    cmd = shlex.split(res.stdout.strip().splitlines()[-1])
    assert cmd[:cmd.index("pretrain.py")] == ["deepspeed", "--hostfile", str(hostfile), "--master_addr", "10.1.0.1",
                                              "--master_port", "29500", "--no_ssh", "--node_rank", "1"]
    # A relative hostfile is taken from the caller's directory (the script runs in the repository root).
    res = run_cli(["bash", str(ROOT / DEEPSPEED_SH), "hostfile", DEMO], cwd=tmp_path, env={"DRY_RUN": "1"})
    assert res.returncode == 0 and f"--hostfile {hostfile} " in res.stdout, res.stderr


@pytest.mark.parametrize("text,env,message", [
    ("gpu-a 8\n", {}, "bad line 'gpu-a 8'"),
    ("gpu-a slots=8\ngpu-a slots=8\n", {}, "host gpu-a listed twice"),
    ("# nothing\n", {}, "lists no host"),
    ("gpu-a slots=8\n", {"NO_SSH": "1", "NODE_RANK": "1"}, "NODE_RANK=K, 0 ... 0"),
    ("gpu-a slots=8\n", {"NUM_GPUS": "x"}, "NUM_GPUS=x"),
])
def test_deepspeed_script_refuses_bad_hostfiles(tmp_path, text, env, message):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(text)
    res = run_cli(["bash", DEEPSPEED_SH, str(hostfile), DEMO], env={"DRY_RUN": "1", **env})
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_deepspeed_script_needs_pdsh_without_no_ssh(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("gpu-a slots=1\ngpu-b slots=1\n")
    bin_dir = tmp_path / "bin"  # a PATH with bash, python and deepspeed but no pdsh
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "basename", "cat"):
        src = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        (bin_dir / tool).symlink_to(src)
    res = run_cli(["bash", DEEPSPEED_SH, str(hostfile), DEMO],
                  env={"PATH": f"{VENV_BIN}:{bin_dir}", "SKIP_SETUP": "1", "DS_ACCELERATOR": "cpu"})
    assert res.returncode == 1 and "'pdsh' not found" in res.stderr and "NO_SSH=1" in res.stderr, res.stderr


def test_train_script_dry_run_and_checks(tmp_path):
    res = run_cli(["bash", "launch_scripts/train.sh", DEMO, "train.max_steps=10", "--stop-after-steps", "5"],
                  env={"DRY_RUN": "1", "NUM_RANKS": "3", "MASTER_PORT": "29612"})
    assert res.returncode == 0, res.stderr
    assert shlex.split(res.stdout.strip().splitlines()[-1]) == [
        "deepspeed", "--num_gpus", "3", "--master_port", "29612", "pretrain.py", "--config", DEMO,
        "train.max_steps=10", "--stop-after-steps", "5"]
    res = run_cli(["bash", "launch_scripts/train.sh", DEMO], env={"DRY_RUN": "1", "NUM_RANKS": "", "DS_ACCELERATOR": "cpu"})
    assert "deepspeed --num_gpus 2 " in res.stdout  # 2 CPU ranks without a GPU
    res = run_cli(["bash", "launch_scripts/train.sh", str(tmp_path / "missing.yaml")], env={"DRY_RUN": "1"})
    assert res.returncode == 2 and "not found" in res.stderr
    res = run_cli(["bash", "launch_scripts/train.sh", DEMO], env={"DRY_RUN": "1", "NUM_RANKS": "-1"})
    assert res.returncode == 2 and "NUM_RANKS=-1" in res.stderr
    res = run_cli(["bash", "launch_scripts/train.sh"])
    assert res.returncode == 2 and "train.sh CONFIG" in res.stderr


@pytest.mark.distributed
def test_train_script_passes_exit_code_75_through(tiny_data, tmp_path, tools):
    """train.sh -> deepspeed -> 2 CPU ranks: --stop-after-steps saves and stops, and 75 comes back."""
    run_dir = tmp_path / "run"
    env = {"SKIP_SETUP": "1", "PYTHON": str(tools / "python"), "MASTER_PORT": str(free_port()), "NUM_RANKS": "2"}
    overrides = tiny_overrides(tiny_data, run_dir, **{"train.max_steps": 4, "eval.interval": 0, "checkpoint.interval": 0})
    res = run_cli(["bash", "launch_scripts/train.sh", DEMO, *overrides, "--stop-after-steps", "2"],
                  env=env, timeout=NODE_TIMEOUT)
    assert res.returncode == 75, res.stdout[-3000:] + res.stderr[-3000:]
    marker = json.loads((run_dir / "checkpoints" / "step_00000002" / "COMPLETE").read_text())
    assert marker["world_size"] == 2
    assert "relaunch the same command to continue" in res.stdout


def test_slurm_script_gives_every_rank_its_cpus(tmp_path):
    """srun (Slurm >= 22.05) does not inherit sbatch's --cpus-per-task: the script passes it on."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "srun.env"
    for name, body in (("scontrol", 'printf "n1\\nn2\\n"\n'),
                       ("srun", f'echo "SRUN_CPUS_PER_TASK=$SRUN_CPUS_PER_TASK OMP_NUM_THREADS=$OMP_NUM_THREADS" > {log}\n')):
        (bin_dir / name).write_text("#!/bin/bash\n" + body)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_CPUS_PER_TASK": "12", "PYTHON": sys.executable}
    res = run_cli(["bash", "launch_scripts/slurm_pretrain.sbatch", DEMO], env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert log.read_text().split() == ["SRUN_CPUS_PER_TASK=12", "OMP_NUM_THREADS=12"]
