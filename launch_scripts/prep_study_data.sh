#!/usr/bin/env bash
# Data of the experiment harness's CPU studies (configs/studies/cpu.yaml: data.path data/study/tokens):
#   1. a real-text corpus, the same on every machine: the docstrings and reference manual of the Python
#      standard library plus the docstrings, shipped docs and METADATA descriptions of ONLY the distributions
#      pinned in constraints.txt, each at its pinned version (python -m experiments.corpus stage links them
#      into $DATA/pinned-site and refuses when one is missing or at another version: ALLOW_MISMATCH=1 goes on
#      with a warning, and the corpus then differs from the committed results'), deduplicated
#      (python -m data_prep demo-corpus --sources stdlib,packages --site-packages $DATA/pinned-site), into $DATA/raw;
#   2. a 1024-piece sentencepiece tokenizer trained on it (small models: embeddings stay a fraction of
#      the parameters): $DATA/tokenizer.model;
#   3. packed MDS token shards of SEQ_LEN+1 tokens with a held-out val split, one dataset per source (the
#      skiplr study pretrains on one source and fine-tunes on another; the merged index serves the rest): $DATA/tokens.
#   4. the corpus's sha256 and token counts (python -m experiments.corpus fingerprint), printed and written to
#      $DATA/corpus.json; every study report prints them and says when they differ from the committed results'
#      corpus (experiments/results/corpus.json).
# Each step is skipped when its output exists (delete it to redo the step). The Python version matters too
# (the stdlib's docstrings): it is recorded in $DATA/corpus.json.
#   DATA=data/study  VOCAB_SIZE=1024  SEQ_LEN=128  VAL_FRACTION=0.05  MAX_MB_PER_DIST=10  WORKERS=(all cores)
#   CONSTRAINTS=constraints.txt  ALLOW_MISMATCH=  (1: build even if the installed versions differ from the pins)
#   SKIP_SETUP=1  use the `python` on PATH instead of creating/refreshing .venv (setup_env.sh)
set -euo pipefail
if [ -z "${SKIP_SETUP:-}" ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
else
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
fi

DATA="${DATA:-data/study}"
VOCAB_SIZE="${VOCAB_SIZE:-1024}"
SEQ_LEN="${SEQ_LEN:-128}"
VAL_FRACTION="${VAL_FRACTION:-0.05}"
MAX_MB_PER_DIST="${MAX_MB_PER_DIST:-10}"
CONSTRAINTS="${CONSTRAINTS:-constraints.txt}"

step_start() { echo "== $1"; STEP_T0=$(date +%s%N); }
step_end() {
  local ms=$((($(date +%s%N) - STEP_T0) / 1000000))
  printf '   %s took %d.%01d s\n' "$1" $((ms / 1000)) $((ms % 1000 / 100))
}

if [ ! -f "$DATA/raw/.complete" ]; then
  step_start "1/3 gathering the corpus (stdlib + the distributions pinned in $CONSTRAINTS) into $DATA/raw"
  python -m experiments.corpus stage --constraints "$CONSTRAINTS" --out "$DATA/pinned-site" ${ALLOW_MISMATCH:+--allow-mismatch}
  python -m data_prep demo-corpus --sources stdlib,packages --site-packages "$DATA/pinned-site" \
    --max-mb-per-dist "$MAX_MB_PER_DIST" --output "$DATA/raw"
  python -c 'import sys; print("# Python", sys.version.split()[0]); print(open(sys.argv[1]).read().strip())' \
    "$CONSTRAINTS" > "$DATA/corpus_packages.txt"
  touch "$DATA/raw/.complete"
  step_end corpus
else
  echo "== 1/3 corpus: $DATA/raw exists, skipped"
fi

if [ ! -f "$DATA/tokenizer.model" ]; then
  step_start "2/3 training the sentencepiece tokenizer (vocab $VOCAB_SIZE)"
  python -m data_prep train-tokenizer --input "$DATA/raw" --output "$DATA/tokenizer.model" --vocab-size "$VOCAB_SIZE"
  step_end tokenizer
else
  echo "== 2/3 tokenizer: $DATA/tokenizer.model exists, skipped"
fi

if [ ! -f "$DATA/tokens/manifest.json" ]; then
  step_start "3/3 tokenizing into MDS shards (seq_len $SEQ_LEN)"
  python -m data_prep tokenize --input "$DATA/raw" --output "$DATA/tokens" --tokenizer "$DATA/tokenizer.model" \
    --seq-len "$SEQ_LEN" --val-fraction "$VAL_FRACTION" --per-source ${WORKERS:+--workers "$WORKERS"}
  step_end tokenize
else
  echo "== 3/3 tokens: $DATA/tokens/manifest.json exists, skipped"
fi

python - "$DATA/tokens" <<'EOF'
import sys

from data_prep import read_manifest

m = read_manifest(sys.argv[1])
print(f"{sys.argv[1]}: seq_len {m['seq_len']}, vocab {m['vocab_size']}")
for split in ("train", "val"):
    s = m["splits"][split]
    per = ", ".join(f"{k} {v['tokens']:,}" for k, v in sorted(s.get("sources", {}).items()))
    print(f"  {split:5s} {s['tokens']:>12,} tokens  {s['samples']:>9,} samples  {s['documents']:>7,} documents"
          f"  {s['text_bytes'] / 1e6:7.2f} MB of text  ({per})")
EOF

python -m experiments.corpus fingerprint "$DATA/tokens" --write "$DATA/corpus.json" --pins "$CONSTRAINTS"
