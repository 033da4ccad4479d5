"""Shared fixtures: a tiny real dataset made by the real data_prep CLI, and run helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_SEQ_LEN = 64


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "distributed: starts several processes (DeepSpeed / torchrun ranks)")
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _has_cuda() else "cuda")


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def run_cli(args: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    # The interpreter's bin first on PATH (its deepspeed, torchrun and ninja: a different ninja would
    # rebuild DeepSpeed's compiled op).
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    full_env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def spawn_ranks(args: list[str], nproc: int = 2, env: dict | None = None, stdout=None, stderr=None
                ) -> tuple[list[subprocess.Popen], str]:
    """Start ``python pretrain.py ARGS`` as ``nproc`` ranks on this machine, the way every launcher starts them
    (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT), without a launcher process.
    Returns the processes and the rendezvous port."""
    port = str(free_port())
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    procs = []
    for rank in range(nproc):
        rank_env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", **(env or {}), "RANK": str(rank),
                    "WORLD_SIZE": str(nproc), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=ROOT, env=rank_env,
                                      stdout=stdout[rank] if isinstance(stdout, list) else stdout,
                                      stderr=stderr[rank] if isinstance(stderr, list) else stderr, text=True))
    return procs, port


def run_ranks(args: list[str], nproc: int = 2, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python pretrain.py ARGS`` on ``nproc`` ranks without a launcher process (:func:`spawn_ranks`).

    For tests of what the ranks do together (checkpoints, resume, branches); the launchers themselves
    (deepspeed, torchrun, the scripts) have their own tests. Returns the ranks' output (rank 0's first) and
    an exit code as DeepSpeed's launcher gives it: 0 if every rank returned 0, else the first non-zero one;
    like the launchers, a failed rank takes the others down (after a grace period).
    """
    import tempfile
    import time

    outs = [tempfile.TemporaryFile("w+") for _ in range(nproc)]  # files: a full pipe cannot stall a rank
    errs = [tempfile.TemporaryFile("w+") for _ in range(nproc)]
    procs, _ = spawn_ranks(args, nproc, env, outs, errs)
    try:
        deadline, failed_at = time.time() + timeout, None
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.time()
            if failed_at is not None and time.time() - failed_at > 15:
                break
            time.sleep(0.05)
        codes = [p.poll() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for f in outs + errs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    code = next((c if c is not None else -9 for c in codes if c != 0), 0)
    return subprocess.CompletedProcess(["pretrain.py", *args], code, "".join(texts[:nproc]), "".join(texts[nproc:]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A real corpus (1 MB of stdlib docstrings), a 512-piece tokenizer, MDS shards of 64+1 tokens."""
    root = tmp_path_factory.mktemp("tiny_data")
    py = sys.executable
    steps = [
        [py, "-m", "data_prep", "demo-corpus", "--output", str(root / "raw"), "--max-mb", "1"],
        [py, "-m", "data_prep", "train-tokenizer", "--input", str(root / "raw"), "--output",
         str(root / "tok.model"), "--vocab-size", "512"],
        [py, "-m", "data_prep", "tokenize", "--input", str(root / "raw"), "--output", str(root / "tokens"),
         "--tokenizer", str(root / "tok.model"), "--seq-len", str(TINY_SEQ_LEN), "--val-fraction", "0.05"],
    ]
    for cmd in steps:
        res = run_cli(cmd)
        assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    return root / "tokens"


def tiny_overrides(data_dir: Path, run_dir: Path, **extra) -> list[str]:
    """Overrides that turn configs/demo_cpu.yaml into a seconds-long run on tiny data."""
    base = {
        "model.preset": "tiny",
        "data.path": str(data_dir),
        "run_dir": str(run_dir),
        "train.max_steps": 6,
        "train.global_batch_size": 8,
        "train.micro_batch_size": 2,
        "eval.interval": 3,
        "eval.max_samples": 16,
        "checkpoint.interval": 3,
        "logging.interval": 1,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def run_pretrain(args: list[str], env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python pretrain.py ARGS`` run in this process (a world of one): its exit code, stdout and stderr.

    The same ``pretrain.main.main`` as the command line, without an interpreter and imports per run
    (seconds each); the environment, signal handlers, torch threads and working directory are put
    back afterwards. Tests of process-level behaviour (signals, kill -9, separate processes, no
    traceback on stderr) use ``run_cli`` instead.
    """
    import contextlib
    import io
    import signal

    import deepspeed  # noqa: F401  (imported before the streams are redirected: its logger keeps the real ones)
    import torch

    from pretrain.main import main
    from pretrain.trainer import _world_of_one, temporary_env

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    threads = torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.chdir(ROOT), temporary_env(env or {}), _world_of_one(), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse
                code = e.code if isinstance(e.code, int) else 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["pretrain.py", *args], code, out.getvalue(), err.getvalue())
