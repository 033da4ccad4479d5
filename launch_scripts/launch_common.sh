# Sourced by train.sh, train_multinode_deepspeed.sh and train_multinode_torchrun.sh (not run by itself).
#
# launch_env: the Python environment, then cd to the repository root.
#   default       source setup_env.sh: create/refresh .venv and activate it, set DS_ACCELERATOR
#   SKIP_SETUP=1  no .venv: use $PYTHON (its directory goes first on PATH, so the `deepspeed` and
#                 `torchrun` next to it are used) or the `python` on PATH; DS_ACCELERATOR is still set
#   DRY_RUN=1     as SKIP_SETUP=1, but nothing has to be installed: commands are only printed
# local_gpus: the number of GPUs here for the default rank count (0 without CUDA or with DS_ACCELERATOR=cpu).
# print_cmd ARGS...: the command, quoted so that a shell (or shlex.split) gives back the same words.
LAUNCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

launch_env() {
  if [ -z "${SKIP_SETUP:-}" ] && [ -z "${DRY_RUN:-}" ]; then
    # shellcheck source=setup_env.sh
    source "$LAUNCH_ROOT/launch_scripts/setup_env.sh"
    return
  fi
  if [ -n "${PYTHON:-}" ]; then
    local py
    if ! py="$(command -v "$PYTHON")"; then
      echo "error: PYTHON=$PYTHON not found" >&2
      exit 1
    fi
    export PATH="$(dirname "$py"):$PATH"
  fi
  if [ -z "${DRY_RUN:-}" ] && ! command -v python >/dev/null 2>&1; then
    echo "error: SKIP_SETUP=1 but no 'python' on PATH: set PYTHON=/path/to/venv/bin/python" >&2
    exit 1
  fi
  if [ -z "${DS_ACCELERATOR:-}" ]; then
    if python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' >/dev/null 2>&1; then
      export DS_ACCELERATOR=cuda
    else
      export DS_ACCELERATOR=cpu
    fi
  fi
  cd "$LAUNCH_ROOT"
}

local_gpus() {
  if [ "${DS_ACCELERATOR:-}" = cpu ]; then
    echo 0
  else
    python -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0
  fi
}

# require_tool NAME HINT: stop with a message unless NAME is on PATH (not checked in a dry run).
require_tool() {
  if [ -z "${DRY_RUN:-}" ] && ! command -v "$1" >/dev/null 2>&1; then
    echo "error: '$1' not found on PATH: $2" >&2
    exit 1
  fi
}

# usage: the calling script's header comment (its usage) on stderr.
usage() {
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2
}

print_cmd() {
  printf '%q ' "$@"
  echo
}

# abs_path PATH: PATH made absolute when it names a file from the caller's directory (the scripts
# then run in the repository root); otherwise unchanged, i.e. relative to the repository root.
abs_path() {
  if [ -e "$1" ] && [ "${1#/}" = "$1" ]; then
    echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
  else
    echo "$1"
  fi
}

# check_config PATH: stop unless PATH (from abs_path) names a file, before any setup work.
check_config() {
  if [ ! -f "$1" ] && [ ! -f "$LAUNCH_ROOT/$1" ]; then
    echo "error: config $1 not found" >&2
    exit 2
  fi
}

# is_count VALUE: a positive integer.
is_count() {
  case "$1" in ''|*[!0-9]*|0) return 1;; esac
}

# take_config "$@": usage on -h/--help or no argument; else CONFIG = the first argument as an absolute
# path, checked. The caller then drops it with `shift`.
take_config() {
  if [ $# -lt 1 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
    usage
    exit 2
  fi
  CONFIG="$(abs_path "$1")"
  check_config "$CONFIG"
}
