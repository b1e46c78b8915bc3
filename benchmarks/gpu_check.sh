#!/usr/bin/env bash
# The trainer's device check, in one bounded run: environment, the gpu-marked tests, then the
# throughput benchmark (eager and CUDA graph at batch 128 and 1024 against the reference loop,
# then torch.compile inside the graph unless QUICK=1). Everything is tee'd to $OUT/log.
# Usage on the device machine: [QUICK=1] bash benchmarks/gpu_check.sh  (OUT defaults ./gpu-out)
set -u
OUT=${OUT:-gpu-out}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
if [ "$QUICK" = 1 ]; then T_TEST=70 T_BENCH=80 IMAGES=2048; else T_TEST=120 T_BENCH=150 IMAGES=4096; fi
{
  echo "== $(date -u +%H:%M:%S) environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, torchvision, cv2; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
  echo "== $(date -u +%H:%M:%S) gpu tests"
  timeout $T_TEST $PY -m pytest -q -m gpu tests/test_train_gpu.py tests/test_dedup_gpu.py -p no:cacheprovider 2>&1 | tail -30
  echo "== $(date -u +%H:%M:%S) benchmark: reference vs ours (eager, graph)"
  timeout $T_BENCH $PY benchmarks/train_throughput.py --images $IMAGES --modes eager graph \
    --json "$OUT/bench.json"
  if [ "$QUICK" != 1 ]; then
    echo "== $(date -u +%H:%M:%S) benchmark: ours with torch.compile in the graph"
    timeout 110 $PY benchmarks/train_throughput.py --images $IMAGES --skip-reference \
      --modes compile --json "$OUT/bench_compile.json"
  fi
  echo "== $(date -u +%H:%M:%S) done"
} 2>&1 | tee "$OUT/log"
