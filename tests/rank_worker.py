"""One rank of a standing world for the tests: it runs ``pretrain.py`` launches one after another.

Started by ``tests.conftest.RankPool`` with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and
MASTER_ADDR set. Each line on stdin is a JSON command ``{"args": [...], "env": {...}, "result": PATH}``:
the rank calls the same ``pretrain.main.main(args)`` as ``python pretrain.py args`` with ``env`` added
(MASTER_PORT among it: a new rendezvous per launch), then writes ``{"code", "stdout", "stderr"}`` to
``PATH`` (atomically). The interpreter, torch, DeepSpeed and streaming are imported once instead of
once per launch (about 8 s a rank on 2 cores).

Each launch sets up and tears down its own process group, data loader and shared memory, as
``pretrain.train()`` does for runs in a row; tests that compare such launches bit for bit with
separate processes (test_checkpoint's resume tests) check that nothing leaks between them.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import signal
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve() -> None:
    import deepspeed  # noqa: F401  (before any redirection: its logger keeps the streams it saw first)
    import torch

    from pretrain.main import main
    from pretrain.trainer import temporary_env

    threads = torch.get_num_threads()
    for line in sys.stdin:
        gc.collect()
        gc.freeze()  # what is alive now is left out of the next launch's collections and scans (see conftest)
        cmd = json.loads(line)
        handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
        out, err = io.StringIO(), io.StringIO()
        try:
            with contextlib.chdir(ROOT), temporary_env(cmd["env"]), \
                    contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(cmd["args"])
                except SystemExit as e:  # argparse
                    code = e.code if isinstance(e.code, int) else 1
                except BaseException:  # noqa: BLE001  (what would end a process: its traceback, exit 1)
                    traceback.print_exc()
                    code = 1
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            torch.set_num_threads(threads)
        tmp = Path(cmd["result"] + ".tmp")
        tmp.write_text(json.dumps({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}))
        os.replace(tmp, cmd["result"])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    serve()
