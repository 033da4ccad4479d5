#!/usr/bin/env bash
# Cooldown branches of several lengths from one checkpoint of a main run (any schedule).
#
#   bash launch_scripts/cooldowns.sh CHECKPOINT "D1 D2 ..." [KEY=VALUE ...]
#
# CHECKPOINT is a complete checkpoint of the main run, e.g. runs/main/checkpoints/step_00010000.
# Each branch starts from it with the main run's own config (saved in the checkpoint), the `cooldown`
# schedule: from the LR the main run had at that step (whatever its schedule: constant, cosine,
# WSD stable phase, ...) down over D updates (train.max_steps = step + D), and its own run directory
# <main run_dir>-cooldown<D>. The main run is only read. KEY=VALUE arguments apply to every branch
# (e.g. schedule.params.shape=1-sqrt schedule.end_ratio=0.1).
#   NUM_RANKS  ranks per branch (default: the GPUs here, else 2 CPU ranks)
#   DRY_RUN=1  print the commands only
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
CKPT="${1%/}"; LENGTHS="$2"; shift 2
[ -n "${DRY_RUN:-}" ] || source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -f "$CKPT/COMPLETE" ] || [ ! -f "$CKPT/config.yaml" ]; then
  echo "error: $CKPT is not a complete checkpoint (expected .../checkpoints/step_NNNNNNNN with COMPLETE and config.yaml)" >&2
  exit 2
fi
STEP=$((10#$(basename "$CKPT" | sed -n 's/^step_\([0-9]\{8,\}\)$/\1/p')))
MAIN_DIR="$(dirname "$(dirname "$CKPT")")"
if [ -z "${NUM_RANKS:-}" ]; then
  NUM_RANKS=$(python3 -c 'import torch; print(torch.cuda.device_count() or 2)' 2>/dev/null || echo 2)
fi

for D in $LENGTHS; do
  case "$D" in ''|*[!0-9]*) echo "error: cooldown length '$D' is not a number of updates" >&2; exit 2;; esac
  RUN_DIR="${MAIN_DIR}-cooldown${D}"
  cmd=(deepspeed --num_gpus "$NUM_RANKS" --master_port "${MASTER_PORT:-29517}" pretrain.py
       --config "$CKPT/config.yaml" --branch-from "$CKPT"
       "run_dir=$RUN_DIR" "name=$(basename "$RUN_DIR")" "checkpoint.dir=null"
       "train.max_steps=$((STEP + D))" "train.max_tokens=null" "train.tokens_per_param=null"
       "schedule.name=cooldown" "schedule.warmup_steps=0" "schedule.end_ratio=null"
       "schedule.params={decay_steps: $D, shape: linear, end_ratio: 0.0}"
       "checkpoint.permanent=[]" "checkpoint.permanent_every=0" "checkpoint.schedule_branch_points=false" "$@")
  echo "== cooldown of $D updates from step $STEP: $RUN_DIR"
  if [ -n "${DRY_RUN:-}" ]; then
    printf '%q ' "${cmd[@]}"; echo
  else
    "${cmd[@]}"
  fi
done
