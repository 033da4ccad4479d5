#!/usr/bin/env bash
# Multi-node training with DeepSpeed's launcher and a hostfile: run this once, on one of the nodes.
#
#   bash launch_scripts/train_multinode_deepspeed.sh HOSTFILE CONFIG [KEY=VALUE ...]
#
# Runs  deepspeed --hostfile HOSTFILE --master_addr <first host> --master_port PORT
#         pretrain.py --config CONFIG [ARGS ...]
# HOSTFILE lists one node per line, `HOSTNAME slots=N` (N = ranks on that node, its GPU count);
# `#` starts a comment. The first host is rank 0's node and MASTER_ADDR:
#     gpu-node-01 slots=8
#     gpu-node-02 slots=8
# DeepSpeed starts the ranks of every node with pdsh over ssh (the default launcher), so:
#   - pdsh on this node, and passwordless ssh from it to every host of the hostfile (this one too);
#   - the repository and its .venv at the same path on every node, and the data (data.path) and
#     run_dir on a filesystem shared by all nodes (every rank writes its part of each checkpoint);
#   - the environment does not travel over ssh, except the variables whose names start with NCCL,
#     PYTHON, UCX, MV2 or MLFLOW: put others (OMP_NUM_THREADS=..., GLOO_SOCKET_IFNAME=...) as
#     KEY=VALUE lines in .deepspeed_env in the repository or in your home directory. DS_ACCELERATOR
#     needs no forwarding: each rank picks CUDA or CPU by itself.
# Without pdsh/ssh: NO_SSH=1 NODE_RANK=K on every node (same hostfile, K = its line among the hosts).
# One node per machine: nodes sharing a machine share /dev/shm, where mosaicml-streaming keeps each
# node's state under fixed names, and fail (FileExistsError: '/000000_locals'). CONFIG, HOSTFILE and
# relative paths in KEY=VALUE arguments are taken from the repository root (CONFIG and HOSTFILE
# also from the current directory).
# Data on a shared filesystem: before training, each node's local rank 0 decompresses the zstd shards
# that have no raw copy yet (unique temporary names, atomic renames), so nodes do not collide the way
# streaming's own first-read decompression (shard.N.mds.tmp) would.
# The exit code is the trainer's (pdsh -S gives back the largest code of the nodes): 0 finished,
# 75 saved a checkpoint and stopped before the end (relaunch the same command to continue).
#   MASTER_ADDR   address of the first host as the others reach it (default: its name in the hostfile)
#   MASTER_PORT   rendezvous port on that host (default 29500)
#   NUM_NODES=N   use the first N hosts only;  NUM_GPUS=N  at most N ranks per host
#   LAUNCHER      pdsh (default), openmpi, mvapich, mpich, impi or slurm;  LAUNCHER_ARGS  its extra options
#   SSH_PORT      ssh port of the hosts
#   NO_SSH=1 NODE_RANK=K   start only this node's ranks (run the script on every node)
#   SKIP_SETUP=1  no .venv: use PYTHON=/path/to/python (or the python on PATH) and its deepspeed
#   DRY_RUN=1     print the command only
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/launch_common.sh"
if [ $# -lt 2 ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  usage
  exit 2
fi
HOSTFILE="$(abs_path "$1")"; CONFIG="$(abs_path "$2")"; shift 2
check_config "$CONFIG"

if [ ! -f "$HOSTFILE" ]; then
  echo "error: hostfile $HOSTFILE not found (one 'HOSTNAME slots=N' line per node)" >&2
  exit 2
fi
hosts=()
while IFS= read -r line || [ -n "$line" ]; do
  line="${line%%#*}"
  [ -n "${line//[[:space:]]/}" ] || continue
  if [[ ! "$line" =~ ^[[:space:]]*([^[:space:]]+)[[:space:]]+slots=([0-9]+)[[:space:]]*$ ]]; then
    echo "error: $HOSTFILE: bad line '$line': expected 'HOSTNAME slots=N'" >&2
    exit 2
  fi
  for h in "${hosts[@]}"; do
    [ "$h" != "${BASH_REMATCH[1]}" ] || { echo "error: $HOSTFILE: host ${BASH_REMATCH[1]} listed twice" >&2; exit 2; }
  done
  hosts+=("${BASH_REMATCH[1]}")
done < "$HOSTFILE"
if [ ${#hosts[@]} -eq 0 ]; then
  echo "error: $HOSTFILE lists no host (one 'HOSTNAME slots=N' line per node)" >&2
  exit 2
fi

cmd=(deepspeed --hostfile "$HOSTFILE" --master_addr "${MASTER_ADDR:-${hosts[0]}}" --master_port "${MASTER_PORT:-29500}")
if [ -n "${NUM_NODES:-}" ]; then
  is_count "$NUM_NODES" || { echo "error: NUM_NODES=$NUM_NODES is not a number of nodes >= 1" >&2; exit 2; }
  cmd+=(--num_nodes "$NUM_NODES")
fi
if [ -n "${NUM_GPUS:-}" ]; then
  is_count "$NUM_GPUS" || { echo "error: NUM_GPUS=$NUM_GPUS is not a number of ranks >= 1" >&2; exit 2; }
  cmd+=(--num_gpus "$NUM_GPUS")
fi
[ -z "${SSH_PORT:-}" ] || cmd+=(--ssh_port "$SSH_PORT")
if [ -n "${NO_SSH:-}" ]; then
  case "${NODE_RANK:-}" in
    ''|*[!0-9]*) bad=1 ;;
    *) [ "$NODE_RANK" -lt ${#hosts[@]} ] && bad=0 || bad=1 ;;
  esac
  if [ "$bad" -eq 1 ]; then
    echo "error: NO_SSH=1 needs NODE_RANK=K, 0 ... $(( ${#hosts[@]} - 1 )): this node's line among the hosts of $HOSTFILE" >&2
    exit 2
  fi
  cmd+=(--no_ssh --node_rank "$NODE_RANK")
  where="node $NODE_RANK of ${#hosts[@]} (no ssh)"
else
  launcher="${LAUNCHER:-pdsh}"
  cmd+=(--launcher "$launcher")
  [ -z "${LAUNCHER_ARGS:-}" ] || cmd+=(--launcher_args "$LAUNCHER_ARGS")
  [ "$launcher" != pdsh ] || require_tool pdsh "install pdsh on this node (e.g. apt-get install pdsh), or run with NO_SSH=1 NODE_RANK=K on every node"
  where="${#hosts[@]} nodes (${hosts[*]}) through $launcher"
fi
cmd+=(pretrain.py --config "$CONFIG" "$@")
launch_env

echo "== training on $where, rendezvous at ${MASTER_ADDR:-${hosts[0]}}:${MASTER_PORT:-29500}" >&2
if [ -n "${DRY_RUN:-}" ]; then
  print_cmd "${cmd[@]}"
  exit 0
fi
require_tool deepspeed "activate the environment (drop SKIP_SETUP) or set PYTHON=/path/to/venv/bin/python"
# exec: the launcher takes this shell's place (it stops the remote ranks on SIGTERM/SIGINT), and its
# exit code is ours.
exec "${cmd[@]}"
