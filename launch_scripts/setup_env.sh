# Sourced by the other scripts: create/refresh the virtual environment in .venv and activate it.
# Installs only when pyproject.toml or constraints.txt changed since the last install.
#   PYTHON=python3.11 VENV=/path/to/venv  override the interpreter and the location.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python >= 3.10 or set PYTHON=/path/to/python3" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "error: $PYTHON is $("$PYTHON" -V 2>&1); Python >= 3.10 is needed (set PYTHON=...)" >&2
  exit 1
fi

stamp="$VENV/.installed-$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "== setting up $VENV (first time: downloads PyTorch, DeepSpeed, mosaicml-streaming; a few minutes)"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip setuptools wheel
  "$VENV/bin/python" -m pip install --quiet -c "$ROOT/constraints.txt" -e "$ROOT[test]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
# DeepSpeed's launcher and engine need to know the accelerator before they start.
if [ -z "${DS_ACCELERATOR:-}" ]; then
  if python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    export DS_ACCELERATOR=cuda
  else
    export DS_ACCELERATOR=cpu
  fi
fi
# On CPU, DeepSpeed JIT-builds its shared-memory all-reduce op on the first start (~1 minute); build it
# once here, as part of the set-up, instead of inside the first run (it is cached in ~/.cache/torch_extensions).
if [ "$DS_ACCELERATOR" = cpu ] && [ ! -f "$VENV/.shm-op-built" ]; then
  echo "== building DeepSpeed's CPU communication op (once, ~1 minute)"
  python -c 'from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False)' \
    >/dev/null 2>&1 && touch "$VENV/.shm-op-built" || echo "warning: could not pre-build the op; the first run builds it"
fi
cd "$ROOT"
