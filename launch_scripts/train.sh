#!/usr/bin/env bash
# Train on this machine: one rank per local GPU (2 CPU ranks without a GPU), with DeepSpeed's launcher.
#
#   bash launch_scripts/train.sh CONFIG [KEY=VALUE ...] [--stop-after-steps K] [--branch-from CKPT]
#
# Runs  deepspeed --num_gpus N --master_port PORT pretrain.py --config CONFIG [ARGS ...]
# after sourcing setup_env.sh (creates/activates .venv, sets DS_ACCELERATOR). Arguments after CONFIG
# go to pretrain.py. The exit code is the trainer's: 0 finished, 75 saved a checkpoint and stopped
# before the end (SIGTERM/SIGUSR1 to a rank, --stop-after-steps): relaunch the same command to
# continue; 2 invalid configuration; 3 no usable checkpoint.
# Relative paths in KEY=VALUE arguments are taken from the repository root, where the trainer runs.
#   NUM_RANKS=N     ranks (default: the GPUs here, else 2 CPU ranks)
#   MASTER_PORT=P   rendezvous port on 127.0.0.1 (default 29500; one per concurrent run)
#   SKIP_SETUP=1    no .venv: use PYTHON=/path/to/python (or the python on PATH) and its deepspeed
#   DRY_RUN=1       print the command only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
take_config "$@"; shift
if [ -n "${NUM_RANKS:-}" ] && ! is_count "$NUM_RANKS"; then
  echo "error: NUM_RANKS=$NUM_RANKS is not a number of ranks >= 1" >&2
  exit 2
fi
launch_env

if [ -z "${NUM_RANKS:-}" ]; then
  NUM_RANKS=$(local_gpus)
  is_count "$NUM_RANKS" || NUM_RANKS=2
fi
require_tool deepspeed "activate the environment (drop SKIP_SETUP) or set PYTHON=/path/to/venv/bin/python"

cmd=(deepspeed --num_gpus "$NUM_RANKS" --master_port "${MASTER_PORT:-29500}" pretrain.py --config "$CONFIG" "$@")
echo "== training on $NUM_RANKS ranks (${DS_ACCELERATOR:-auto}) on this machine" >&2
if [ -n "${DRY_RUN:-}" ]; then
  print_cmd "${cmd[@]}"
  exit 0
fi
# exec: the launcher takes this shell's place, and its exit code is ours. For a clean stop (save, exit 75)
# send SIGTERM or SIGUSR1 to the pretrain.py ranks, as a scheduler signalling every process of the job does.
exec "${cmd[@]}"
