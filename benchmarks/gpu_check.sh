#!/usr/bin/env bash
# The trainer's device check, in one bounded run (each part under its own timeout):
# environment, the gpu-marked tests, the throughput benchmark (reference loop vs ours at batch
# 128, 1024 and 2048: eager, CUDA graph, and torch.compile inside the graph unless QUICK=1),
# then a kernel profile of the batch-1024 step with a sweep over batch sizes.
# Everything is tee'd to $OUT/log. On an H100 (2026-11-27) the full check took ~4 minutes before the compile test was added (~1 more).
# Usage on the device machine: [QUICK=1] bash benchmarks/gpu_check.sh  (OUT defaults ./gpu-out)
# Needs the project's dependencies importable there (the H100 image of 2026-11 had all but
# lmdb: install its wheel first, e.g. pip install --target /tmp/site lmdb-*.whl and put
# /tmp/site on PYTHONPATH; this script keeps an existing PYTHONPATH).
set -u
OUT=${OUT:-gpu-out}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PY:-python3}
if [ "$QUICK" = 1 ]; then
  T_TEST=150 T_BENCH=100 IMAGES=2048 BATCHES="128 1024" MODES="eager graph"
else
  T_TEST=180 T_BENCH=220 IMAGES=4096 BATCHES="128 1024 2048" MODES="eager graph compile"
fi
{
  echo "== $(date -u +%H:%M:%S) environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, torchvision, cv2; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
  echo "== $(date -u +%H:%M:%S) gpu tests"
  timeout $T_TEST $PY -m pytest -q -m gpu tests/test_train_gpu.py tests/test_dedup_gpu.py -p no:cacheprovider 2>&1 | tail -30
  echo "== $(date -u +%H:%M:%S) benchmark: reference vs ours ($MODES)"
  timeout $T_BENCH $PY benchmarks/train_throughput.py --images $IMAGES --batches $BATCHES \
    --modes $MODES --json "$OUT/bench.json" 2>&1 | grep -v -E "^(USDT|STAGE)"
  echo "== $(date -u +%H:%M:%S) profile of the batch-1024 step; batch sizes"
  timeout 80 $PY benchmarks/train_profile.py --profile 1024 --batches 1024 2048 4096 \
    --modes graph 2>&1 | grep -v -E "^(USDT|STAGE)"
  echo "== $(date -u +%H:%M:%S) done"
} 2>&1 | tee "$OUT/log"
