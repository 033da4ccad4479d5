"""Command-line mains called in this process (no interpreter start and imports per call): ``pretrain.py``
for the tests' in-process runs (``conftest.run_pretrain``) and the standing ranks (``rank_worker.py``),
``python -m data_prep`` for the data fixtures (``conftest.run_data_prep``)."""

from __future__ import annotations

import contextlib
import io
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def call_pretrain(args: Sequence[str], env: dict | None = None, catch_errors: bool = False) -> tuple[int, str, str]:
    """The same ``pretrain.main.main`` as the command line: its exit code, stdout and stderr.

    A world of one unless RANK and WORLD_SIZE are set. The environment, signal handlers, torch threads and
    working directory are put back afterwards. ``catch_errors``: an exception ends the call as it would end
    the process (its traceback on stderr, exit code 1) instead of propagating.
    """
    import signal

    import deepspeed  # noqa: F401  (imported before the streams are redirected: its logger keeps the real ones)
    import torch

    from pretrain.main import main
    from pretrain.trainer import _world_of_one, temporary_env

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    threads = torch.get_num_threads()
    try:
        with temporary_env({k: str(v) for k, v in (env or {}).items()}), _world_of_one():
            return call_main(main, args, catch_errors)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        torch.set_num_threads(threads)


def call_main(main: Callable[[list[str]], int], args: Sequence[str], catch_errors: bool = False) -> tuple[int, str, str]:
    """``main(args)`` in the repository's directory, as its command line would run it: its exit code, stdout
    and stderr. ``catch_errors``: an exception gives its traceback on stderr and exit code 1."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001
            if not catch_errors:
                raise
            traceback.print_exc()
            code = 1
    return code, out.getvalue(), err.getvalue()
