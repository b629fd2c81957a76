#!/usr/bin/env bash
# The accelerator measurements in one command (planned for one H200, well under 10 minutes):
# the training levers at the paper-like config (depth 24, width 768, 16x16 tokens, vocab
# 1024, batch 128, bf16; then batch 256 with the memory levers) and the decode benchmark
# at batch 1/32/128 in bf16 with whole-decode CUDA graphs. Every benchmark writes its JSON
# and log under OUT_DIR; one that fails (out of memory, a compile error) is logged and the
# rest still run.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]            # on the GPU machine, from the repo root
#   bash benchmarks/gpu_check.sh --smoke [OUT_DIR]    # tiny sizes on CPU: checks the script
#
# Needs a Python with this repository's dependencies (torch with CUDA); PYTHON overrides it.
set -u
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; shift; fi
OUT_DIR=${1:-runs/gpu_check}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT_DIR"

if [ "$SMOKE" = 1 ]; then
  MODEL=(--depth 2 --width 64 --heads 8 --tokens-side 4 --vocab 64)
  DMODEL=("${MODEL[@]}")
  TRAIN=(--device cpu --precision fp32 --steps 2 --warmup 1 --loss-chunk 32 --threads 1)
  BATCH=8; BIG_BATCH=16; BATCHES=(1 4); DECODE=(--device cpu --repeats 1 --threads 1)
  SCALE=3    # time limits x3: a shared CPU compiles slowly
else
  MODEL=(--depth 24 --width 768 --heads 16 --tokens-side 16 --vocab 1024)
  DMODEL=(--depth 12 --width 512 --heads 8 --tokens-side 16 --vocab 1024)   # as the H100 decode runs
  TRAIN=(--device cuda --precision bf16 --steps 10 --warmup 3 --loss-chunk 4096)
  BATCH=128; BIG_BATCH=256; BATCHES=(1 32 128); DECODE=(--device cuda --repeats 5)
  SCALE=1
  { nvidia-smi; "$PY" -c "import torch; print('torch', torch.__version__, torch.version.cuda)"; } \
    > "$OUT_DIR/env.txt" 2>&1
fi

status=0
step() {  # step NAME SECONDS MODULE ARGS...: one benchmark under a time limit, log + JSON in OUT_DIR
  local name=$1 limit=$(($2 * SCALE)); shift 2
  echo "== $name (limit ${limit} s)"
  if timeout "$limit" "$PY" -m "$@" --json "$OUT_DIR/$name.json" > "$OUT_DIR/$name.log" 2>&1; then
    tail -n 12 "$OUT_DIR/$name.log"
  else
    echo "FAILED (exit $?): last lines of $OUT_DIR/$name.log"; tail -n 20 "$OUT_DIR/$name.log"; status=1
  fi
}

# Worst case (every limit hit) 8.5 minutes. Eager levers first (ratios within one run), then
# compile apart: a compile failure must not cost the other numbers. Batch 256 did not fit
# on 80 GB without the memory levers.
step train_levers 120 benchmarks.train "${MODEL[@]}" "${TRAIN[@]}" --batch-size $BATCH \
  --levers baseline chunk ckpt chunk+ckpt sample:1 sample:2
step train_compile 150 benchmarks.train "${MODEL[@]}" "${TRAIN[@]}" --batch-size $BATCH \
  --levers baseline compile chunk+compile
step train_big_batch 100 benchmarks.train "${MODEL[@]}" "${TRAIN[@]}" --batch-size $BIG_BATCH \
  --levers chunk+ckpt chunk+ckpt+compile
step decode_bf16_graphs 60 benchmarks.decode "${DMODEL[@]}" "${DECODE[@]}" --batch-sizes "${BATCHES[@]}" \
  --modes bf16 --cuda-graphs
step decode_eager_compile 80 benchmarks.decode "${DMODEL[@]}" "${DECODE[@]}" --batch-sizes "${BATCHES[-1]}" \
  --modes bf16 bf16+compile

echo "results in $OUT_DIR"
exit $status
