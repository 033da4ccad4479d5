"""Standing workers: processes that run a study's runs one after another, in-process.

A study is hundreds of short runs; started one process per run, each pays the interpreter, the imports
(torch, DeepSpeed, streaming: 6-9 s on 2 cores) and the teardown. A worker pays them once and then runs
``pretrain.trainer.train(config, overrides)`` for each run it is handed, like ``python pretrain.py`` would
(``train`` leaves nothing behind between runs: process group, engine, hooks, loaders, shared memory,
threads, signal handlers and the torch thread count are put back).

``python -m experiments.worker`` reads one JSON line per run on stdin::

    {"config": PATH, "overrides": ["KEY=VALUE", ...], "log": PATH, "result": PATH}

runs it with its stdout and stderr (file descriptors 1 and 2: DeepSpeed's and C++ output too) appended to
``log``, then writes ``{"code": N, "error": TEXT}`` to ``result`` (atomically): ``code`` is the exit code
``python pretrain.py`` would have given (0 done, 4 diverged, 75 stopped by a signal and saved, 2 a bad
config, 3 an unusable checkpoint, 1 anything else). End of stdin ends the worker.

The worker ignores SIGINT (Ctrl-C reaches the whole process group: the harness decides, and sends SIGTERM,
on which a run saves and stops), and dies with its parent (Linux: ``PR_SET_PDEATHSIG``), so a harness
killed with ``kill -9`` never leaves a worker training on behind a rerun.

:class:`Worker` is the harness's handle on one such process. This module imports nothing of the package
and neither torch nor DeepSpeed at import time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """This process's stdout and stderr (file descriptors 1 and 2, so C++ and DeepSpeed output too) go to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_one(config: str, overrides: list[str]) -> tuple[int, str]:
    """``pretrain.trainer.train(config, overrides)`` in this process: (the exit code ``pretrain.py`` would give,
    an error message). Never raises for the run's own failure; its traceback goes to stderr."""
    from pretrain.errors import EXIT_CONFIG_ERROR, ConfigError, LaunchError
    from pretrain.trainer import train

    try:
        return train(config, overrides).code, ""
    except LaunchError as e:
        return e.code, str(e)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return EXIT_CONFIG_ERROR, f"ConfigError: {e}"
    except Exception as e:  # noqa: BLE001  (a bug or a bad file: this run failed, the worker reports it)
        import traceback

        traceback.print_exc()
        return 1, f"{type(e).__name__}: {e}"


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent dies (Linux); elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def serve(stdin: IO[str] = sys.stdin) -> int:
    """Run the runs read from ``stdin`` one after another, until its end."""
    import gc

    parent = int(os.environ.get("EXPERIMENTS_WORKER_PARENT", os.getppid()))
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import deepspeed  # noqa: F401  (imported once, before any run: what the worker is for)
    import torch

    import pretrain.trainer  # noqa: F401

    threads = os.environ.get("PRETRAIN_THREADS")
    if threads:
        torch.set_num_threads(int(threads))  # each run sets it again (the same number) and puts it back
    for line in stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        gc.collect()
        gc.freeze()  # what is alive between runs stays out of the next run's collections and heap walks
        with output_to(Path(cmd["log"])):
            code, error = run_one(cmd["config"], list(cmd["overrides"]))
        result = Path(cmd["result"])
        tmp = result.with_name(result.name + ".tmp")
        tmp.write_text(json.dumps({"code": code, "error": error}))
        os.replace(tmp, result)
    return 0


class Worker:
    """The harness's handle on one standing worker process (started on first use, replaced when it dies)."""

    def __init__(self, env: dict[str, str], log: Path, results: Path):
        self.env, self.log_path, self.results = env, Path(log), Path(results)
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self.started = 0  # processes started for this slot (1 + replacements)
        self.runs = 0
        self.result: Path | None = None  # where the current run's outcome will appear; None when idle
        self.run_log: Path | None = None  # the current (or last) run's log

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> None:
        self._end_process()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        env = {**self.env, "EXPERIMENTS_WORKER_PARENT": str(os.getpid())}
        self.proc = subprocess.Popen([sys.executable, "-m", "experiments.worker"], cwd=REPO, env=env,
                                     stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        self.started += 1

    def submit(self, config: Path, overrides: list[str], log: Path) -> None:
        """Hand the worker a run (starting a new process if there is none or it died)."""
        assert self.result is None, "the worker is busy"
        self.runs += 1
        self.run_log = Path(log)
        self.result = self.results / f"{os.getpid()}-{id(self)}-{self.runs}.json"
        self.result.unlink(missing_ok=True)
        line = json.dumps({"config": str(config), "overrides": list(overrides), "log": str(log),
                           "result": str(self.result)}) + "\n"
        for attempt in range(2):
            if not self.alive():
                self._start()
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
                return
            except (BrokenPipeError, OSError):  # it died just now, between runs: once more in a new one
                if attempt:
                    raise

    def poll(self) -> dict[str, Any] | None:
        """The current run's outcome ``{"code", "error"}`` once it ended (a dead worker: code < 0 or its exit
        code, and ``died``), else None."""
        if self.result is None:
            return None
        if self.result.is_file():
            got = json.loads(self.result.read_text())
            self.result.unlink(missing_ok=True)
            self.result = None
            return got
        if self.proc is not None and self.proc.poll() is not None:
            if self.result.is_file():  # written just before it exited
                return self.poll()
            code = self.proc.returncode
            self.result = None
            why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            return {"code": code if code else 1, "error": f"its worker process died ({why})", "died": True}
        return None

    def stop_run(self) -> None:
        """Ask the current run to save and stop (SIGTERM: the run's own handler, as for ``pretrain.py``)."""
        if self.result is not None and self.alive():
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> dict[str, Any] | None:
        """The current run's outcome, waiting up to ``timeout`` seconds."""
        deadline = time.time() + timeout
        while self.result is not None and time.time() < deadline:
            got = self.poll()
            if got is not None:
                return got
            time.sleep(0.1)
        return None

    def close(self, timeout: float = 30.0) -> None:
        """End the process (end of its input; killed if it does not exit within ``timeout``); the slot is idle."""
        self._end_process(timeout)
        self.result = None

    def _end_process(self, timeout: float = 30.0) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            elif self.proc.stdin is not None:
                with contextlib.suppress(OSError):
                    self.proc.stdin.close()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


if __name__ == "__main__":  # pragma: no cover
    sys.path.insert(0, str(REPO))
    sys.exit(serve())
