#!/bin/bash
# The GPU checks of issues 8 and 15 in one call on a lent CUDA machine (the device image's python3 and
# packages; the package runs from src/). Everything it prints is also written under $OUT (or ./gpu-out).
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/tests PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__)"
  echo "== 1. the interpreter test cases, compiled for the GPU"
  VISIONSSM_TRITON_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_scan_triton.py
  echo "== 1a. the directional (index-map) kernels' interpreter cases, compiled for the GPU"
  VISIONSSM_TRITON_TEST_DEVICE=cuda timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_scan_directions_triton.py
  echo "== 1b. every launch configuration at the models' shapes, against the torch backend"
  timeout 170 python3 tools/gpu_diag.py
  echo "== 1c. directional scan: index-map kernels vs the copy path (the same kernels on gathered copies)"
  timeout 150 python3 - <<'PY'
import importlib, torch
from visionssm.layers.scan_orders import scan_index_maps
from visionssm.ops import scan_triton as st
ds = importlib.import_module("visionssm.ops.directional_scan")

def ms(fn, reps=15):  # median of reps, CUDA events
    for _ in range(3): fn()
    torch.cuda.synchronize(); ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    return sorted(ts)[reps // 2]

rowwise = ("row", "row_rev", "row", "row_rev")  # same K as cross, no column walk: the gathers' cost
for name, b, d, H, W, order, n, shared in [
        ("vmamba-t s1 cross", 128, 192, 56, 56, "cross", 1, True), ("vmamba-t s1 rows", 128, 192, 56, 56, rowwise, 1, True),
        ("vmamba-t s1 cross b1", 1, 192, 56, 56, "cross", 1, True), ("vmamba-t s3 cross", 128, 768, 14, 14, "cross", 1, True),
        ("vim-t bidir", 128, 384, 1, 197, "bidirectional", 16, False), ("vim-t bidir b1", 1, 384, 1, 197, "bidirectional", 16, False)]:
    m = scan_index_maps(H, W, order, device="cuda"); K, L = m.shape
    torch.manual_seed(0); dev = dict(device="cuda")
    u = torch.randn(b, d if shared else K * d, L, **dev); delta = 0.5 * torch.randn(b, K * d, L, **dev)
    A = -torch.rand(K * d, n, **dev) - 0.5; B = torch.randn(b, K, n, L, **dev); C = torch.randn_like(B)
    args = (u, delta, A, B, C, torch.randn(K * d, **dev), 0.1 * torch.randn(K * d, **dev), True)
    y1, h1, c1 = st.directional_forward(*args, m, True); y0, h0, c0 = ds._composed_forward(st, *args, m, True)
    dy = torch.randn_like(y1)
    g1 = st.directional_backward(*args, m, c1, dy, None); g0 = ds._composed_backward(st, *args, m, c0, dy, None)
    rel = max(((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item() for x, y in zip((y1, h1, *g1), (y0, h0, *g0)))
    taken = [ds._take(t, m, d) for t in (u, delta, B, C)]  # the plain scan on ready copies: contiguous reads
    f1, f0 = ms(lambda: st.directional_forward(*args, m, False)), ms(lambda: ds._composed_forward(st, *args, m, False))
    fp = ms(lambda: st.forward(*taken[:2], A, *taken[2:], args[5], None, args[6], True, False))
    b1, b0 = ms(lambda: st.directional_backward(*args, m, c1, dy, None)), ms(lambda: ds._composed_backward(st, *args, m, c0, dy, None))
    print(f"{name:21s} {b}x{K}x{d}x{L}x{n}: fwd {f1:.3f} ms, copies {f0:.3f} ({f0 / f1:.2f}x), plain scan alone {fp:.3f};"
          f" bwd {b1:.3f} ms, copies {b0:.3f} ({b0 / b1:.2f}x); max rel diff {rel:.1e}", flush=True)
PY
  echo "== 2. scan benchmark (triton vs torch backend vs copy-bandwidth floor)"
  timeout 150 python3 -m visionssm.bench.scan_gpu --out "$OUT/scan-gpu" --budget-ms 400
  echo "== 3. models: triton vs torch backend, bf16 training steps, throughput"
  timeout 180 python3 tools/gpu_models.py --out "$OUT"
} 2>&1 | tee "$OUT/gpu_check.log"
