#!/bin/bash
# The GPU checks in one call on a lent CUDA machine, run in the repository root with the device image's
# python3 and packages (the package runs from src/). Every result file goes into $OUT (or ./gpu-out):
#   scan.csv, results.md, results.json  the scan benchmark (visionssm bench scan-gpu)
#   models.csv, gpu_models.json         model throughput, memory and checks (tools/gpu_models.py)
#   directions.csv                      index-map kernels vs the copy path (tools/gpu_directions.py)
#   profile/                            top kernels of a step, batch-1 latency eager vs CUDA graph (gpu_profile.py)
#   bench-models/                       the models-vs-resolution sweep (visionssm bench --device cuda)
#   gpu_check.log                       everything printed
#
# Each section has its own time limit and the limits add up to 470 s, so that one run fits a 15-minute
# device lease with the machine's start. The figures the issues ask for come first (scan benchmark, then
# models, then the directional kernels and the profile that explains the models' times), because a lease
# can end early and they exist nowhere else; each of them also checks its numbers (every kernel pair
# against a float64 reference, whole models against the torch backend). The Triton test files come
# after: CI runs the same cases under the interpreter on every commit, so on the device they add only
# the compiled-code check, as far as 40 s gets. The limits follow the first full run (2026-11-30: scan
# 63 s, models 114 s, directions cut at 4 of 6 cases by 40 s, the sweep 43 s); the launch-configuration
# diagnosis (tools/gpu_diag.py, all configurations agreed twice) no longer runs here.
#
#   tools/gpu_check.sh            on the GPU machine
#   tools/gpu_check.sh --dry-run  on a CPU: every section at tiny sizes with Triton under the interpreter,
#                                 what needs CUDA skipped with the reason (a few minutes on 2 cores)
# PYTHON picks the interpreter (default python3).

DRY=()
if [ "$1" = "--dry-run" ]; then
  DRY=(--dry-run)
  # the interpreter must be on before Python starts; passive OpenMP workers: torch's and numba's runtimes
  # spinning against each other slow a 2-core machine several times over (see bench/machine.py)
  export TRITON_INTERPRET=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
elif [ -n "$1" ]; then
  echo "usage: tools/gpu_check.sh [--dry-run]" >&2
  exit 2
fi
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/tests PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

section() {  # section TITLE SECONDS COMMAND...: one part under its own time limit; the next runs whatever it did
  local title=$1 limit=$2 start=$SECONDS
  shift 2
  echo "== $title (limit $limit s)"
  timeout -k 5 "$limit" "$@"
  local rc=$?
  echo "== $title: exit status $rc$([ $rc = 124 ] && echo ', stopped at its time limit') after $((SECONDS - start)) s"
}

if [ ${#DRY[@]} = 0 ]; then
  DEVICE=cuda
  SWEEP=(--models vim_tiny_patch16_224 deit_tiny_patch16_224 --resolutions 224 1024)
  TESTS=()
else
  DEVICE=cpu
  SWEEP=(--models vim_tiny_patch16_224:depth=1:embed_dim=32 deit_tiny_patch16_224:depth=1:embed_dim=32:num_heads=2
         --resolutions 32 64)
  TESTS=(--collect-only -qq)  # CI runs them under the interpreter; here: that the one call finds every case
fi

{
  if [ $DEVICE = cuda ]; then
    section "the GPU" 5 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  else
    echo "== the GPU: skipped (dry run: nvidia-smi needs the GPU machine)"
  fi
  section "versions" 20 "$PY" -c \
    "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
  section "1. scan benchmark: each Triton kernel pair, the torch backend and mamba_ssm vs the floors" 90 \
    "$PY" -m visionssm bench scan-gpu --out "$OUT" "${DRY[@]}"
  section "2. models: triton vs torch backend, bf16 training steps, throughput and memory targets" 135 \
    "$PY" tools/gpu_models.py --out "$OUT" --deadline 110 "${DRY[@]}"
  section "3. directional scan: index-map kernels vs the copy path, each kernel pair" 50 \
    "$PY" tools/gpu_directions.py --out "$OUT" "${DRY[@]}"
  section "4. where the time goes: profiles at batch 128, batch-1 latency eager vs CUDA graph" 75 \
    "$PY" tools/gpu_profile.py --out "$OUT/profile" "${DRY[@]}"
  section "5. the Triton interpreter test cases (plain and directional) on $DEVICE tensors" 40 \
    env VISIONSSM_TRITON_TEST_DEVICE=$DEVICE "$PY" -m pytest -v -p no:cacheprovider --durations=5 "${TESTS[@]}" \
    tests/test_scan_triton.py tests/test_scan_directions_triton.py
  # batch 1, one fresh process per case: what a user's `visionssm bench --device cuda` gives (the Vim
  # paper's explicit attention at 1248 is gpu_models.py's part b)
  section "6. models vs resolution, visionssm bench --device $DEVICE" 55 \
    env TQDM_DISABLE=1 "$PY" -m visionssm bench --device $DEVICE "${SWEEP[@]}" --attention sdpa --memory-runs 1 --rounds 3 --budget 0.5 \
    --time-limit 20 --out "$OUT/bench-models"
  echo "== files in $OUT"
  ls -l "$OUT"
} 2>&1 | tee "$OUT/gpu_check.log"
