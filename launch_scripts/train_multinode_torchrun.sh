#!/usr/bin/env bash
# Multi-node training with torchrun and its c10d rendezvous: run this once on every node.
#
#   NNODES=4 RDZV_ENDPOINT=node0:29400 RDZV_ID=run42 bash launch_scripts/train_multinode_torchrun.sh CONFIG [KEY=VALUE ...]
#
# Runs  torchrun --nnodes NNODES --nproc_per_node NPROC_PER_NODE --rdzv_backend c10d
#         --rdzv_endpoint RDZV_ENDPOINT --rdzv_id RDZV_ID pretrain.py --config CONFIG [ARGS ...]
# The nodes meet at RDZV_ENDPOINT: a host:port of one of the nodes (the torchrun there hosts the
# rendezvous store; the port must be free there and reachable from every node). No ssh is needed.
# The ranks start when NNODES nodes have joined; torchrun numbers the nodes itself (sorted by their
# address, not by NODE_RANK). The repository, the data (data.path) and run_dir must be on a filesystem
# shared by all nodes, at the same paths: every rank writes its part of each checkpoint, then rank 0
# writes the manifest and the COMPLETE marker. Relative paths in KEY=VALUE arguments are taken from
# the repository root, where the trainer runs (CONFIG also from the current directory).
# Data on a shared filesystem: before training, each node's local rank 0 decompresses the zstd shards
# that have no raw copy yet (unique temporary names, atomic renames), so nodes do not collide the way
# streaming's own first-read decompression (shard.N.mds.tmp) would.
#   NNODES=N          number of nodes (required; MIN:MAX for an elastic range)
#   RDZV_ENDPOINT     host:port of the rendezvous (required)
#   RDZV_ID           the job's id, the same on every node and new for every job (default: pretrain)
#   NPROC_PER_NODE=N  ranks on this node (default: the GPUs here, else 2 CPU ranks)
#   NODE_RANK=K       optional with c10d: node 0 then hosts the rendezvous store (rdzv_conf is_host)
#                     and the others only connect to it; required with RDZV_BACKEND=static, where it
#                     is the node's rank
#   RDZV_BACKEND      c10d (default) or static (then RDZV_ENDPOINT is the rank-0 node's MASTER_ADDR:PORT)
#   RDZV_CONF         extra rendezvous settings, e.g. join_timeout=900 (default 600 s),read_timeout=120
#   LOCAL_ADDR        this node's address as the others reach it (default: the node's FQDN, which
#                     must then resolve on every node); the rank-0 node's is the process group's MASTER_ADDR
#   MAX_RESTARTS      torchrun restarts of all ranks after a failure (default 0; keep 0 with
#                     preemption: a restart would also follow a clean stop)
#   SHUTDOWN_TIMEOUT  seconds torchrun gives its ranks to save and exit after it passes them a
#                     signal, before SIGKILL (default 300; torchrun's own default is 30)
#   SKIP_SETUP=1      no .venv: use PYTHON=/path/to/python (or the python on PATH) and its torchrun
#   DRY_RUN=1         print the command only
# Exit code: torchrun reports a failed worker as 1, so the trainer's 75 (saved a checkpoint and
# stopped before the end: relaunch to continue) would be lost. Each rank therefore runs through
# keep_exit_code.py, which records its exit code, and this script exits 75 when the ranks of this
# node stopped that way (other codes are torchrun's). slurm_pretrain.sbatch does not need this: it
# starts every rank with srun. For a clean stop send SIGTERM or SIGUSR1 to the pretrain.py ranks, to
# torchrun or to this script (each passes them on; SIGHUP to this script counts as SIGTERM).
# One node per machine: two "nodes" on one machine share /dev/shm, where mosaicml-streaming keeps
# each node's state under fixed names, and fail (FileExistsError: '/000000_locals').
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
take_config "$@"; shift

BACKEND="${RDZV_BACKEND:-c10d}"
for var in NNODES RDZV_ENDPOINT; do
  [ -n "${!var:-}" ] || { echo "error: $var is required (NNODES=number of nodes, RDZV_ENDPOINT=host:port; see $0 --help)" >&2; exit 2; }
done
case "$NNODES" in
  *:*) is_count "${NNODES%%:*}" && is_count "${NNODES##*:}" ;;
  *) is_count "$NNODES" ;;
esac || { echo "error: NNODES=$NNODES is not a number of nodes (N or MIN:MAX)" >&2; exit 2; }
case "$RDZV_ENDPOINT" in
  ?*:*[0-9]) ;;
  *) echo "error: RDZV_ENDPOINT=$RDZV_ENDPOINT is not host:port" >&2; exit 2 ;;
esac
if [ -n "${SHUTDOWN_TIMEOUT:-}" ] && ! is_count "$SHUTDOWN_TIMEOUT"; then
  echo "error: SHUTDOWN_TIMEOUT=$SHUTDOWN_TIMEOUT is not a number of seconds >= 1" >&2
  exit 2
fi
if [ -n "${NPROC_PER_NODE:-}" ] && ! is_count "$NPROC_PER_NODE"; then
  echo "error: NPROC_PER_NODE=$NPROC_PER_NODE is not a number of ranks >= 1" >&2
  exit 2
fi
case "${NODE_RANK:-0}" in
  ''|*[!0-9]*) echo "error: NODE_RANK=$NODE_RANK is not a node rank >= 0" >&2; exit 2 ;;
esac
conf="${RDZV_CONF:-}"
node_args=()
case "$BACKEND" in
  c10d)
    if [ -n "${NODE_RANK:-}" ] && [[ ",$conf" != *",is_host="* ]]; then
      conf="${conf:+$conf,}is_host=$([ "$NODE_RANK" -eq 0 ] && echo 1 || echo 0)"
    fi ;;
  static)
    [ -n "${NODE_RANK:-}" ] || { echo "error: RDZV_BACKEND=static needs NODE_RANK" >&2; exit 2; }
    node_args=(--node_rank "$NODE_RANK") ;;
  *) echo "error: RDZV_BACKEND=$BACKEND: use c10d or static" >&2; exit 2 ;;
esac

launch_env
if [ -z "${NPROC_PER_NODE:-}" ]; then
  NPROC_PER_NODE=$(local_gpus)
  is_count "$NPROC_PER_NODE" || NPROC_PER_NODE=2
fi

cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" "${node_args[@]}"
     --rdzv_backend "$BACKEND" --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-pretrain}")
[ -z "$conf" ] || cmd+=(--rdzv_conf "$conf")
[ -z "${LOCAL_ADDR:-}" ] || cmd+=(--local_addr "$LOCAL_ADDR")
# SIGUSR1 too (as SLURM's --signal sends it), and time for the ranks to save before torchrun kills them.
cmd+=(--signals_to_handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown_timeout "${SHUTDOWN_TIMEOUT:-300}")
cmd+=(--max_restarts "${MAX_RESTARTS:-0}" launch_scripts/keep_exit_code.py pretrain.py --config "$CONFIG" "$@")

echo "== node ${NODE_RANK:-?} of $NNODES: $NPROC_PER_NODE ranks (${DS_ACCELERATOR:-auto}), rendezvous $BACKEND at $RDZV_ENDPOINT id ${RDZV_ID:-pretrain}" >&2
if [ -n "${DRY_RUN:-}" ]; then
  print_cmd "${cmd[@]}"
  exit 0
fi
require_tool torchrun "activate the environment (drop SKIP_SETUP) or set PYTHON=/path/to/venv/bin/python"

PRETRAIN_EXIT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/pretrain-exit.XXXXXX")"
export PRETRAIN_EXIT_DIR
trap 'rm -rf "$PRETRAIN_EXIT_DIR"' EXIT
# torchrun in the background so that this shell can pass signals on to it (SIGTERM, SIGUSR1: torchrun
# passes them to the ranks, which save and stop) and read the ranks' exit codes afterwards. Job control
# (set -m) puts torchrun in a process group of its own, where SIGINT is not ignored as it is for a
# background command otherwise: a terminal's Ctrl-C reaches this shell only, which passes it on once.
torchrun_pid= interrupted=0
forward() { interrupted=1; [ -z "$torchrun_pid" ] || kill -s "$1" "$torchrun_pid" 2>/dev/null || true; }
trap 'forward TERM' TERM HUP
trap 'forward USR1' USR1
trap 'forward INT' INT
set -m
"${cmd[@]}" &
torchrun_pid=$!
while :; do
  interrupted=0
  wait "$torchrun_pid" && code=0 || code=$?
  # A trapped signal ends `wait` early (code > 128) while torchrun runs on: wait again.
  [ "$interrupted" -eq 1 ] && [ "$code" -gt 128 ] || break
done

if [ "$code" -ne 0 ]; then
  seen75=0 other=0
  for f in "$PRETRAIN_EXIT_DIR"/exit_rank*; do
    [ -f "$f" ] || continue
    case "$(cat "$f")" in 75) seen75=1 ;; 0) ;; *) other=1 ;; esac
  done
  if [ "$seen75" -eq 1 ] && [ "$other" -eq 0 ]; then
    echo "torchrun exited with code $code; the ranks of this node saved a checkpoint and stopped early: exit code 75 (relaunch to continue)" >&2
    code=75
  fi
fi
exit "$code"
