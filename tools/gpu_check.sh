#!/bin/bash
# The GPU checks of issue 8 in one call on a lent CUDA machine (the device image's python3 and
# packages; the package runs from src/). Everything it prints is also written under $OUT (or ./gpu-out).
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/tests PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
  echo "== 1. the interpreter test cases, compiled for the GPU"
  VISIONSSM_TRITON_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_scan_triton.py
  echo "== 1b. every launch configuration at the models' shapes, against the torch backend"
  timeout 170 python3 tools/gpu_diag.py
  echo "== 2. scan benchmark (triton vs torch backend vs copy-bandwidth floor)"
  timeout 150 python3 -m visionssm.bench.scan_gpu --out "$OUT/scan-gpu" --budget-ms 400
  echo "== 3. models: triton vs torch backend, bf16 training steps, throughput"
  timeout 180 python3 tools/gpu_models.py --out "$OUT"
} 2>&1 | tee "$OUT/gpu_check.log"
