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


def _rank_env(rank: int, nproc: int) -> dict[str, str]:
    """This process's environment for rank ``rank`` of ``nproc`` on this machine, as every launcher sets it
    (less MASTER_PORT); the interpreter's bin first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1", "RANK": str(rank), "WORLD_SIZE": str(nproc),
            "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1"}


def spawn_ranks(args: list[str], nproc: int = 2, env: dict | None = None, stdout=None, stderr=None
                ) -> tuple[list[subprocess.Popen], str]:
    """Start ``python pretrain.py ARGS`` as ``nproc`` ranks on this machine, the way every launcher starts them
    (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT), without a launcher process.
    Returns the processes and the rendezvous port."""
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        rank_env = {**_rank_env(rank, nproc), **(env or {}), "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, "pretrain.py", *args], cwd=ROOT, env=rank_env,
                                      stdout=stdout[rank] if isinstance(stdout, list) else stdout,
                                      stderr=stderr[rank] if isinstance(stderr, list) else stderr, text=True))
    return procs, port


def run_ranks(args: list[str], nproc: int = 2, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python pretrain.py ARGS`` on ``nproc`` ranks without a launcher process, in the standing ranks of
    :class:`RankPool` (no interpreter start and imports per launch).

    For tests of what the ranks do together (checkpoints, resume, branches); the launchers themselves
    (deepspeed, torchrun, the scripts) and what happens to processes (signals, kill -9) have their own
    tests with real processes (:func:`spawn_ranks`). Returns the ranks' output (rank 0's first) and an
    exit code as DeepSpeed's launcher gives it: 0 if every rank returned 0, else the first non-zero one;
    like the launchers, a failed rank takes the others down (after a grace period).
    """
    pool = _POOLS.get(nproc)
    if pool is None or not pool.alive():
        pool = _POOLS[nproc] = RankPool(nproc)
    return pool.run(args, env or {}, timeout)


class RankPool:
    """``nproc`` standing rank processes (``tests/rank_worker.py``) that run launches one after another."""

    GRACE_S = 15  # how long the other ranks get after one failed, before they are taken down

    def __init__(self, nproc: int):
        import tempfile

        self.nproc = nproc
        self.dir = Path(tempfile.mkdtemp(prefix="rank_pool_"))
        self.logs = [open(self.dir / f"rank{r}.log", "w") for r in range(nproc)]
        self.procs = []
        for rank in range(nproc):  # MASTER_PORT comes with each launch
            self.procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests" / "rank_worker.py")], cwd=ROOT,
                                               env=_rank_env(rank, nproc), stdin=subprocess.PIPE, stdout=self.logs[rank],
                                               stderr=subprocess.STDOUT, text=True))
        self.launches = 0

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def run(self, args: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
        import json
        import time

        self.launches += 1
        results = [self.dir / f"launch{self.launches}_rank{r}.json" for r in range(self.nproc)]
        cmd_env = {**{k: str(v) for k, v in env.items()}, "MASTER_PORT": str(free_port())}
        for proc, result in zip(self.procs, results, strict=True):
            proc.stdin.write(json.dumps({"args": list(args), "env": cmd_env, "result": str(result)}) + "\n")
            proc.stdin.flush()
        deadline, failed_at, codes = time.time() + timeout, None, [None] * self.nproc
        outs, errs = [""] * self.nproc, [""] * self.nproc
        while None in codes:
            for r, result in enumerate(results):
                if codes[r] is None and result.exists():
                    got = json.loads(result.read_text())
                    codes[r], outs[r], errs[r] = got["code"], got["stdout"], got["stderr"]
                elif codes[r] is None and self.procs[r].poll() is not None:  # the rank process itself died
                    codes[r] = self.procs[r].returncode or 1
                    errs[r] = f"rank {r} died (exit {self.procs[r].returncode}):\n{self._log_tail(r)}"
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.time()
            if None in codes and ((failed_at is not None and time.time() - failed_at > self.GRACE_S)
                                  or time.time() > deadline):
                for r in range(self.nproc):
                    if codes[r] is None:
                        codes[r], errs[r] = -9, f"rank {r} taken down (still running):\n{self._log_tail(r)}"
                self.close()  # ranks stuck in a collective: the next launch gets new processes
                break
            time.sleep(0.05)
        code = next((c for c in codes if c != 0), 0)
        return subprocess.CompletedProcess(["pretrain.py", *args], code, "".join(outs), "".join(errs))

    def _log_tail(self, rank: int) -> str:
        self.logs[rank].flush()
        return (self.dir / f"rank{rank}.log").read_text()[-3000:]

    def close(self) -> None:
        import shutil

        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in self.logs:
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)  # the logs' tails are in the messages of the launches that failed


_POOLS: dict[int, RankPool] = {}


def pytest_sessionfinish(session, exitstatus):
    import gc

    for pool in _POOLS.values():
        pool.close()
    gc.unfreeze()  # (see _settled_heap) the interpreter's own teardown then finds every object


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A real corpus (1 MB of stdlib docstrings), a 512-piece tokenizer, MDS shards of 64+1 tokens."""
    root = tmp_path_factory.mktemp("tiny_data")
    steps = [
        ["demo-corpus", "--output", str(root / "raw"), "--max-mb", "1"],
        ["train-tokenizer", "--input", str(root / "raw"), "--output", str(root / "tok.model"), "--vocab-size", "512"],
        ["tokenize", "--input", str(root / "raw"), "--output", str(root / "tokens"), "--tokenizer",
         str(root / "tok.model"), "--seq-len", str(TINY_SEQ_LEN), "--val-fraction", "0.05"],
    ]
    for args in steps:
        res = run_data_prep(args)
        assert res.returncode == 0, f"data_prep {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}"
    return root / "tokens"


def run_data_prep(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m data_prep ARGS`` run in this process: its exit code, stdout and stderr.

    The same ``data_prep.__main__.main``; its tokenize workers fork from one forkserver per process, which
    imports streaming & co once (~8 s) instead of once per command. Tests of the command line itself
    (``--help``, exit codes of killed runs) start ``python -m data_prep``.
    """
    import logging

    from data_prep.__main__ import main
    from tests.inprocess import call_main

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        code, out, err = call_main(main, args)
    finally:  # the command line's logging set-up (INFO to stderr) ends with the command
        root.setLevel(level)
        root.handlers[:] = handlers
    return subprocess.CompletedProcess(["data_prep", *args], code, out, err)


@pytest.fixture(scope="session")
def per_source_data(tiny_data, tmp_path_factory) -> Path:
    """The tiny corpus (two SlimPajama sources) tokenized with one MDS dataset per source."""
    out = tmp_path_factory.mktemp("per_source") / "tokens"
    raw, tok = tiny_data.parent / "raw", tiny_data.parent / "tok.model"
    res = run_data_prep(["tokenize", "--input", str(raw), "--output", str(out), "--tokenizer", str(tok), "--seq-len", "64",
                         "--val-fraction", "0.05", "--per-source", "-q"])
    assert res.returncode == 0, res.stderr
    return out


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
    from tests.inprocess import call_pretrain

    return subprocess.CompletedProcess(["pretrain.py", *args], *call_pretrain(args, env))


_SIGNALS = ("SIGINT", "SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2")


@pytest.fixture(autouse=True)
def signal_handlers_put_back():
    """Every test leaves this process's signal handlers as it found them.

    A handler left behind changes later tests, and an ignored signal is even inherited by every process
    started afterwards (a shell cannot trap a signal that was ignored when it started).
    """
    import signal

    before = {name: signal.getsignal(getattr(signal, name)) for name in _SIGNALS}
    yield
    after = {name: signal.getsignal(getattr(signal, name)) for name in _SIGNALS}
    changed = {name: (before[name], after[name]) for name in _SIGNALS if after[name] != before[name]}
    for name in changed:
        signal.signal(getattr(signal, name), before[name])
    assert not changed, f"the test left signal handlers changed (before, after): {changed}"


@pytest.fixture(autouse=True)
def _settled_heap():
    """Each test starts with the objects alive before it moved out of the garbage collector's scans.

    A run in this process ends with a full collection and two walks over every object (streaming's shared
    memory, ``pretrain.trainer``): in a process that has imported torch, DeepSpeed, streaming,
    transformers and wandb, 2-3 s a run, paid by every in-process run of the suite. Frozen (``gc.freeze``),
    what earlier tests left is skipped by those scans; the runs of this test are still collected and
    released as they are everywhere.
    """
    import gc

    gc.collect()
    gc.freeze()
    yield
