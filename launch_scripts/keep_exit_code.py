"""Run a Python script as ``python SCRIPT ARGS...`` would and record its exit code in a file.

    torchrun ... launch_scripts/keep_exit_code.py pretrain.py --config run.yaml ...

torchrun reports any failed worker as exit code 1, so the trainer's 75 ("saved a checkpoint and
stopped before the end: relaunch to continue") is lost. With ``PRETRAIN_EXIT_DIR`` set, each worker
writes its exit code to ``$PRETRAIN_EXIT_DIR/exit_rank<RANK>`` (nothing when killed outright), and
``train_multinode_torchrun.sh`` gives back 75 when every code recorded on its node is 75 (or 0).
The script runs in this process (``runpy``), so signals go straight to its handlers.
"""

from __future__ import annotations

import os
import runpy
import sys


def _code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    return 1  # sys.exit("message")


def _record(code: int) -> None:
    out = os.environ.get("PRETRAIN_EXIT_DIR")
    if not out:
        return
    path = os.path.join(out, f"exit_rank{os.environ.get('RANK', '0')}")
    try:
        with open(path + ".tmp", "w") as f:
            f.write(f"{code}\n")
        os.replace(path + ".tmp", path)
    except OSError as e:  # recording is best effort: never mask the real outcome
        print(f"warning: could not record the exit code in {path}: {e}", file=sys.stderr)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} SCRIPT.py [ARGS ...]")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` sets it
    code = 1
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as e:
        code = _code(e)
        raise
    finally:
        _record(code)


if __name__ == "__main__":
    main()
