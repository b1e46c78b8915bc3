#!/usr/bin/env bash
# The trainer's device check, in one bounded run: environment, the gpu-marked tests, then the
# throughput benchmark (eager and CUDA graph at batch 128 and 1024 against the reference loop,
# then torch.compile inside the graph if time allows). Everything is tee'd to $OUT/log.
# Usage on the device machine: bash benchmarks/gpu_check.sh   (OUT defaults to ./gpu-out)
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PY=${PY:-python3}
{
  echo "== $(date -u +%H:%M:%S) environment"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, torchvision, cv2, typer, tqdm, skimage; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cv2', cv2.__version__, 'cuda', torch.cuda.is_available())"
  echo "== $(date -u +%H:%M:%S) gpu tests"
  timeout 120 $PY -m pytest -q -m gpu tests/test_train_gpu.py -p no:cacheprovider 2>&1 | tail -30
  echo "== $(date -u +%H:%M:%S) benchmark: reference vs ours (eager, graph)"
  timeout 150 $PY benchmarks/train_throughput.py --modes eager graph --json "$OUT/bench.json"
  echo "== $(date -u +%H:%M:%S) benchmark: ours with torch.compile in the graph"
  timeout 110 $PY benchmarks/train_throughput.py --skip-reference --modes compile \
    --json "$OUT/bench_compile.json"
  echo "== $(date -u +%H:%M:%S) done"
} 2>&1 | tee "$OUT/log"
