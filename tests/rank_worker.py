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

import gc
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def serve() -> None:
    from tests.inprocess import call_pretrain

    for line in sys.stdin:
        gc.collect()
        gc.freeze()  # what is alive now is left out of the next launch's collections and scans (see conftest)
        cmd = json.loads(line)
        code, out, err = call_pretrain(cmd["args"], cmd["env"], catch_errors=True)
        tmp = Path(cmd["result"] + ".tmp")
        tmp.write_text(json.dumps({"code": code, "stdout": out, "stderr": err}))
        os.replace(tmp, cmd["result"])


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    serve()
