#!/usr/bin/env bash
# The main job on the embedded default, from nothing:
#   set up .venv -> gather a real corpus (Python stdlib docstrings + reference manual) in SlimPajama's layout
#   -> train a sentencepiece tokenizer -> pack MDS shards -> train a tiny GPT with DeepSpeed ZeRO-2
#   on 2 ranks (bf16 where the CPU runs it fast, else fp32: train.precision auto) -> plot the loss curve and compare with a unigram baseline.
# Data steps are skipped when their output exists; every training run gets a new run directory.
#   NUM_RANKS=2  CONFIG=configs/demo_cpu.yaml  and any KEY=VALUE arguments (passed to pretrain.py).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"

DATA=data/demo
CONFIG="${CONFIG:-configs/demo_cpu.yaml}"
NUM_RANKS="${NUM_RANKS:-2}"
RUN_DIR="runs/demo-$(date +%Y%m%d-%H%M%S)"

if [ ! -f "$DATA/raw/.complete" ]; then
  echo "== 1/4 gathering the demo corpus into $DATA/raw"
  python -m data_prep demo-corpus --output "$DATA/raw"
  touch "$DATA/raw/.complete"
fi
if [ ! -f "$DATA/tokenizer.model" ]; then
  echo "== 2/4 training the sentencepiece tokenizer"
  python -m data_prep train-tokenizer --input "$DATA/raw" --output "$DATA/tokenizer.model" --vocab-size 4096
fi
if [ ! -f "$DATA/tokens/manifest.json" ]; then
  echo "== 3/4 tokenizing into MDS shards"
  python -m data_prep tokenize --input "$DATA/raw" --output "$DATA/tokens" --tokenizer "$DATA/tokenizer.model" \
    --seq-len 256 --val-fraction 0.05
fi

echo "== 4/4 training on $NUM_RANKS ranks ($DS_ACCELERATOR): $RUN_DIR"
deepspeed --num_gpus "$NUM_RANKS" --master_port "${MASTER_PORT:-29513}" pretrain.py --config "$CONFIG" \
  run_dir="$RUN_DIR" "$@"

python -m pretrain.report "$RUN_DIR"
